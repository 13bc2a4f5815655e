"""Run outputs: metrics.csv, workers.csv, summary.json, loss/accuracy plots, TensorBoard events, progress."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from typing import Any, TextIO

import numpy as np

from .checkpoint import atomic_write_text

__all__ = ["MetricsCSV", "read_metrics", "write_summary", "plot_accuracy", "plot_loss", "ProgressBar", "RichProgress",
           "make_progress", "TensorBoardLog", "read_tensorboard", "fmt"]


def fmt(v: Any) -> str:
    """CSV cell: empty for None, compact floats."""
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.6g}"
    return str(v)


def read_metrics(path: str) -> tuple[list[str], list[dict[str, str]]]:
    """Header and complete rows of a metrics.csv (a torn last line is ignored)."""
    with open(path, newline="") as fh:
        text = fh.read()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rd = csv.DictReader(io.StringIO(text))
    rows = [r for r in rd if r and None not in r and all(v is not None for v in r.values())]
    return list(rd.fieldnames or []), rows


class MetricsCSV:
    """metrics.csv, one row per step, flushed after each row.

    Parameters
    ----------
    path : str
        File path.
    fields : list of str
        Column names (used when the file is created).
    resume_step : int or None
        When resuming: keep the rows of steps <= ``resume_step`` (rewritten
        atomically, dropping a torn last line and rows of steps done after the
        checkpoint), then append; the existing header wins.
    """

    def __init__(self, path: str, fields: list[str], resume_step: int | None = None):
        self.path = path
        self.fields = list(fields)
        if resume_step is not None and os.path.exists(path):
            old_fields, rows = read_metrics(path)
            if old_fields:
                self.fields = old_fields
            keep = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=self.fields, extrasaction="ignore", lineterminator="\n")
            w.writeheader()
            w.writerows(keep)
            atomic_write_text(path, buf.getvalue())
            self.fh: TextIO = open(path, "a", newline="")
        else:
            self.fh = open(path, "w", newline="")
            self.fh.write(",".join(self.fields) + "\n")
            self.fh.flush()
        self.writer = csv.DictWriter(self.fh, fieldnames=self.fields, extrasaction="ignore", lineterminator="\n")

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow({k: fmt(row.get(k)) for k in self.fields})
        self.fh.flush()

    def sync(self) -> None:
        """flush + fsync (called at checkpoints so metrics never lag them on disk)."""
        self.fh.flush()
        try:
            os.fsync(self.fh.fileno())
        except OSError:
            pass

    def close(self) -> None:
        if not self.fh.closed:
            self.sync()
            self.fh.close()


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else str(obj)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return _clean(obj.item())
        except (ValueError, TypeError):
            pass
    return obj


def write_summary(path: str, summary: dict[str, Any]) -> None:
    """summary.json, written atomically (NaN -> null)."""
    atomic_write_text(path, json.dumps(_clean(summary), indent=2, sort_keys=True) + "\n")


def _plot_series(pts: list[tuple[int, float]], png_path: str, title: str, ylabel: str, style, color=None) -> str:
    """One line over steps, written atomically; style(ax, ys) sets the axis (limits, scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ys = [p[1] for p in pts]
    ax.plot([p[0] for p in pts], ys, marker=".", lw=1.5, color=color)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    style(ax, ys)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


def plot_accuracy(csv_path: str, png_path: str, title: str = "", metric: str = "accuracy") -> str | None:
    """PNG of test accuracy (or the experiment's metric) over steps; None when nothing to plot."""
    _, rows = read_metrics(csv_path)
    pts = [(int(r["step"]), float(r["accuracy"])) for r in rows if r.get("accuracy") not in ("", None)]
    if not pts:
        return None

    def style(ax, ys):
        if metric == "accuracy":
            ax.set_ylim(0, 1)

    return _plot_series(pts, png_path, title, f"test {metric}", style)


def plot_loss(csv_path: str, png_path: str, title: str = "") -> str | None:
    """PNG of the test loss over steps (log scale when it spans decades); None when nothing to plot."""
    _, rows = read_metrics(csv_path)
    pts = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss") not in ("", None)]
    pts = [p for p in pts if math.isfinite(p[1])]
    if not pts:
        return None

    def style(ax, ys):
        if min(ys) > 0 and max(ys) / min(ys) > 30:
            ax.set_yscale("log")

    return _plot_series(pts, png_path, title, "test loss", style, color="tab:red")


# ------------------------------------------------------------- TensorBoard ---
TB_SCALARS = ("loss", "accuracy", "step_time", "comm_time", "validate_time", "agg_time", "update_time", "grad_norm",
              "skipped", "n_ok", "n_nonfinite", "n_partial", "n_missing", "n_rejected", "n_dead")
"""metrics.csv columns also written as TensorBoard scalars (tags ``train/<name>``, ``workers/<name>`` for counts)."""


class TensorBoardLog:
    """TensorBoard event file of scalar summaries, written without TensorBoard installed.

    Each step is one ``Event`` record (TFRecord framing with CRCs, written by
    ``tf.io.TFRecordWriter``) holding the step's scalars with the ``scalars``
    plugin metadata, i.e. exactly what ``tf.summary.scalar`` writes, at a
    fraction of its per-call cost. ``tensorboard --logdir DIR/tensorboard``
    shows them (install tensorboard to view; nothing here needs it).
    """

    def __init__(self, logdir: str):
        import socket

        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2
        from tensorflow.core.util import event_pb2

        os.makedirs(logdir, exist_ok=True)
        self.tf, self.event_pb2, self.summary_pb2 = tf, event_pb2, summary_pb2
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.pyagg"
        self.path = os.path.join(logdir, name)
        self.writer = tf.io.TFRecordWriter(self.path)
        md = summary_pb2.SummaryMetadata()
        md.plugin_data.plugin_name = "scalars"
        self.md = md
        self.writer.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        self.writer.flush()
        self._n = 0

    def step(self, step: int, row: dict[str, Any]) -> None:
        ev = self.event_pb2.Event(wall_time=time.time(), step=int(step))
        for k in TB_SCALARS:
            v = row.get(k)
            if v is None or isinstance(v, str):
                continue
            v = float(v)
            if not math.isfinite(v):
                continue
            val = ev.summary.value.add()
            val.tag = ("workers/" if k.startswith("n_") else "train/") + k
            val.metadata.CopyFrom(self.md)
            val.tensor.CopyFrom(self.tf.make_tensor_proto(np.float32(v)))
        self.writer.write(ev.SerializeToString())
        self._n += 1
        if self._n % 50 == 0:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


def read_tensorboard(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """Scalars of every event file under ``logdir``: tag -> [(step, value), ...] (files in name order)."""
    import glob

    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for rec in tf.data.TFRecordDataset(f):
            e = event_pb2.Event.FromString(rec.numpy())
            for v in e.summary.value:
                out.setdefault(v.tag, []).append((int(e.step), float(tf.make_ndarray(v.tensor))))
    return out


class ProgressBar:
    """One-line progress bar (loss, accuracy, step time) on a terminal; periodic lines otherwise.

    Parameters
    ----------
    total : int
        Last step + 1.
    start : int
        First step (resume).
    stream : file
        Default ``sys.stderr``.
    enabled : bool
        False: print nothing.
    """

    def __init__(self, total: int, start: int = 0, stream: TextIO | None = None, enabled: bool = True,
                 label: str = ""):
        self.total = max(int(total), 1)
        self.start = int(start)
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.label = label
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = max(1, (self.total - self.start) // 10)
        self.last_draw = 0.0
        self.loss: float | None = None
        self.acc: float | None = None
        self._open_line = False
        self.t0 = time.monotonic()

    def _pace(self, done: int) -> str:
        dt = time.monotonic() - self.t0
        rate = (done - self.start) / dt if dt > 0 and done > self.start else 0.0
        if rate <= 0:
            return ""
        eta = (self.total - done) / rate
        return f" {rate:.1f} steps/s eta {int(eta) // 60}:{int(eta) % 60:02d}"

    def update(self, step: int, step_time: float, loss: float | None = None, acc: float | None = None,
               extra: str = "") -> None:
        if not self.enabled:
            return
        if loss is not None:
            self.loss = loss
        if acc is not None:
            self.acc = acc
        done = step + 1
        now = time.monotonic()
        last = done >= self.total
        if self.tty:
            if not last and now - self.last_draw < 0.1:
                return
            self.last_draw = now
            width = 24
            filled = int(width * done / self.total)
            bar = "#" * filled + "." * (width - filled)
            line = (f"\r{self.label}step {done:>5}/{self.total} [{bar}] {self._stats(step_time)}{self._pace(done)}"
                    f"{extra}\x1b[K")
            self.stream.write(line + ("\n" if last else ""))
            self.stream.flush()
            self._open_line = not last
        elif last or (done - self.start) % self.every == 0:
            pace = self._pace(done)
            self.stream.write(f"{self.label}step {done}/{self.total} {self._stats(step_time)}{pace}{extra}\n")
            self.stream.flush()

    def _stats(self, step_time: float) -> str:
        loss = "-" if self.loss is None else f"{self.loss:.4f}"
        acc = "-" if self.acc is None else f"{self.acc:.3f}"
        return f"loss {loss} acc {acc} step {step_time * 1e3:.1f}ms"

    def close(self) -> None:
        if self.enabled and self.tty and self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False


class RichProgress:
    """Progress bar drawn by rich (a Keras dependency): bar, steps, rate, elapsed, ETA, loss/accuracy/step time.

    rich redraws the whole line (no stale characters). Used on a terminal
    (or with ``force_tty``: the server rank of an MPI job, whose stderr is a
    pipe to mpiexec that ends on the user's terminal).
    """

    def __init__(self, total: int, start: int = 0, label: str = "", force_tty: bool = False,
                 stream: TextIO | None = None):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        width = int(os.environ.get("COLUMNS", "0") or 0) or None
        console = Console(file=stream or sys.stderr, force_terminal=True if force_tty else None, width=width)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
            TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=console, transient=False,
            refresh_per_second=8)
        self.total = max(int(total), 1)
        self.task = self.progress.add_task(label, total=self.total, completed=int(start), rate="", stats="")
        self.progress.start()
        self.t0 = time.monotonic()
        self.start = int(start)
        self.loss: float | None = None
        self.acc: float | None = None

    def update(self, step: int, step_time: float, loss: float | None = None, acc: float | None = None,
               extra: str = "") -> None:
        if loss is not None:
            self.loss = loss
        if acc is not None:
            self.acc = acc
        done = step + 1
        dt = time.monotonic() - self.t0
        rate = (done - self.start) / dt if dt > 0 else 0.0
        loss_s = "-" if self.loss is None else f"{self.loss:.4f}"
        acc_s = "-" if self.acc is None else f"{self.acc:.3f}"
        self.progress.update(self.task, completed=done, rate=f"{rate:.1f} steps/s",
                             stats=f"loss {loss_s} acc {acc_s} step {step_time * 1e3:.1f} ms{extra}")

    def close(self) -> None:
        self.progress.stop()


def make_progress(total: int, start: int = 0, enabled: bool = True, label: str = "", force_tty: bool = False,
                  stream: TextIO | None = None) -> Any:
    """rich progress on a terminal (or forced), plain periodic lines otherwise (logs, CI), nothing when disabled."""
    stream = stream or sys.stderr
    tty = force_tty or bool(getattr(stream, "isatty", lambda: False)())
    if enabled and tty:
        try:
            return RichProgress(total, start, label, force_tty=force_tty, stream=stream)
        except ImportError:
            pass
    bar = ProgressBar(total, start, stream=stream, enabled=enabled, label=f"[{label}] " if label else "")
    bar.tty = False
    return bar
