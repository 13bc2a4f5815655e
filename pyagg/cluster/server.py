"""The trusted parameter server: owns the parameters, validates and aggregates gradients.

One class, :class:`ParameterServer`, runs every launcher: only the
*collector* differs (``LocalCollector`` computes every worker's gradient in
this process; ``MpiCollector`` talks to worker processes through LossyMPI).
A collector implements::

    n_workers: int
    broadcast(step, params)            # params go out over the reliable control plane
    receive(step) -> (rows, stats)     # rows[i]: worker i's gradient as received (any
                                       # length/dtype, or None when nothing usable came)
    dead -> set[int]                   # workers (0-based) given up on
    close()

The server never trusts a row: wrong length or dtype -> rejected, counted,
the row is filled (``--fill``); non-finite values are counted and left to the
rule (robust rules ignore such rows; plain averaging is poisoned by them,
which is the point of the comparison). An aggregate that is not finite is
not applied (the step is counted as skipped): the parameters always stay
finite.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Protocol

import numpy as np

from .. import api as _api
from ..errors import InvalidArgumentError
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .workloads import Experiment
from .metrics import MetricsCSV, plot_accuracy, plot_loss, read_metrics, write_summary
from .model import FlatModel

__all__ = ["Collector", "ParameterServer", "Optimizer", "make_aggregator"]

STATUS_CODES = {"ok": 0, "nonfinite": 1, "partial": 2, "missing": 3, "rejected": 4, "dead": 5}
"""Per-worker status column of metrics.csv (``w<i>_status``)."""


class Collector(Protocol):
    n_workers: int

    def broadcast(self, step: int, params: np.ndarray) -> None: ...

    def receive(self, step: int) -> tuple[list[np.ndarray | None], list[dict]]: ...

    @property
    def dead(self) -> set[int]: ...

    def close(self) -> None: ...


# --------------------------------------------------------------- optimizer ---
class Optimizer:
    """Server-side optimizers on the flat float32 parameter vector (numpy).

    ``sgd``: p -= lr (g + wd p); ``momentum``/``nesterov``: heavy ball with
    coefficient ``momentum``; ``adam``: Kingma & Ba with bias correction.
    """

    def __init__(self, name: str, d: int, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
        self.name, self.lr, self.mu, self.wd = name, float(lr), float(momentum), float(weight_decay)
        self.t = 0
        self.state: dict[str, np.ndarray] = {}
        if name in ("momentum", "nesterov"):
            self.state["v"] = np.zeros(d, np.float32)
        elif name == "adam":
            self.state["m"] = np.zeros(d, np.float32)
            self.state["s"] = np.zeros(d, np.float32)

    def step(self, p: np.ndarray, g: np.ndarray) -> np.ndarray | None:
        """New parameters for gradient ``g``; None (and no state change) when they would not be finite."""
        g = g.astype(np.float32, copy=True)
        if self.wd:
            g += np.float32(self.wd) * p
        lr = np.float32(self.lr)
        new_state: dict[str, np.ndarray] = {}
        with np.errstate(over="ignore", invalid="ignore"):
            if self.name == "sgd":
                out = p - lr * g
            elif self.name in ("momentum", "nesterov"):
                v = np.float32(self.mu) * self.state["v"] + g
                upd = g + np.float32(self.mu) * v if self.name == "nesterov" else v
                out = p - lr * upd
                new_state["v"] = v
            else:
                b1, b2, t = 0.9, 0.999, self.t + 1
                m = np.float32(b1) * self.state["m"] + np.float32(1 - b1) * g
                s = np.float32(b2) * self.state["s"] + np.float32(1 - b2) * g * g
                mh = m / np.float32(1 - b1**t)
                sh = s / np.float32(1 - b2**t)
                out = p - lr * mh / (np.sqrt(sh) + np.float32(1e-8))
                new_state.update(m=m, s=s)
            ok = bool(np.all(np.isfinite(out))) and all(bool(np.all(np.isfinite(x))) for x in new_state.values())
        if not ok:
            return None
        self.state.update(new_state)
        self.t += 1
        return out.astype(np.float32, copy=False)

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"opt_{k}": v for k, v in self.state.items()}

    def load(self, arrays: dict[str, np.ndarray], t: int) -> None:
        for k in self.state:
            self.state[k] = np.array(arrays[f"opt_{k}"], dtype=np.float32)
        self.t = int(t)


def set_engine_threads(n: int) -> bool:
    """Cap the engine's OpenMP threads for aggregations run from this thread (n <= 0: leave as is).

    Calls libgomp's ``omp_set_num_threads`` (the engine sizes its parallel
    regions with ``omp_get_max_threads()``). On a machine shared with the
    workers, spinning OpenMP threads cost far more than they bring at small d.
    """
    if n <= 0:
        return False
    import ctypes

    try:
        ctypes.CDLL("libgomp.so.1").omp_set_num_threads(int(n))
        return True
    except (OSError, AttributeError):
        return False


def make_aggregator(cfg: TrainConfig, n: int) -> _api.Aggregator:
    """The configured rule, with a friendly error when n is below its bound."""
    info = _api.rules().get(cfg.rule)
    if info is None:
        raise InvalidArgumentError(f"unknown rule {cfg.rule!r}; known: {', '.join(_api.rules())}")
    need = info["min_n"](cfg.f)
    if n < need:
        raise InvalidArgumentError(
            f"rule {cfg.rule!r} needs {info['bound']}, i.e. at least {need} workers for f={cfg.f}, got "
            f"--workers={n}"
        )
    agg = _api.Aggregator(cfg.rule, cfg.f, pre=cfg.pre, **cfg.rule_args)
    # Parameters that depend on n (e.g. multi-krum's m) are checked by the engine at the first
    # call: make that call now, on a throw-away aggregator, so a bad value fails before training.
    _api.Aggregator(cfg.rule, cfg.f, pre=cfg.pre, **cfg.rule_args).aggregate(np.zeros((n, 2), np.float32))
    return agg


# ------------------------------------------------------------------ server ---
class ParameterServer:
    """Rank 0: parameters, validation, aggregation, update, evaluation, outputs.

    Parameters
    ----------
    cfg : TrainConfig
    exp : Experiment
    collector : Collector
    out_dir : str
        Run directory (metrics.csv, summary.json, accuracy.png, checkpoint.npz).
    extra_summary : dict
        Merged into summary.json (launcher details, Byzantine ranks...).
    model : FlatModel, optional
        The server's model (built from ``exp`` when None).
    observer : callable, optional
        ``observer(step, G)`` is called with every validated (n, d) matrix,
        outside the timed sections (used by ``pyagg experiment overhead``).
    """

    def __init__(self, cfg: TrainConfig, exp: Experiment, collector: Collector, out_dir: str,
                 extra_summary: dict | None = None, model: FlatModel | None = None, observer: Any = None):
        self.cfg, self.exp, self.collector, self.out = cfg, exp, collector, out_dir
        os.makedirs(out_dir, exist_ok=True)
        self.model = model or FlatModel(exp, seed=cfg.seed)
        self.d = self.model.d
        self.n = collector.n_workers
        self.params = self.model.initial.copy()
        self.opt = Optimizer(cfg.optimizer, self.d, cfg.lr, cfg.momentum, cfg.weight_decay)
        set_engine_threads(cfg.agg_threads)
        self.agg = make_aggregator(cfg, self.n)
        self.extra = dict(extra_summary or {})
        self.observer = observer
        self.start_step = 0
        self.elapsed0 = 0.0
        self.skipped = 0
        keys = ("ok", "nonfinite", "partial", "missing", "rejected")
        self.counts = {k: np.zeros(self.n, np.int64) for k in keys}
        self.last_rows: list[np.ndarray | None] = [None] * self.n
        self.resumed_from: int | None = None
        self.last_eval: dict[str, float] = {}
        self.history: list[tuple[int, float]] = []
        self.metrics: MetricsCSV | None = None
        self.workers_csv: MetricsCSV | None = None
        self.stopped_by: str | None = None
        if cfg.resume:  # (a fresh run never meets an older checkpoint: rundir.prepare_run_dir refuses that)
            self._resume()

    # ---------------------------------------------------------- resume ---
    def _resume(self) -> None:
        from .checkpoint import list_checkpoints

        try:
            ck = load_checkpoint(self.out)
        except ValueError as exc:  # torn or corrupted: fall back on the newest kept one that verifies
            ck = None
            for step, path in list_checkpoints(self.out):
                try:
                    ck = load_checkpoint(self.out, path)
                except ValueError:
                    continue
                print(f"[pyagg] {exc}; resuming from the kept checkpoint of step {step} instead", file=sys.stderr)
                break
            if ck is None:
                raise
        if ck is None:
            return
        meta, arrays = ck
        fp = self.cfg.fingerprint()
        if meta.get("fingerprint") != fp:
            diff = {k: (meta.get("fingerprint", {}).get(k), v) for k, v in fp.items()
                    if meta.get("fingerprint", {}).get(k) != v}
            raise ValueError(f"--resume: the checkpoint in {self.out} is from another configuration: {diff}")
        self._check_checkpoint_shapes(meta, arrays)
        self.params = np.array(arrays["params"], dtype=np.float32)
        self.opt.load(arrays, meta.get("opt_t", 0))
        if "agg_state" in arrays:
            self.agg.state = np.array(arrays["agg_state"])
        if "agg_norm_history" in arrays:  # clipped-clustering's norms of the earlier steps
            self.agg.norm_history = np.array(arrays["agg_norm_history"], dtype=np.float64)
        self.agg.calls = int(meta.get("agg_calls", 0))
        self.start_step = int(meta["step"]) + 1
        self.resumed_from = int(meta["step"])
        self.elapsed0 = float(meta.get("elapsed", 0.0))
        self.skipped = int(meta.get("skipped", 0))
        for k in self.counts:
            if f"count_{k}" in arrays:
                self.counts[k] = np.array(arrays[f"count_{k}"], dtype=np.int64)

    def _check_checkpoint_shapes(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Refuse a checkpoint whose arrays do not fit this model (d) and cluster (n).

        The fingerprint names the configuration, not the model's size: the same
        experiment can build a model of another d (changed code, a custom
        factory), so the arrays themselves are checked before anything is loaded.
        """
        where = f"--resume: the checkpoint in {self.out}"
        want = (self.d,)
        if "params" not in arrays:
            raise ValueError(f"{where} holds no parameter array 'params'")
        got = tuple(arrays["params"].shape)
        if got != want:
            raise ValueError(
                f"{where} holds parameters of shape {got} but this model's parameters have shape {want} "
                f"(d={self.d}): it was written for a model of another size; resume it with that model, "
                "or start afresh without --resume (or in another --out)"
            )
        if "d" in meta and int(meta["d"]) != self.d:
            raise ValueError(
                f"{where} was written for d={int(meta['d'])} parameters (header) but holds parameters "
                f"of shape {got}; this model has shape {want}: the checkpoint is inconsistent"
            )
        expect = {f"opt_{k}": want for k in self.opt.state}
        expect.update({f"count_{k}": (self.n,) for k in self.counts})
        if "agg_state" in arrays:
            expect["agg_state"] = want
        for name, shape in expect.items():
            if name.startswith("opt_") and name not in arrays:
                raise ValueError(f"{where} holds no optimizer array {name!r} (optimizer {self.cfg.optimizer})")
            if name in arrays and tuple(arrays[name].shape) != shape:
                raise ValueError(
                    f"{where}: array {name!r} has shape {tuple(arrays[name].shape)}, expected {shape} "
                    f"(d={self.d}, workers={self.n})"
                )

    def checkpoint(self, step: int, elapsed: float) -> None:
        arrays = {"params": self.params, **self.opt.arrays()}
        arrays.update({f"count_{k}": v for k, v in self.counts.items()})
        if isinstance(getattr(self.agg, "state", None), np.ndarray):
            arrays["agg_state"] = self.agg.state
        history = getattr(self.agg, "norm_history", None)
        if history is not None:
            arrays["agg_norm_history"] = history
        meta = {
            "fingerprint": self.cfg.fingerprint(),
            "d": self.d,
            "opt_t": self.opt.t,
            "agg_calls": self.agg.calls,
            "elapsed": elapsed,
            "skipped": self.skipped,
        }
        if self.metrics is not None:
            self.metrics.sync()
        if self.workers_csv is not None:
            self.workers_csv.sync()
        save_checkpoint(self.out, step, arrays, meta, keep=self.cfg.keep_checkpoints)

    # ------------------------------------------------------- validation ---
    def _fill_row(self, i: int, step: int) -> np.ndarray:
        """What the transport would have put in worker i's row had nothing arrived (the engine's fill)."""
        from lossympi import fill_missing

        row = (self.last_rows[i].copy() if self.cfg.fill == "last" and self.last_rows[i] is not None
               else np.zeros(self.d, np.float32))
        return fill_missing(row, None, self.cfg.fill, seed=self.cfg.seed, step=step, rank=i + 1)

    def validate(self, rows: list[Any], stats: list[dict], step: int = 0) -> tuple[np.ndarray, list[str]]:
        """Check every row (length, dtype, finite values); build the (n, d) float32 matrix.

        Returns the matrix (a buffer reused from step to step) and each
        worker's status: ok, nonfinite (kept: the rule deals with it), missing,
        dead (filled) or rejected (wrong dtype or length: filled).
        """
        if getattr(self, "_G", None) is None:
            self._G = np.empty((self.n, self.d), np.float32)
        G = self._G
        status = []
        dead = self.collector.dead
        for i in range(self.n):
            r = rows[i] if i < len(rows) else None
            st = "ok"
            ts = stats[i].pop("transport_status", None)
            if ts is not None and r is not None and r.dtype == np.float32 and r.shape == (self.d,):
                # The transport already validated and filled this row (lost chunks, rejected or
                # missing datagrams, dead worker): keep its fill, record its verdict.
                G[i] = r
                status.append(ts)
                continue
            if r is None:
                st = "dead" if i in dead or ts == "dead" else (ts or "missing")
            elif not isinstance(r, np.ndarray) or r.dtype != np.float32:
                st = "rejected"
                stats[i]["reject_reason"] = f"dtype {getattr(r, 'dtype', type(r).__name__)}"
            elif r.shape != (self.d,):
                st = "rejected"
                stats[i]["reject_reason"] = f"shape {r.shape} != ({self.d},)"
            if st == "ok":
                G[i] = r
            else:
                G[i] = self._fill_row(i, step)
            status.append(st)
        finite = np.isfinite(G)
        nonfinite = self.d - np.count_nonzero(finite, axis=1)
        norms = np.sqrt(np.einsum("ij,ij->i", G, G, dtype=np.float64))
        for i in range(self.n):
            st = status[i]
            if st == "dead" and i not in dead:
                st = status[i] = "missing"
            if st == "ok" and nonfinite[i]:
                st = status[i] = "nonfinite"
            elif st == "ok" and self.cfg.fill == "last":
                self.last_rows[i] = G[i].copy()
            stats[i]["nonfinite"] = int(nonfinite[i])
            stats[i]["norm"] = float(norms[i]) if not nonfinite[i] else float("nan")
            stats[i]["status"] = st
            self.counts["missing" if st == "dead" else st][i] += 1
        return G, status

    # --------------------------------------------------------------- run ---
    BASE_FIELDS = ["step", "time", "step_time", "comm_time", "validate_time", "agg_time", "update_time", "loss",
                   "accuracy", "skipped", "n_ok", "n_nonfinite", "n_partial", "n_missing", "n_rejected", "n_dead",
                   "grad_norm"]
    """Columns of metrics.csv (one row per step); the per-worker figures are in workers.csv."""

    def _worker_fields(self, stats: list[dict]) -> list[str]:
        """Columns of workers.csv (long format: one row per step and worker)."""
        keys: list[str] = ["step", "worker", "status"]
        for s in stats:
            for k, v in s.items():
                if k not in keys and k != "reject_reason" and isinstance(v, (int, float, np.integer, np.floating)):
                    keys.append(k)
        return keys

    def evaluate(self) -> dict[str, float]:
        self.model.set_flat(self.params)
        return self.model.evaluate()

    def run(self) -> dict[str, Any]:
        from .metrics import TensorBoardLog, make_progress
        from .stop import STOP

        cfg = self.cfg
        self.metrics: MetricsCSV | None = None
        self.workers_csv: MetricsCSV | None = None
        csv_path = os.path.join(self.out, "metrics.csv")
        wcsv_path = os.path.join(self.out, "workers.csv")
        bar = make_progress(cfg.steps, self.start_step, enabled=cfg.progress and not cfg.quiet,
                            label=f"{cfg.rule} | {cfg.attack}", force_tty=os.environ.get("PYAGG_TTY") == "1")
        tb = TensorBoardLog(os.path.join(self.out, "tensorboard")) if cfg.tensorboard else None
        t_start = time.perf_counter()
        step_times, agg_times, comm_times = [], [], []
        last_step = self.start_step - 1
        last_checkpoint = self.resumed_from
        elapsed = self.elapsed0
        completed = self.start_step >= cfg.steps
        self.stopped_by: str | None = None
        resume_step = self.start_step - 1 if self.resumed_from is not None else None
        try:
            for step in range(self.start_step, cfg.steps):
                if STOP.requested:
                    self.stopped_by = STOP.name
                    break
                t0 = time.perf_counter()
                self.collector.broadcast(step, self.params)
                rows, stats = self.collector.receive(step)
                stats = [dict(s) for s in stats] + [{} for _ in range(self.n - len(stats))]
                t1 = time.perf_counter()
                G, status = self.validate(rows, stats, step)
                tv = time.perf_counter()
                g = self.agg.aggregate(G)
                t2 = time.perf_counter()
                skipped = 0
                new = self.opt.step(self.params, g) if np.all(np.isfinite(g)) else None
                if new is not None:
                    self.params = new
                    gnorm = float(np.linalg.norm(g.astype(np.float64)))
                else:  # a non-finite aggregate, or an update that would overflow: not applied
                    skipped = 1
                    self.skipped += 1
                    gnorm = float("nan")
                t3 = time.perf_counter()
                if self.observer is not None:
                    self.observer(step, G)
                ev: dict[str, float] = {}
                is_last = step == cfg.steps - 1
                if is_last or (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step == self.start_step:
                    ev = self.evaluate()
                    self.last_eval = ev
                    self.history.append((step, ev["accuracy"]))
                elapsed = self.elapsed0 + (time.perf_counter() - t_start)
                row: dict[str, Any] = {
                    "step": step, "time": elapsed, "step_time": t3 - t0, "comm_time": t1 - t0,
                    "validate_time": tv - t1, "agg_time": t2 - tv, "update_time": t3 - t2, "loss": ev.get("loss"),
                    "accuracy": ev.get("accuracy"), "skipped": skipped, "grad_norm": gnorm,
                    "n_ok": status.count("ok"), "n_nonfinite": status.count("nonfinite"),
                    "n_missing": status.count("missing"), "n_rejected": status.count("rejected"),
                    "n_dead": status.count("dead"), "n_partial": status.count("partial"),
                }
                if self.metrics is None:
                    self.metrics = MetricsCSV(csv_path, self.BASE_FIELDS, resume_step=resume_step)
                    self.workers_csv = MetricsCSV(wcsv_path, self._worker_fields(stats), resume_step=resume_step)
                self.metrics.write(row)
                for i, st in enumerate(stats):
                    self.workers_csv.write({**st, "step": step, "worker": i})
                if tb is not None:
                    tb.step(step, row)
                step_times.append(t3 - t0)
                agg_times.append(t2 - tv)
                comm_times.append(t1 - t0)
                last_step = step
                if cfg.checkpoint_every and ((step + 1) % cfg.checkpoint_every == 0 or is_last):
                    self.checkpoint(step, elapsed)
                    last_checkpoint = step
                bar.update(step, t3 - t0, ev.get("loss"), ev.get("accuracy"))
            else:
                completed = True
            if self.stopped_by and last_step >= 0 and last_checkpoint != last_step:
                self.checkpoint(last_step, elapsed)  # a stopped run is always resumable
        finally:
            for m in (self.metrics, self.workers_csv):
                if m is not None:
                    m.close()
            if tb is not None:
                tb.close()
            bar.close()
        return self._finish(completed, last_step, elapsed, step_times, agg_times, comm_times)

    def _finish(self, completed, last_step, elapsed, step_times, agg_times, comm_times) -> dict[str, Any]:
        cfg = self.cfg
        csv_path = os.path.join(self.out, "metrics.csv")
        png = loss_png = None
        all_steps = []
        if os.path.exists(csv_path):
            _, rows = read_metrics(csv_path)
            all_steps = [float(r["step_time"]) for r in rows if r.get("step_time")]
            title = (f"{self.exp.name}: {cfg.rule}, n={self.n}, f={cfg.f}, "
                     f"{cfg.byzantine} Byzantine ({cfg.attack}), {cfg.launcher}/{cfg.transport}")
            png = plot_accuracy(csv_path, os.path.join(self.out, "accuracy.png"), title, self.exp.metric)
            loss_png = plot_loss(csv_path, os.path.join(self.out, "loss.png"), title)
        final = self.last_eval or (self.evaluate() if last_step >= 0 else {})

        def mean(x):
            return float(np.mean(x)) if len(x) else float("nan")

        def med(x):
            return float(np.median(x)) if len(x) else float("nan")

        summary = {
            "completed": bool(completed),
            "config": cfg.to_dict(),
            "experiment": {"name": self.exp.name, "d": self.d, "metric": self.exp.metric, **self.exp.info},
            "n_workers": self.n,
            "declared_f": cfg.f,
            "steps_done": last_step + 1,
            "resumed_from_step": self.resumed_from,
            "final_accuracy": final.get("accuracy"),
            "final_loss": final.get("loss"),
            "best_accuracy": max((a for _, a in self.history if a == a), default=None),
            "mean_step_time": mean(all_steps[1:] if len(all_steps) > 1 else all_steps),
            "median_step_time": med(all_steps[1:] if len(all_steps) > 1 else all_steps),
            "first_step_time": all_steps[0] if all_steps else None,
            "this_session": {
                "steps": len(step_times),
                "mean_step_time": mean(step_times[1:] if len(step_times) > 1 else step_times),
                "mean_agg_time": mean(agg_times[1:] if len(agg_times) > 1 else agg_times),
                "median_agg_time": med(agg_times[1:] if len(agg_times) > 1 else agg_times),
                "mean_comm_time": mean(comm_times[1:] if len(comm_times) > 1 else comm_times),
            },
            "wall_time": elapsed,
            "skipped_steps": self.skipped,
            "workers": [
                {"worker": i, **{k: int(v[i]) for k, v in self.counts.items()}, "dead": i in self.collector.dead,
                 "dead_reason": getattr(self.collector, "dead_reasons", {}).get(i)}
                for i in range(self.n)
            ],
            "stopped_by": self.stopped_by,
            "files": {"metrics": csv_path, "workers": os.path.join(self.out, "workers.csv"), "plot": png,
                      "loss_plot": loss_png,
                      "tensorboard": os.path.join(self.out, "tensorboard") if cfg.tensorboard else None,
                      "checkpoint": os.path.join(self.out, "checkpoint.npz")
                      if os.path.exists(os.path.join(self.out, "checkpoint.npz")) else None},
        }
        summary.update(self.extra)
        write_summary(os.path.join(self.out, "summary.json"), summary)
        return summary


def summary_line(s: dict[str, Any]) -> str:
    acc = s.get("final_accuracy")
    acc_s = "nan" if acc is None or (isinstance(acc, float) and math.isnan(acc)) else f"{acc:.4f}"
    out = os.path.dirname(s['files']['metrics'])
    if s.get("stopped_by"):
        total = s.get("config", {}).get("steps", "?")
        ck = " (continue with --resume)" if s["files"].get("checkpoint") else ""
        return (f"stopped by {s['stopped_by']} after {s['steps_done']} of {total} steps, "
                f"{s['experiment']['metric']} {acc_s}; summary, plots and checkpoint in {out}{ck}")
    return (f"final {s['experiment']['metric']} {acc_s} after {s['steps_done']} steps, "
            f"mean step {s['mean_step_time'] * 1e3:.2f} ms, skipped {s['skipped_steps']}; "
            f"outputs in {out}")


def load_summary(out_dir: str) -> dict[str, Any]:
    with open(os.path.join(out_dir, "summary.json")) as fh:
        return json.load(fh)
