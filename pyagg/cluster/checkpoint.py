"""Atomic checkpoints and atomic small files.

A checkpoint is one ``checkpoint.npz`` (numpy arrays + a JSON header holding
the step, the configuration fingerprint and a SHA-256 of every array). It is
written to a temporary file in the same directory, flushed, fsync'ed and
renamed over the previous one (``os.replace``, atomic on POSIX), then the
directory is fsync'ed: a crash at any moment leaves either the old or the new
checkpoint, never a torn one. :func:`load_checkpoint` verifies the hashes.

With ``keep`` > 1 the last ``keep`` checkpoints are kept as
``checkpoint-<step>.npz`` (each written atomically the same way);
``checkpoint.npz`` is then a hard link to the newest, replaced atomically, and
older ones are pruned only after the new one is on disk.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import tempfile
from typing import Any

import numpy as np

__all__ = ["CHECKPOINT", "save_checkpoint", "load_checkpoint", "list_checkpoints", "atomic_write_bytes",
           "atomic_write_text"]

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


def list_checkpoints(out_dir: str) -> list[tuple[int, str]]:
    """The kept ``checkpoint-<step>.npz`` files of ``out_dir``, newest first: [(step, path), ...]."""
    found = []
    for p in glob.glob(os.path.join(out_dir, "checkpoint-*.npz")):
        tail = os.path.basename(p)[len("checkpoint-"):-len(".npz")]
        if tail.isdigit():
            found.append((int(tail), p))
    return sorted(found, reverse=True)


def save_checkpoint(out_dir: str, step: int, arrays: dict[str, np.ndarray], meta: dict[str, Any],
                    keep: int = 1) -> str:
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
    keep : int
        How many checkpoints to keep (>= 1): with more than one, each is also
        ``checkpoint-<step>.npz`` and the oldest beyond ``keep`` are removed.
    """
    header = dict(meta)
    header["step"] = int(step)
    header["sha256"] = {k: _digest(np.asarray(v)) for k, v in arrays.items()}
    buf = io.BytesIO()
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload["__meta__"] = np.frombuffer(json.dumps(header, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    np.savez(buf, **payload)
    path = os.path.join(out_dir, CHECKPOINT)
    if keep <= 1:
        atomic_write_bytes(path, buf.getvalue())
        return path
    numbered = os.path.join(out_dir, f"checkpoint-{int(step):08d}.npz")
    atomic_write_bytes(numbered, buf.getvalue())
    tmp = os.path.join(out_dir, f".{CHECKPOINT}.{os.getpid()}.link")
    try:
        if os.path.exists(tmp):
            os.unlink(tmp)
        os.link(numbered, tmp)
        os.replace(tmp, path)
        _fsync_dir(out_dir)
    except OSError:  # no hard links here: a second atomic copy
        atomic_write_bytes(path, buf.getvalue())
    for _, old in list_checkpoints(out_dir)[int(keep):]:
        try:
            os.unlink(old)
        except FileNotFoundError:
            pass
    return path


def load_checkpoint(out_dir: str, path: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """Read and verify ``out_dir/checkpoint.npz`` (or ``path``); None when there is none.

    Raises
    ------
    ValueError
        The file exists but is unreadable or fails its hash check.
    """
    path = path or os.path.join(out_dir, CHECKPOINT)
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
