"""Config-driven sweeps: ``pyagg experiment run sweep.toml``.

A sweep is one TOML (or YAML, when PyYAML is installed) file::

    [sweep]
    name = "byzantine"              # shown in titles
    out = "runs/sweeps/byzantine"   # one sub-directory per run under out/runs/
    jobs = 0                        # parallel processes (0: one per core)
    metric = "final_accuracy"       # what the table and heatmaps show

    [base]                          # any `pyagg train` option (TrainConfig field), shared by every run
    workers = 19
    steps = 200

    [grid]                          # every combination of these lists is one run
    rule = ["average", "multi-krum", "bulyan", "median:"]   # NAME[:K=V[:K=V]]
    pre = [[], ["nnm"]]             # pre-aggregator chains
    attack = ["none", "sign_flip:scale=100", "gaussian"]    # NAME[:K=V[:K=V]]; "none" runs with 0 Byzantine
    byzantine = [1, 2]              # actual f
    declared_f = ["actual", 4]      # f told to the rule ("actual": = byzantine)
    seed = [0, 1, 2]
    lr = [0.1, 0.05]
    alpha = ["iid", 1.0, 0.1]       # data heterogeneity: iid shards or Dirichlet(alpha)
    experiment = ["digits-mlp", "digits-mlp:hidden=128"]

Every name is checked before anything runs (did-you-mean). Runs go to a
pool of worker processes bounded by the cores (each imports TensorFlow once
and runs many configurations). A run whose completed summary.json with the
same configuration is already under ``out`` is skipped, a stopped one is
resumed from its checkpoint: a sweep can be stopped (Ctrl-C, SIGTERM) and
re-run to go on. Outputs: ``results.json`` / ``results.csv`` (one row per
run), ``results.md`` (mean +- std over seeds per cell, worst-case attack per
rule), ``heatmap_rule_attack*.png`` (rule x attack) and, when both vary,
``heatmap_f_alpha*.png`` (f x alpha, one per rule).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from .cluster.checkpoint import atomic_write_text
from .cluster.config import TrainConfig

__all__ = ["load_sweep", "expand", "run_sweep", "SHIPPED", "GRID_KEYS"]

GRID_KEYS = ("experiment", "rule", "pre", "attack", "byzantine", "declared_f", "alpha", "lr", "seed")
"""Sweep dimensions, in the order a run's id and the tables list them."""

SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
"""Configs that ship with pyagg (``pyagg experiment run byzantine`` finds ``configs/byzantine.toml``)."""


# ------------------------------------------------------------------ config ---
def _find(path: str) -> str:
    if os.path.exists(path):
        return path
    for ext in ("", ".toml", ".yaml", ".yml"):
        p = os.path.join(SHIPPED, path + ext)
        if os.path.exists(p):
            return p
    shipped = sorted(os.path.splitext(f)[0] for f in os.listdir(SHIPPED)) if os.path.isdir(SHIPPED) else []
    from .cluster.checks import did_you_mean

    raise ValueError(f"sweep config {path!r} not found{did_you_mean(path, shipped)} (a file, or a shipped config: "
                     f"{', '.join(shipped)})")


def load_sweep(path: str) -> dict[str, Any]:
    """Read a sweep file (TOML, or YAML with PyYAML); returns {"sweep": ..., "base": ..., "grid": ...}."""
    path = _find(path)
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError as exc:
            raise ValueError(f"{path}: YAML sweeps need PyYAML (pip install pyyaml); TOML needs nothing") from exc
        with open(path) as fh:
            doc = yaml.safe_load(fh) or {}
    else:
        import tomllib

        with open(path, "rb") as fh:
            try:
                doc = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"{path}: {exc}") from None
    unknown = set(doc) - {"sweep", "base", "grid", "overhead"}
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown)}; expected [sweep], [base], [grid]")
    doc.setdefault("sweep", {})
    doc.setdefault("base", {})
    doc.setdefault("grid", {})
    doc["path"] = path
    fields = set(TrainConfig.__dataclass_fields__)
    from .cluster.checks import did_you_mean

    for k in doc["base"]:
        if k.replace("-", "_") not in fields:
            raise ValueError(f"{path}: [base] {k!r} is not a training option{did_you_mean(k, sorted(fields))}")
    for k, v in doc["grid"].items():
        if k not in GRID_KEYS:
            raise ValueError(f"{path}: [grid] {k!r} is not a sweep dimension{did_you_mean(k, GRID_KEYS)} "
                             f"(dimensions: {', '.join(GRID_KEYS)})")
        if not isinstance(v, list) or not v:
            raise ValueError(f"{path}: [grid] {k} must be a non-empty list, got {v!r}")
    known = {"name", "out", "jobs", "metric", "kind"}
    for k in doc["sweep"]:
        if k not in known:
            raise ValueError(f"{path}: [sweep] {k!r} unknown{did_you_mean(k, sorted(known))}")
    return doc


def _spec(text: Any) -> tuple[str, dict[str, Any]]:
    """``"sign_flip:scale=100"`` -> ("sign_flip", {"scale": 100})."""
    from .cluster.workloads import parse_kv

    name, *kvs = str(text).split(":")
    return name.strip(), parse_kv(",".join(kvs)) if kvs else {}


def _label(v: Any) -> str:
    if isinstance(v, list):
        return "+".join(str(x) for x in v) or "-"
    return str(v)


def expand(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every point of the sweep: [{"id", "point": {dim: value}, "cfg": TrainConfig, "alias"}, ...].

    ``point["byzantine"]`` is the grid's f (a run with attack "none" has 0
    Byzantine workers whatever it says: ``cfg.byzantine``); points that are
    the same run (same configuration) share it: the first is run, the others
    are ``alias`` and take its result.
    """
    from .cluster.config import parse_pre

    base = {k.replace("-", "_"): v for k, v in doc["base"].items()}
    grid = doc["grid"]
    dims = [k for k in GRID_KEYS if k in grid]
    runs: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any]] = {}
    points: set[str] = set()
    for values in itertools.product(*(grid[k] for k in dims)):
        point = dict(zip(dims, values))
        kw = copy.deepcopy(base)
        kw.setdefault("progress", False)
        kw["quiet"] = True
        kw["launcher"] = "local"
        if "experiment" in point:
            kw["experiment"], eargs = _spec(point["experiment"])
            kw["experiment_args"] = {**kw.get("experiment_args", {}), **eargs}
        if "rule" in point:
            kw["rule"], kw["rule_args"] = _spec(point["rule"])
        if "pre" in point:
            pre = point["pre"] if isinstance(point["pre"], list) else [point["pre"]]
            kw["pre"] = parse_pre([str(x) for x in pre])
        if "attack" in point:
            kw["attack"], kw["attack_args"] = _spec(point["attack"])
        if "byzantine" in point:
            kw["byzantine"] = int(point["byzantine"])
        f = kw.get("byzantine", 0)
        dec = point.get("declared_f", kw.get("declared_f", "actual"))
        kw["declared_f"] = f if dec in ("actual", None) else int(dec)
        if kw.get("attack", "none") == "none":  # no attack: every worker honest (the rule is still told f)
            kw["byzantine"] = 0
        if "alpha" in point:
            if point["alpha"] == "iid":
                kw["shards"] = "iid"
            else:
                kw["shards"], kw["alpha"] = "dirichlet", float(point["alpha"])
        if "lr" in point:
            kw["lr"] = float(point["lr"])
        if "seed" in point:
            kw["seed"] = int(point["seed"])
        cfg = TrainConfig(**kw)
        key = json.dumps({k: v for k, v in cfg.to_dict().items() if k != "out"}, sort_keys=True, default=str)
        rid = hashlib.sha256(key.encode()).hexdigest()[:10]
        point = dict(point)
        point["declared_f"] = cfg.f
        pkey = json.dumps(point, sort_keys=True, default=str)
        if pkey in points:  # e.g. declared f "actual" and the same number: one point
            continue
        points.add(pkey)
        if key in seen:  # e.g. attack "none" at several f: one run, shown in every cell it belongs to
            runs.append({"id": rid, "point": point, "cfg": seen[key]["cfg"], "alias": True})
            continue
        slug = "_".join(_label(point[k]).replace(":", "-").replace("=", "").replace(",", "-").replace("/", "-")
                        for k in dims if len(grid[k]) > 1)[:80]
        cfg.out = os.path.join(doc["sweep"].get("out", "runs/sweep"), "runs", f"{slug or 'run'}-{rid}")
        run = {"id": rid, "point": point, "cfg": cfg, "alias": False}
        seen[key] = run
        runs.append(run)
    return runs


def check_sweep(runs: list[dict[str, Any]]) -> None:
    """Names and parameters of every run (before anything runs); bounds are left to each run ("n/a")."""
    from .cluster.checks import check_attack, check_experiment, check_pre, check_rule
    from .cluster.workloads import EXPERIMENTS, describe

    done = set()
    for r in runs:
        c = r["cfg"]
        key = (c.rule, json.dumps(c.rule_args, default=str), c.attack, json.dumps(c.attack_args, default=str),
               json.dumps(c.pre, default=str), c.experiment, json.dumps(c.experiment_args, default=str))
        if key in done:
            continue
        done.add(key)
        c.validate()
        check_rule(c.rule, c.rule_args)
        check_pre(c.pre)
        check_attack(c.attack, c.attack_args)
        check_experiment(c.experiment)
        if c.experiment in EXPERIMENTS:
            describe(c.experiment, **c.experiment_args)


# ----------------------------------------------------------------- running ---
def _job(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """Run one training in a pool process (TensorFlow imported once per process; models cached)."""
    import signal

    from .cluster import stop as _stop

    _stop.install()  # SIGTERM from the parent: the run stops cleanly after its step (resumed next time)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the parent decides
    from .cluster.model import setup_tf
    from .experiment import _reuse
    from .train import run

    setup_tf(1)
    cfg = TrainConfig(**cfg_dict)
    t0 = time.time()
    try:
        s = _reuse(cfg)
        if s is not None:
            return {"status": "reused", "summary": _brief(s), "seconds": 0.0}
        from .cluster.rundir import run_files

        if os.path.exists(os.path.join(cfg.out, "checkpoint.npz")):
            cfg.resume = True  # a stopped run: continue it
        elif run_files(cfg.out):
            cfg.overwrite = True  # an unfinished run without checkpoint, or another configuration: redo it
        s = run(cfg)
        return {"status": "done" if s.get("completed") else "stopped", "summary": _brief(s),
                "seconds": time.time() - t0}
    except ValueError as exc:  # e.g. the rule's bound excludes this n/f: a cell of the table, not a failure
        return {"status": "n/a", "error": str(exc), "seconds": time.time() - t0}


def _brief(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s.get(k) for k in ("final_accuracy", "final_loss", "best_accuracy", "steps_done", "skipped_steps",
                                  "mean_step_time", "completed")}


def _rows_done(out: str) -> int:
    try:
        with open(os.path.join(out, "metrics.csv"), "rb") as fh:
            return max(fh.read().count(b"\n") - 1, 0)
    except OSError:
        return 0


class _SweepProgress:
    """Nested progress: the sweep (runs done / total, rate, ETA) and one line per run in flight (its steps)."""

    def __init__(self, total: int, enabled: bool, label: str, shown: list[str] | None = None):
        self.enabled, self.total = enabled, total
        self.shown = shown
        self.rich = None
        self.t0 = time.monotonic()
        if enabled and sys.stderr.isatty():
            try:
                from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                           TimeRemainingColumn)

                self.rich = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                     refresh_per_second=4)
                self.main = self.rich.add_task(f"[bold]{label}", total=total)
                self.tasks: dict[str, Any] = {}
                self.rich.start()
            except ImportError:
                self.rich = None

    def start(self, run: dict[str, Any]) -> None:
        if self.rich is not None:
            p = run["point"]
            keys = self.shown if self.shown else [k for k in p if k != "declared_f"]
            desc = "  " + " ".join(f"{k}={_label(p[k])}" for k in keys if k in p)[:90]
            self.tasks[run["id"]] = self.rich.add_task(desc, total=run["cfg"].steps)

    def poll(self, active: dict[str, dict[str, Any]]) -> None:
        if self.rich is not None:
            for rid, run in active.items():
                if rid in self.tasks:
                    self.rich.update(self.tasks[rid], completed=_rows_done(run["cfg"].out))

    def finish(self, run: dict[str, Any], res: dict[str, Any], k: int) -> None:
        if self.rich is not None:
            tid = self.tasks.pop(run["id"], None)
            if tid is not None:
                self.rich.remove_task(tid)
            self.rich.update(self.main, completed=k)
            return
        if not self.enabled:
            return
        acc = (res.get("summary") or {}).get("final_accuracy")
        rate = k / max(time.monotonic() - self.t0, 1e-9)
        eta = (self.total - k) / rate if rate > 0 else float("nan")
        what = " ".join(f"{kk}={_label(v)}" for kk, v in run["point"].items())
        acc_s = "n/a" if acc is None else f"{acc:.3f}"
        print(f"[{k}/{self.total}] {what}: {res['status']} {acc_s} ({res['seconds']:.1f} s; "
              f"eta {eta / 60:.1f} min)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.rich is not None:
            self.rich.stop()


def run_sweep(path: str, jobs: int | None = None, out: str | None = None, progress: bool = True,
              overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) a sweep; returns the summary with the output files."""
    doc = load_sweep(path)
    if out:
        doc["sweep"]["out"] = out
    out = doc["sweep"].setdefault("out", os.path.join("runs", "sweeps", doc["sweep"].get("name", "sweep")))
    from .cluster.rundir import check_out_path

    check_out_path(out)
    runs = expand(doc)
    check_sweep(runs)
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "sweep.json"), json.dumps({k: doc[k] for k in ("sweep", "base", "grid")},
                                                                 indent=2, default=str) + "\n")
    n_jobs = int(jobs if jobs is not None else doc["sweep"].get("jobs", 0)) or (os.cpu_count() or 1)
    n_jobs = max(1, min(n_jobs, os.cpu_count() or 1))
    results: dict[str, dict[str, Any]] = {}
    if overwrite:
        for r in runs:
            r["cfg"].overwrite = True
    unique = [r for r in runs if not r["alias"]]
    n_jobs = max(1, min(n_jobs, len(unique)))
    shown = [k for k in GRID_KEYS if k in doc["grid"] and len(doc["grid"][k]) > 1]
    bar = _SweepProgress(len(unique), progress, f"{doc['sweep'].get('name', 'sweep')} ({n_jobs} processes)", shown)
    import multiprocessing as mp

    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    pending = list(unique)
    active: dict[Future, dict[str, Any]] = {}
    k = 0
    t0 = time.time()
    try:
        with ProcessPoolExecutor(max_workers=n_jobs, mp_context=mp.get_context("spawn")) as pool:
            try:
                while pending or active:
                    while pending and len(active) < n_jobs:
                        r = pending.pop(0)
                        active[pool.submit(_job, r["cfg"].to_dict())] = r
                        bar.start(r)
                    done, _ = wait(list(active), timeout=0.5, return_when=FIRST_COMPLETED)
                    bar.poll({r["id"]: r for r in active.values()})
                    for fut in done:
                        r = active.pop(fut)
                        res = fut.result()
                        results[r["id"]] = res
                        k += 1
                        bar.finish(r, res, k)
            except KeyboardInterrupt:
                # Each run in flight stops cleanly (SIGTERM: checkpoint, summary, plots); the rest never starts.
                procs = list((getattr(pool, "_processes", None) or {}).values())
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.join(timeout=30)
                pool.shutdown(wait=False, cancel_futures=True)
                write_results(doc, runs, results, time.time() - t0)
                raise
    finally:
        bar.close()
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    return write_results(doc, runs, results, time.time() - t0)


# ----------------------------------------------------------------- results ---
def _stats(xs: list[float]) -> tuple[float | None, float | None]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def _fmt(m: float | None, sd: float | None) -> str:
    return "n/a" if m is None else f"{m:.3f} ± {sd:.3f}"


def write_results(doc: dict[str, Any], runs: list[dict[str, Any]], results: dict[str, dict[str, Any]],
                  wall: float) -> dict[str, Any]:
    out = doc["sweep"]["out"]
    metric = doc["sweep"].get("metric", "final_accuracy")
    rows = []
    for r in runs:
        res = results.get(r["id"], {"status": "not run"})  # an alias shares its run's id
        s = res.get("summary") or {}
        rows.append({"id": r["id"], **{k: _label(v) for k, v in r["point"].items()},
                     "byzantine_workers": r["cfg"].byzantine, "status": res["status"],
                     metric: s.get(metric), "steps_done": s.get("steps_done"),
                     "skipped_steps": s.get("skipped_steps"), "mean_step_ms": None if s.get("mean_step_time") is None
                     else 1e3 * s["mean_step_time"], "error": res.get("error"), "out": r["cfg"].out})
    dims = [k for k in GRID_KEYS if k in doc["grid"] or k in ("byzantine", "declared_f")]
    varying = [k for k in dims if len({row[k] for row in rows}) > 1]
    if "declared_f" in varying and all(str(row["declared_f"]) == str(row["byzantine"]) for row in rows):
        varying.remove("declared_f")  # declared f "actual": the same dimension as f
    cell_dims = [k for k in varying if k != "seed"]
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault(tuple(row[k] for k in cell_dims), []).append(row)
    table = []
    for key, rs in cells.items():
        m, sd = _stats([x[metric] for x in rs])
        table.append({**dict(zip(cell_dims, key)), "mean": m, "std": sd, "runs": len(rs),
                      "n/a": sum(1 for x in rs if x["status"] == "n/a")})
    summary = {"sweep": doc["sweep"], "base": doc["base"], "grid": doc["grid"], "metric": metric, "runs": rows,
               "cells": table, "wall_time": wall,
               "counts": {s: sum(1 for x in rows if x["status"] == s) for s in {x["status"] for x in rows}}}
    worst = worst_case(table, cell_dims)
    summary["worst_case"] = worst
    summary["files"] = {"table": os.path.join(out, "results.md"), "json": os.path.join(out, "results.json"),
                        "csv": os.path.join(out, "results.csv"), "heatmaps": heatmaps(table, cell_dims, out, metric)}
    atomic_write_text(os.path.join(out, "results.json"), json.dumps(summary, indent=2, default=str) + "\n")
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["id"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(os.path.join(out, "results.csv"), buf.getvalue())
    md = [f"# Sweep {doc['sweep'].get('name', '')}: {metric} (mean ± std over seeds)", "",
          f"{len(rows)} runs: " + ", ".join(f"{v} {k}" for k, v in sorted(summary["counts"].items()))
          + f"; config `{doc.get('path')}`; fixed: "
          + ", ".join(f"{k}={v}" for k, v in doc["base"].items()), "",
          "| " + " | ".join(cell_dims) + " | mean ± std | runs |", "|" + "---|" * (len(cell_dims) + 2)]
    for c in table:
        md.append("| " + " | ".join(str(c[k]) for k in cell_dims) + f" | {_fmt(c['mean'], c['std'])}"
                  + (" (n/a: bound)" if c["n/a"] else "") + f" | {c['runs']} |")
    if worst:
        md += ["", "## Worst-case attack per rule", "",
               "| " + " | ".join(k for k in cell_dims if k != "attack") + " | worst attack | mean ± std |",
               "|" + "---|" * (len(cell_dims) + 1)]
        for w_ in worst:
            md.append("| " + " | ".join(str(w_[k]) for k in cell_dims if k != "attack")
                      + f" | {w_['attack']} | {_fmt(w_['mean'], w_['std'])} |")
    atomic_write_text(os.path.join(out, "results.md"), "\n".join(md) + "\n")
    return summary


def worst_case(table: list[dict[str, Any]], cell_dims: list[str]) -> list[dict[str, Any]]:
    """Per rule (and every other setting), the attack with the lowest mean (no-attack runs excluded)."""
    if "attack" not in cell_dims:
        return []
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for c in table:
        if c["attack"] == "none" or c["mean"] is None:
            continue
        groups.setdefault(tuple(c[k] for k in cell_dims if k != "attack"), []).append(c)
    return [min(cs, key=lambda c: c["mean"]) for cs in groups.values()]


def _heatmap(grid_vals: dict[tuple[str, str], float | None], rows: list[str], cols: list[str], xlabel: str,
             ylabel: str, title: str, path: str, metric: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    a = np.full((len(rows), len(cols)), np.nan)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            v = grid_vals.get((r, c))
            if v is not None:
                a[i, j] = v
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 + 1.1 * len(cols)), 1.6 + 0.5 * len(rows)), dpi=100)
    im = ax.imshow(a, cmap="RdYlGn", vmin=0.0, vmax=1.0 if "accuracy" in metric else np.nanmax(a), aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, "n/a" if np.isnan(a[i, j]) else f"{a[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def heatmaps(table: list[dict[str, Any]], cell_dims: list[str], out: str, metric: str) -> list[str]:
    """rule x attack heatmaps (one per setting of the other dimensions) and f x alpha (one per rule)."""
    files = []

    def per(dims_xy: tuple[str, str], fname: str, xlabel: str, ylabel: str) -> None:
        y, x = dims_xy
        if y not in cell_dims or x not in cell_dims:
            return
        others = [k for k in cell_dims if k not in (x, y)]
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for c in table:
            groups.setdefault(tuple(c[k] for k in others), []).append(c)
        for i, (key, cs) in enumerate(groups.items()):
            rows = list(dict.fromkeys(str(c[y]) for c in cs))
            cols = list(dict.fromkeys(str(c[x]) for c in cs))
            vals = {(str(c[y]), str(c[x])): c["mean"] for c in cs}
            label = ", ".join(f"{k}={v}" for k, v in zip(others, key))
            name = fname + (f"_{i}" if len(groups) > 1 else "") + ".png"
            files.append(_heatmap(vals, rows, cols, xlabel, ylabel, f"{metric} (mean over seeds)\n{label}",
                                  os.path.join(out, name), metric))

    per(("rule", "attack"), "heatmap_rule_attack", "attack", "rule")
    fdim = "byzantine" if "byzantine" in cell_dims else "declared_f"
    per((fdim, "alpha"), "heatmap_f_alpha", "Dirichlet alpha (iid: homogeneous)", f"f ({fdim})")
    return files


