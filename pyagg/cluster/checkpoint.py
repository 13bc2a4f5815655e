"""Atomic checkpoints and atomic small files.

A checkpoint is one ``checkpoint.npz`` (numpy arrays + a JSON header holding
the step, the configuration fingerprint and a SHA-256 of every array). It is
written to a temporary file in the same directory, flushed, fsync'ed and
renamed over the previous one (``os.replace``, atomic on POSIX), then the
directory is fsync'ed: a crash at any moment leaves either the old or the new
checkpoint, never a torn one. :func:`load_checkpoint` verifies the hashes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from typing import Any

import numpy as np

__all__ = ["CHECKPOINT", "save_checkpoint", "load_checkpoint", "atomic_write_bytes", "atomic_write_text"]

CHECKPOINT = "checkpoint.npz"


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename + dir fsync)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(d)


def atomic_write_text(path: str, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def save_checkpoint(out_dir: str, step: int, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    """Atomically write ``out_dir/checkpoint.npz`` for the state after ``step``.

    Parameters
    ----------
    out_dir : str
        Run directory.
    step : int
        Last completed step (resuming starts at ``step + 1``).
    arrays : dict
        Named numpy arrays (parameters, optimizer state, ...).
    meta : dict
        JSON-serialisable metadata (configuration fingerprint, counters, ...).
    """
    header = dict(meta)
    header["step"] = int(step)
    header["sha256"] = {k: _digest(np.asarray(v)) for k, v in arrays.items()}
    buf = io.BytesIO()
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload["__meta__"] = np.frombuffer(json.dumps(header, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    np.savez(buf, **payload)
    path = os.path.join(out_dir, CHECKPOINT)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(out_dir: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """Read and verify ``out_dir/checkpoint.npz``; None when there is none.

    Raises
    ------
    ValueError
        The file exists but is unreadable or fails its hash check.
    """
    path = os.path.join(out_dir, CHECKPOINT)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - any decoding failure means a bad file
        raise ValueError(f"checkpoint {path} is unreadable ({exc})") from exc
    if "__meta__" not in arrays:
        raise ValueError(f"checkpoint {path} has no header")
    meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    for k, h in meta.get("sha256", {}).items():
        if k not in arrays or _digest(arrays[k]) != h:
            raise ValueError(f"checkpoint {path}: array {k!r} is missing or fails its SHA-256 check")
    return meta, arrays
