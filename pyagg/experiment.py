"""``pyagg experiment``: the comparisons of AggregaThor, reproduced with the local launcher.

``pyagg experiment byzantine``
    A matrix of rules x attacks at n = 19 workers, 1 of them Byzantine
    (AggregaThor: one Byzantine worker out of 19 poisons plain averaging while
    Multi-Krum and Bulyan keep learning). Writes ``comparison.png`` (test
    accuracy over steps, one panel per attack, one line per rule),
    ``results.md`` (final accuracy table) and ``results.json``; every run's own
    outputs are in ``<attack>/<rule>/``.

``pyagg experiment overhead``
    Time per step of each rule against plain averaging at n = 19 (declared
    f = 4, the largest Bulyan accepts at n = 19), no attack: every rule
    aggregates the same gradients at every step of one training (paired
    timings). Writes ``overhead.md``, ``overhead.json`` and ``overhead.png``.

Both run every training in this process (``--launcher local``: the same
parameter-server code as the MPI cluster, with the workers simulated), one
after the other.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

from .cluster.checkpoint import atomic_write_text
from .cluster.config import TrainConfig
from .cluster.workloads import parse_kv

__all__ = ["main", "run_byzantine", "run_overhead", "LEARNS", "FAILS"]

LEARNS = 0.85
"""Final test accuracy above which a digits run "keeps learning" (no attack reaches ~0.92 in 200 steps)."""
FAILS = 0.30
"""Final test accuracy below which a digits run "is poisoned"."""

DEFAULT_ATTACKS = "none,corrupt_inputs,sign_flip:scale=100,gaussian,nan,alie"
DEFAULT_RULES = "average,multi-krum,bulyan,median"


def _split_specs(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``"none,sign_flip:scale=100,gaussian:sigma=50"`` -> [(name, params), ...]."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, *kvs = item.split(":")
        out.append((name.strip(), parse_kv(",".join(kvs)) if kvs else {}))
    return out


def _label(name: str, params: dict[str, Any]) -> str:
    return name + ("(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")


def _dirname(label: str) -> str:
    return label.replace("(", "_").replace(")", "").replace(",", "_").replace("=", "-")


def _fmt_acc(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _curve(out_dir: str) -> list[tuple[int, float]]:
    from .cluster.metrics import read_metrics

    _, rows = read_metrics(os.path.join(out_dir, "metrics.csv"))
    return [(int(r["step"]), float(r["accuracy"])) for r in rows if r.get("accuracy")]


def check_names(rules, attacks, experiments) -> None:
    """Every rule, attack and experiment name (and parameter) of a matrix, checked before any run starts
    (a typo is an error with a did-you-mean suggestion, not a column of "n/a")."""
    from .cluster.checks import check_attack, check_experiment, check_rule
    from .cluster.workloads import EXPERIMENTS, describe

    for r, p in rules:
        check_rule(r, p)
    for at, p in attacks:
        check_attack(at, p)
    for e, p in experiments:
        check_experiment(e)
        if e in EXPERIMENTS:
            describe(e, **p)


def _reuse(cfg: TrainConfig) -> dict[str, Any] | None:
    """The summary of a completed run of this very configuration already in ``cfg.out``, else None.

    Lets a matrix or sweep be stopped and resumed: finished runs are not
    re-run. A run of another configuration in that directory is left to
    :func:`pyagg.cluster.rundir.prepare_run_dir` (refused unless --overwrite).
    """
    path = os.path.join(cfg.out, "summary.json")
    if cfg.overwrite or not os.path.exists(path):
        return None
    try:
        with open(path) as fh:
            s = json.load(fh)
    except (OSError, ValueError):
        return None
    old = s.get("config", {})
    same = all(json.dumps(old.get(k), sort_keys=True, default=str) == json.dumps(v, sort_keys=True, default=str)
               for k, v in cfg.to_dict().items()
               if k not in ("progress", "quiet", "resume", "overwrite", "out", "keep_checkpoints"))
    if s.get("completed") and same:
        s["reused"] = True
        return s
    return None


# --------------------------------------------------------------- byzantine ---
def run_byzantine(a: argparse.Namespace) -> dict[str, Any]:
    from .train import run

    rule_specs = _split_specs(a.rules)  # NAME[:K=V[:K=V]], e.g. zeroing:tau=5
    rules = [_label(r, p) for r, p in rule_specs]
    attacks = _split_specs(a.attacks)
    check_names(rule_specs, attacks, [(a.experiment, parse_kv(a.experiment_args))])
    seeds = list(range(a.seed, a.seed + a.seeds))
    os.makedirs(a.out, exist_ok=True)
    results: list[dict[str, Any]] = []
    t0 = time.time()
    total = len(rules) * len(attacks) * len(seeds)
    k = 0
    for attack, params in attacks:
        for (rule_name, rule_args), rule in zip(rule_specs, rules):
            for seed in seeds:
                k += 1
                byz = 0 if attack == "none" else a.byzantine
                sub = os.path.join(a.out, attack, _dirname(rule)) + (f"-s{seed}" if len(seeds) > 1 else "")
                cfg = TrainConfig(
                    experiment=a.experiment, experiment_args=parse_kv(a.experiment_args), workers=a.workers,
                    byzantine=byz, declared_f=a.byzantine if a.declared_f is None else a.declared_f, rule=rule_name,
                    rule_args=rule_args, attack=attack, attack_args=params, steps=a.steps,
                    batch_size=a.batch_size, lr=a.lr,
                    optimizer=a.optimizer, eval_every=a.eval_every, checkpoint_every=0, seed=seed, out=sub,
                    progress=False, quiet=True, launcher="local",
                )
                cfg.overwrite = a.overwrite
                t1 = time.time()
                try:
                    s = _reuse(cfg) or run(cfg)
                    acc, err = s["final_accuracy"], None
                    skipped = s["skipped_steps"]
                    step_ms = s["mean_step_time"] * 1e3
                except ValueError as exc:  # e.g. the rule's bound excludes this n/f
                    from .cluster.rundir import RunDirError

                    if isinstance(exc, RunDirError):  # another run is in the way: never a table cell
                        raise
                    acc, err, skipped, step_ms = None, str(exc), None, None
                res = {"attack": attack, "attack_args": params, "label": _label(attack, params), "rule": rule,
                       "seed": seed, "final_accuracy": acc, "skipped_steps": skipped, "mean_step_ms": step_ms,
                       "error": err, "out": sub}
                results.append(res)
                print(f"[{k}/{total}] {res['label']:>26s} {rule:>14s} seed {seed}: acc {_fmt_acc(acc)}"
                      f"{' skipped ' + str(skipped) if skipped else ''}{' ERROR ' + err if err else ''} "
                      f"({time.time() - t1:.1f}s)", file=sys.stderr, flush=True)
    summary = {"workers": a.workers, "byzantine": a.byzantine, "experiment": a.experiment, "steps": a.steps,
               "seeds": seeds, "learns": LEARNS, "fails": FAILS, "results": results,
               "wall_time": time.time() - t0}
    atomic_write_text(os.path.join(a.out, "results.json"), json.dumps(summary, indent=2, default=str) + "\n")
    md = _byzantine_table(summary, rules, attacks)
    atomic_write_text(os.path.join(a.out, "results.md"), md)
    png = _byzantine_plot(summary, rules, attacks, os.path.join(a.out, "comparison.png"))
    summary["files"] = {"table": os.path.join(a.out, "results.md"), "plot": png,
                        "json": os.path.join(a.out, "results.json")}
    return summary


def _mean_acc(results, attack_label, rule):
    xs = [r["final_accuracy"] for r in results if r["label"] == attack_label and r["rule"] == rule
          and r["final_accuracy"] is not None]
    return sum(xs) / len(xs) if xs else None


def _byzantine_table(s: dict[str, Any], rules: list[str], attacks) -> str:
    res = s["results"]
    lines = [
        f"# {s['byzantine']} Byzantine worker(s) out of {s['workers']} ({s['experiment']}, {s['steps']} steps, "
        f"seeds {s['seeds']})",
        "",
        f"Final test accuracy (mean over seeds). **bold**: keeps learning (> {LEARNS}); "
        f"_italic_: poisoned (< {FAILS}). `skip N`: N steps whose aggregate was not finite and was "
        "not applied (the server never lets the parameters become NaN/inf).",
        "",
        "| attack | " + " | ".join(rules) + " |",
        "|---|" + "---|" * len(rules),
    ]
    for attack, params in attacks:
        lab = _label(attack, params)
        cells = []
        for rule in rules:
            acc = _mean_acc(res, lab, rule)
            sk = [r["skipped_steps"] for r in res if r["label"] == lab and r["rule"] == rule and r["skipped_steps"]]
            err = [r["error"] for r in res if r["label"] == lab and r["rule"] == rule and r["error"]]
            if err:
                cells.append("n/a (bound)")
                continue
            c = _fmt_acc(acc)
            if acc is not None and acc > LEARNS:
                c = f"**{c}**"
            elif acc is not None and acc < FAILS:
                c = f"_{c}_"
            if sk:
                c += f" (skip {max(sk)})"
            cells.append(c)
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def _byzantine_plot(s: dict[str, Any], rules: list[str], attacks, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    na = len(attacks)
    cols = min(3, na)
    rows_ = math.ceil(na / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(4.2 * cols, 3.2 * rows_), dpi=100, squeeze=False)
    for k, (attack, params) in enumerate(attacks):
        ax = axes[k // cols][k % cols]
        lab = _label(attack, params)
        for rule in rules:
            runs = [r for r in s["results"] if r["label"] == lab and r["rule"] == rule and not r["error"]]
            if not runs:
                continue
            pts = _curve(runs[0]["out"])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=rule, lw=1.5)
        ax.set_title(lab if attack != "none" else "no attack", fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.set_xlabel("step")
        ax.set_ylabel("test accuracy")
    for k in range(na, rows_ * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{s['byzantine']} Byzantine out of {s['workers']} workers ({s['experiment']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- overhead ---
def run_overhead(a: argparse.Namespace) -> dict[str, Any]:
    """One training per experiment with plain averaging; at every step each rule also aggregates the
    very same gradient matrix (timed, paired), so that the comparison is immune to the load drifting
    between runs on a shared machine."""
    import numpy as np

    from . import api
    from .cluster.server import set_engine_threads
    from .train import run

    rule_specs = _split_specs(a.rules)  # NAME[:K=V[:K=V]], e.g. zeroing:tau=5
    check_names(rule_specs, [], _split_specs(a.experiments))
    if "average" not in [r for r, _ in rule_specs]:
        rule_specs.insert(0, ("average", {}))
    rules = [_label(r, p) for r, p in rule_specs]
    exps = _split_specs(a.experiments)
    os.makedirs(a.out, exist_ok=True)
    out: list[dict[str, Any]] = []
    for exp, eargs in exps:
        label = _label(exp, eargs)
        sub = os.path.join(a.out, label.replace("(", "_").replace(")", "").replace(",", "_").replace("=", "-"))
        aggs = {lab: api.Aggregator(r, a.declared_f, **p) for lab, (r, p) in zip(rules, rule_specs)}
        times: dict[str, list[float]] = {r: [] for r in rules}

        def observe(step: int, G: Any) -> None:
            if step < a.warmup:
                return
            _time_rules(aggs, G, step, a.repeat, times)

        cfg = TrainConfig(experiment=exp, experiment_args=eargs, workers=a.workers, byzantine=0,
                          declared_f=a.declared_f, rule="average", steps=a.steps, eval_every=0, checkpoint_every=0,
                          seed=a.seed, out=sub, progress=False, quiet=True, launcher="local", lr=a.lr,
                          agg_threads=a.agg_threads, overwrite=a.overwrite)
        t1 = time.time()
        s = run(cfg, observer=observe)
        set_engine_threads(a.agg_threads)
        from .cluster.metrics import read_metrics

        _, rows = read_metrics(os.path.join(sub, "metrics.csv"))
        rows = rows[min(a.warmup, len(rows) - 1):]
        step_ms = 1e3 * float(np.median([float(r["step_time"]) for r in rows]))
        val_ms = 1e3 * float(np.median([float(r["validate_time"]) for r in rows]))
        # the workers' gradients (comm_time in the local launcher) computed in parallel, as on a cluster
        comp_ms = 1e3 * float(np.median([float(r["comm_time"]) for r in rows]))
        par_ms = step_ms - comp_ms * (a.workers - 1) / a.workers
        base = 1e3 * float(np.median(times["average"]))
        for r in rules:
            agg_ms = 1e3 * float(np.median(times[r]))
            res = {"experiment": label, "d": s["experiment"]["d"], "rule": r, "agg_ms": agg_ms,
                   "agg_p90_ms": 1e3 * float(np.percentile(times[r], 90)), "extra_ms": agg_ms - base,
                   "avg_step_ms": step_ms, "validate_ms": val_ms, "step_ms": step_ms + agg_ms - base,
                   "overhead_pct": 100.0 * (agg_ms - base) / step_ms, "parallel_step_ms": par_ms + agg_ms - base,
                   "parallel_overhead_pct": 100.0 * (agg_ms - base) / par_ms}
            out.append(res)
            print(f"{label:>28s} d={res['d']:<8d} {r:>16s}: aggregation {agg_ms:8.3f} ms, "
                  f"step {res['step_ms']:8.2f} ms ({res['overhead_pct']:+.1f}% vs average; "
                  f"{res['parallel_overhead_pct']:+.1f}% with parallel workers)",
                  file=sys.stderr, flush=True)
        print(f"  ({time.time() - t1:.1f}s)", file=sys.stderr, flush=True)
    summary = {"workers": a.workers, "declared_f": a.declared_f, "steps": a.steps, "warmup": a.warmup,
               "agg_threads": a.agg_threads, "results": out}
    atomic_write_text(os.path.join(a.out, "overhead.json"), json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# Time per step at n = {a.workers} workers (declared f = {a.declared_f}), local launcher",
        "",
        f"One training with plain averaging per experiment ({a.steps} steps, the first {a.warmup} left out); "
        f"at every step every rule aggregates the same {a.workers} x d gradient matrix (best of {a.repeat}, "
        f"median over steps, {a.agg_threads} engine thread(s)). `step` = the averaging run's median step "
        "(all workers' gradients, validation, aggregation, update) with the average's aggregation replaced "
        "by the rule's; `overhead` = the rule's extra aggregation time over that step. The local launcher "
        "computes the workers' gradients one after the other, so a step here is longer than on a cluster "
        "whose workers compute in parallel, and the overhead correspondingly smaller. AggregaThor reported "
        "+19% (Multi-Krum) and +43% (Bulyan) per step over vanilla TensorFlow on its cluster. `parallel "
        "step` models that cluster: the same step with the workers' gradient computations overlapped "
        "(their total divided by n); no network time is included.",
        "",
        "| experiment | d | rule | aggregation (ms) | p90 (ms) | step (ms) | overhead | parallel step (ms) "
        "| overhead (parallel) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out:
        lines.append(f"| {r['experiment']} | {r['d']} | {r['rule']} | {r['agg_ms']:.3f} | {r['agg_p90_ms']:.3f} | "
                     f"{r['step_ms']:.2f} | {r['overhead_pct']:+.1f}% | {r['parallel_step_ms']:.2f} | "
                     f"{r['parallel_overhead_pct']:+.1f}% |")
    lines.append("")
    atomic_write_text(os.path.join(a.out, "overhead.md"), "\n".join(lines))
    png = _overhead_plot(out, os.path.join(a.out, "overhead.png"))
    summary["files"] = {"table": os.path.join(a.out, "overhead.md"), "plot": png}
    return summary


# ------------------------------------------------------- overhead by size ---
SIZE_MODELS = {
    100_000: ("digits-mlp", {"hidden": 1536}),        # d = 115,210
    1_000_000: ("shapes-cnn", {}),                    # d = 1,070,794
    10_000_000: ("shapes-cnn", {"width": 2440}),      # d = 10,040,482
}
"""The real model whose one-worker gradient time is the compute part at each size (nearest size)."""


def _model_for(d: int) -> tuple[str, dict[str, Any]]:
    return SIZE_MODELS[min(SIZE_MODELS, key=lambda k: abs(math.log(k) - math.log(max(d, 1))))]


def _time_compute(exp_name: str, eargs: dict[str, Any], batch: int, reps: int) -> tuple[int, float]:
    """(d, median seconds) of one worker's gradient on one mini-batch of the real model (1 TF thread)."""
    import numpy as np

    from .cluster.model import FlatModel
    from .cluster.workloads import load_experiment

    exp = load_experiment(exp_name, seed=0, **eargs)
    m = FlatModel(exp, seed=0)
    x, y = exp.x_train[:batch], exp.y_train[:batch]
    m.gradient(x, y)  # trace
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        m.gradient(x, y)
        ts.append(time.perf_counter() - t)
    return m.d, float(np.median(ts))


def _time_transfer(n: int, d: int, reps: int) -> tuple[float, dict[str, Any]]:
    """Median seconds for the server to receive n authenticated d-float gradients over LossyMPI's UDP path
    (loopback; the n senders in one thread, the engine's receive thread concurrently)."""
    import numpy as np

    from lossympi import GradientReceiver, GradientSender

    ranks = list(range(1, n + 1))
    keys = {r: bytes([r]) * 32 for r in ranks}
    g = np.random.default_rng(0).standard_normal(d, dtype=np.float32)
    ts, info = [], {}
    with GradientReceiver(ranks, d, np.float32, deadline=120.0, keys=keys) as rx:
        rate = None if rx.socket_info["rcvbuf_granted"] >= 2 * g.nbytes * n else 400e6
        txs = [GradientSender(rx.address, keys[r], rate, rank=r) for r in ranks]
        try:
            for step in range(1, reps + 2):
                rx.expect(step)
                t = time.perf_counter()
                for tx in txs:
                    tx.send(step, g)
                G, stats = rx.receive(step, copy=False)
                dt = time.perf_counter() - t
                complete = all(x["complete"] for x in stats)
                if step > 1:  # the first step warms the sockets up
                    ts.append(dt)
                info = {"complete": complete, "paced_bytes_per_s": rate,
                        "rcvbuf_granted": rx.socket_info["rcvbuf_granted"]}
        finally:
            for tx in txs:
                tx.close()
    return float(np.median(ts)), info


def run_overhead_sizes(a: argparse.Namespace) -> dict[str, Any]:
    """Per-step overhead of each rule over averaging at sizes d (``--sizes``), time split into
    compute (one worker's gradient of a real model of about that size: workers compute in parallel),
    transfer (the server receiving the n gradients over LossyMPI UDP, loopback) and aggregation (each
    rule on the same synthetic (n, d) gradient matrix)."""
    import numpy as np

    from . import api
    from .cluster.server import set_engine_threads

    sizes = [int(float(x)) for x in a.sizes.split(",") if x.strip()]
    rule_specs = _split_specs(a.rules)
    if "average" not in [r for r, _ in rule_specs]:
        rule_specs.insert(0, ("average", {}))
    rules = [_label(r, p) for r, p in rule_specs]
    os.makedirs(a.out, exist_ok=True)
    set_engine_threads(a.agg_threads)
    out: list[dict[str, Any]] = []
    for size in sizes:
        exp_name, eargs = _model_for(size)
        d, compute = _time_compute(exp_name, eargs, a.batch_size, a.repeat * 3)
        transfer, tinfo = _time_transfer(a.workers, d, a.transfer_steps)
        rng = np.random.default_rng(a.seed)
        center = rng.standard_normal(d, dtype=np.float32)
        G = np.empty((a.workers, d), np.float32)
        for i in range(a.workers):
            G[i] = center + rng.standard_normal(d, dtype=np.float32)
        aggs = {lab: api.Aggregator(r, a.declared_f, **p) for lab, (r, p) in zip(rules, rule_specs)}
        times: dict[str, list[float]] = {r: [] for r in rules}
        for k in range(a.steps):
            _time_rules(aggs, G, k, a.repeat, times)
        del G
        base = float(np.median(times["average"]))
        step_avg = compute + transfer + base
        for r in rules:
            agg = float(np.median(times[r]))
            res = {"d": d, "model": _label(exp_name, eargs), "rule": r, "compute_ms": 1e3 * compute,
                   "transfer_ms": 1e3 * transfer, "agg_ms": 1e3 * agg, "step_ms": 1e3 * (compute + transfer + agg),
                   "overhead_pct": 100.0 * (agg - base) / step_avg, "transfer_complete": tinfo.get("complete")}
            out.append(res)
            print(f"d={d:>9d} {r:>12s}: compute {res['compute_ms']:8.1f} ms, transfer {res['transfer_ms']:8.1f} ms, "
                  f"aggregation {res['agg_ms']:8.1f} ms -> step {res['step_ms']:8.1f} ms "
                  f"({res['overhead_pct']:+.1f}% vs average)", file=sys.stderr, flush=True)
    summary = {"workers": a.workers, "declared_f": a.declared_f, "agg_threads": a.agg_threads, "sizes": sizes,
               "batch_size": a.batch_size, "results": out, "cpus": os.cpu_count()}
    atomic_write_text(os.path.join(a.out, "overhead.json"), json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# Per-step overhead over averaging at n = {a.workers}, declared f = {a.declared_f}",
        "",
        "compute: one worker's gradient (batch " + str(a.batch_size) + ", 1 TensorFlow thread) of a real model of "
        "that size (workers compute in parallel on a cluster); transfer: the server receiving the n "
        "authenticated gradients over LossyMPI's UDP path (loopback, this machine); aggregation: the rule on "
        f"a synthetic ({a.workers}, d) float32 gradient matrix ({a.agg_threads} engine thread(s), best of "
        f"{a.repeat}, median over {a.steps}). step = compute + transfer + aggregation; overhead = the rule's "
        "extra aggregation time over the averaging step. AggregaThor: +19% (Multi-Krum), +43% (Bulyan).",
        "",
        "| d | model (compute) | rule | compute (ms) | transfer (ms) | aggregation (ms) | step (ms) | overhead |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in out:
        lines.append(f"| {r['d']:,} | {r['model']} | {r['rule']} | {r['compute_ms']:.1f} | {r['transfer_ms']:.1f} | "
                     f"{r['agg_ms']:.1f} | {r['step_ms']:.1f} | {r['overhead_pct']:+.1f}% |")
    lines.append("")
    atomic_write_text(os.path.join(a.out, "overhead.md"), "\n".join(lines))
    png = _overhead_sizes_plot(out, os.path.join(a.out, "overhead.png"))
    summary["files"] = {"table": os.path.join(a.out, "overhead.md"), "plot": png}
    return summary


def _time_rules(aggs: dict[str, Any], G: Any, step: int, repeat: int, times: dict[str, list[float]]) -> None:
    """Best of `repeat` aggregations of G by each rule, appended to times[rule]; the order rotates
    with the step, so that no rule always runs first (warm caches)."""
    rules = list(aggs)
    for r in rules[step % len(rules):] + rules[: step % len(rules)]:
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            aggs[r].aggregate(G)
            best = min(best, time.perf_counter() - t)
        times[r].append(best)


def _stacked_plot(out: list[dict[str, Any]], group: str, title, layers, path: str, width: float) -> str:
    """One panel per value of out[*][group]: per rule, bars stacked from `layers` ((label, row -> ms))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(r[group] for r in out))
    fig, axes = plt.subplots(1, len(keys), figsize=(width * len(keys), 3.5), dpi=100, squeeze=False)
    for ax, k in zip(axes[0], keys):
        rs = [r for r in out if r[group] == k]
        names = [r["rule"] for r in rs]
        bottom = [0.0] * len(rs)
        for label, value in layers:
            v = [value(r) for r in rs]
            ax.bar(names, v, bottom=bottom, label=label)
            bottom = [x + y for x, y in zip(bottom, v)]
        ax.set_title(title(k, rs), fontsize=9)
        ax.set_ylabel("ms per step")
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _overhead_sizes_plot(out: list[dict[str, Any]], path: str) -> str:
    layers = [("compute", lambda r: r["compute_ms"]), ("transfer", lambda r: r["transfer_ms"]),
              ("aggregation", lambda r: r["agg_ms"])]
    return _stacked_plot(out, "d", lambda d, rs: f"d = {d:,}", layers, path, 4.5)


def _overhead_plot(out: list[dict[str, Any]], path: str) -> str:
    layers = [("rest of the step", lambda r: r["step_ms"] - r["agg_ms"]), ("aggregation", lambda r: r["agg_ms"])]
    return _stacked_plot(out, "experiment", lambda e, rs: f"{e} (d={rs[0]['d']})", layers, path, 5)


# --------------------------------------------------------------------- cli ---
def _shipped() -> list[str]:
    from .sweep import SHIPPED

    return sorted(os.path.splitext(f)[0] for f in os.listdir(SHIPPED)) if os.path.isdir(SHIPPED) else []


def build_parser(prog: str = "pyagg experiment") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="which", required=True)
    b = sub.add_parser("byzantine", help="rules x attacks at 1 Byzantine out of 19 (accuracy)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--rules", default=DEFAULT_RULES,
                   help="comma-separated rules, each NAME[:K=V[:K=V]] (e.g. zeroing:tau=5:mode=drop)")
    b.add_argument("--attacks", default=DEFAULT_ATTACKS, help="comma-separated attacks, each NAME[:K=V[:K=V]]")
    b.add_argument("--workers", type=int, default=19, help="number of workers n")
    b.add_argument("--byzantine", type=int, default=1,
                   help="Byzantine workers in each attacked run (the 'none' column runs with 0)")
    b.add_argument("--declared-f", type=int, default=None, help="f told to the rules (default: --byzantine)")
    b.add_argument("--experiment", default="digits-mlp", help="model + data (see pyagg train --help)")
    b.add_argument("--experiment-args", default="", metavar="K=V,...", help="the experiment's arguments")
    b.add_argument("--steps", type=int, default=200, help="steps of each run")
    b.add_argument("--batch-size", type=int, default=32, help="mini-batch size per worker")
    b.add_argument("--lr", type=float, default=0.1, help="learning rate")
    b.add_argument("--optimizer", default="sgd", choices=("sgd", "momentum", "nesterov", "adam"),
                   help="server-side optimizer")
    b.add_argument("--eval-every", type=int, default=10, help="evaluate every N steps")
    b.add_argument("--seed", type=int, default=0, help="first seed")
    b.add_argument("--seeds", type=int, default=1, help="runs per cell (seeds seed..seed+N-1)")
    b.add_argument("--out", default="runs/byzantine", help="output directory (one sub-directory per run)")
    b.add_argument("--overwrite", action="store_true",
                   help="re-run every run (default: a run whose completed results are in --out with the same "
                   "configuration is reused, not re-run)")
    r = sub.add_parser("run", help="a sweep from a config file (TOML/YAML): rules x pre-aggregators x attacks x f x "
                       "seeds x learning rates x Dirichlet alpha x experiments, in parallel, resumable",
                       description="Run a sweep described by a config file (see pyagg/sweep.py and the shipped "
                       "configs in pyagg/configs: " + ", ".join(_shipped()) + "). Finished runs are skipped, "
                       "stopped ones resumed: re-run the same command to go on after a stop.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("config", help="sweep file (.toml, or .yaml with PyYAML) or the name of a shipped config")
    r.add_argument("--jobs", type=int, default=None,
                   help="parallel processes (default: the config's [sweep] jobs, else one per core; at most the cores)")
    r.add_argument("--out", default=None, help="output directory (default: the config's [sweep] out)")
    r.add_argument("--overwrite", action="store_true", help="re-run the runs whose results exist")
    r.add_argument("--no-progress", action="store_true", help="no progress display")
    r.add_argument("--dry-run", action="store_true", help="check the config and list the runs, run nothing")
    o = sub.add_parser("overhead", help="time per step of each rule vs averaging at n=19",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    o.add_argument("--rules", default="average,median,krum,multi-krum,bulyan,bulyan-multikrum",
                   help="comma-separated rules, each NAME[:K=V[:K=V]]")
    o.add_argument("--experiments", default="digits-mlp,digits-mlp:hidden=1024,digits-mlp:hidden=4096",
                   help="comma-separated experiments, each NAME[:K=V[:K=V]]")
    o.add_argument("--workers", type=int, default=19, help="number of workers n")
    o.add_argument("--declared-f", type=int, default=4, help="f told to the rules (4: the most Bulyan takes at n=19)")
    o.add_argument("--steps", type=int, default=60, help="steps of each training")
    o.add_argument("--warmup", type=int, default=5, help="first steps left out of the timings")
    o.add_argument("--repeat", type=int, default=3, help="timings of each rule per step (the best counts)")
    o.add_argument("--agg-threads", type=int, default=1, help="engine OpenMP threads (0: OpenMP default)")
    o.add_argument("--lr", type=float, default=0.1, help="learning rate")
    o.add_argument("--seed", type=int, default=0, help="seed of the training")
    o.add_argument("--out", default="runs/overhead", help="output directory")
    o.add_argument("--sizes", default=None, metavar="D,D,...",
                   help="instead of trainings: per-step overhead at these gradient sizes (e.g. 1e5,1e6,1e7), "
                   "split into compute (a real model of about that size), transfer (LossyMPI UDP) and "
                   "aggregation (synthetic gradients)")
    o.add_argument("--batch-size", type=int, default=32, help="mini-batch of the compute timing (--sizes)")
    o.add_argument("--transfer-steps", type=int, default=3, help="timed transfer steps per size (--sizes)")
    o.add_argument("--overwrite", action="store_true", help="replace the trainings already in --out")
    return p


def main(argv: list[str] | None = None, prog: str = "pyagg experiment") -> int:
    a = build_parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    from .cluster.checks import CheckError
    from .cluster.rundir import check_out_path

    if a.which == "run":
        return _main_run(a, prog)
    try:
        check_out_path(a.out)
        if a.which == "byzantine":
            rule_specs, attacks = _split_specs(a.rules), _split_specs(a.attacks)
            check_names(rule_specs, attacks, [(a.experiment, parse_kv(a.experiment_args))])
        elif a.which == "overhead":
            check_names(_split_specs(a.rules), [], _split_specs(a.experiments))
        if a.which == "byzantine":
            exps = [(a.experiment, parse_kv(a.experiment_args))]
        else:
            exps = [] if getattr(a, "sizes", None) else _split_specs(a.experiments)
        from .cluster.checks import check_memory
        from .cluster.workloads import EXPERIMENTS

        for e, p in exps:  # the memory a run of each experiment needs, before any starts
            if e in EXPERIMENTS:
                check_memory(TrainConfig(experiment=e, experiment_args=p, workers=a.workers))
    except (CheckError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    from .cluster import stop as _stop
    from .cluster.model import setup_tf

    setup_tf(1)
    try:
        if a.which == "byzantine":
            s = run_byzantine(a)
        elif getattr(a, "sizes", None):
            s = run_overhead_sizes(a)
        else:
            s = run_overhead(a)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"[pyagg] interrupted: finished runs are kept in {a.out} (re-run the same command to go on)",
              file=sys.stderr)
        return 130
    finally:
        _stop.restore()
    print(open(s["files"]["table"]).read())
    print(f"[pyagg] table: {s['files']['table']}\n[pyagg] plot:  {s['files']['plot']}", file=sys.stderr)
    return 0


def _main_run(a: argparse.Namespace, prog: str) -> int:
    from .cluster import stop as _stop
    from .sweep import check_sweep, expand, load_sweep, run_sweep

    try:
        doc = load_sweep(a.config)
        if a.out:
            doc["sweep"]["out"] = a.out
        runs = expand(doc)
        check_sweep(runs)
    except (ValueError, TypeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if a.dry_run:
        for r in runs:
            print(r["cfg"].out, json.dumps(r["point"], default=str))
        print(f"[pyagg] {len(runs)} runs", file=sys.stderr)
        return 0
    _stop.install(raise_now=True)  # SIGTERM as Ctrl-C: stop the runs in flight cleanly, keep what is done
    try:
        s = run_sweep(a.config, jobs=a.jobs, out=a.out, progress=not a.no_progress, overwrite=a.overwrite)
    except KeyboardInterrupt:
        out = a.out or doc["sweep"].get("out")
        print(f"[pyagg] sweep stopped: finished runs and partial results are in {out}; the same command "
              "goes on from there", file=sys.stderr)
        return 130
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        _stop.restore()
    print(open(s["files"]["table"]).read())
    print(f"[pyagg] table: {s['files']['table']}", file=sys.stderr)
    for h in s["files"]["heatmaps"]:
        print(f"[pyagg] heatmap: {h}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
