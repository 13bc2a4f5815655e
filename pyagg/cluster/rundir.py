"""Run directories: what counts as a run, and the rule that none is ever lost.

``--out DIR`` of ``pyagg train`` holds one run (metrics, summary, plots,
checkpoints, TensorBoard events). :func:`prepare_run_dir` is called once,
before anything is built or launched:

- ``DIR`` is a file (or under one): a clear error;
- ``DIR`` holds no run: it is created;
- ``DIR`` holds a run and neither ``--resume`` nor ``--overwrite`` is given:
  refused, nothing is touched;
- ``--resume``: the run continues from its checkpoint; a run without one is
  refused (nothing to continue from) instead of being silently restarted;
- ``--overwrite``: the run's own files (the names below, nothing else in the
  directory) are removed, then the run starts afresh.
"""

from __future__ import annotations

import glob
import os
import shutil

__all__ = ["RUN_FILES", "RUN_DIRS", "run_files", "check_out_path", "prepare_run_dir", "RunDirError"]

RUN_FILES = ("metrics.csv", "workers.csv", "summary.json", "accuracy.png", "loss.png", "curves.png",
             "checkpoint.npz", "server.done")
"""Files of a run (plus ``checkpoint-*.npz``, the kept older checkpoints)."""
RUN_DIRS = ("pids", "tensorboard")
"""Sub-directories of a run."""


class RunDirError(ValueError):
    """``--out`` cannot be used as asked (exists, is a file, nothing to resume)."""


def run_files(out: str) -> list[str]:
    """The run files present under ``out`` (relative names, sorted)."""
    if not os.path.isdir(out):
        return []
    found = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]
    found += [os.path.basename(p) for p in glob.glob(os.path.join(out, "checkpoint-*.npz"))]
    found += [d + "/" for d in RUN_DIRS if os.path.isdir(os.path.join(out, d)) and os.listdir(os.path.join(out, d))]
    return sorted(found)


def check_out_path(out: str, option: str = "--out") -> None:
    """Raise :class:`RunDirError` when ``out`` is a file, or lies under one, or cannot be created."""
    p = os.path.abspath(out)
    if os.path.exists(p) and not os.path.isdir(p):
        raise RunDirError(f"{option} {out!r} is a file, not a directory: choose a directory for the run's outputs")
    parent = p
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise RunDirError(f"{option} {out!r}: {parent!r} is a file, so no directory can be created under it")
    if parent and not os.access(parent, os.W_OK):
        raise RunDirError(f"{option} {out!r}: {parent!r} is not writable")


def prepare_run_dir(out: str, resume: bool = False, overwrite: bool = False) -> str:
    """Check and create a run directory (see module doc); returns what happens: 'new', 'resume' or 'overwrite'."""
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other: continue the run or replace it, not both")
    check_out_path(out)
    files = run_files(out)
    if not files:
        os.makedirs(out, exist_ok=True)
        return "new"
    shown = ", ".join(files[:6]) + (", ..." if len(files) > 6 else "")
    if resume:
        if not os.path.exists(os.path.join(out, "checkpoint.npz")):
            raise RunDirError(
                f"--resume: {out} holds a run ({shown}) but no checkpoint.npz to continue from (was it run with "
                "--checkpoint-every 0?); pass --overwrite to start it afresh, or choose another --out")
        return "resume"
    if not overwrite:
        raise RunDirError(
            f"{out} already holds a run ({shown}): pass --resume to continue it, --overwrite to replace it, "
            "or choose another --out (nothing was changed)")
    for f in files:
        p = os.path.join(out, f.rstrip("/"))
        if f.endswith("/"):
            shutil.rmtree(p)
        else:
            os.unlink(p)
    return "overwrite"
