"""Everything a run can be refused for, checked before TensorFlow loads or any process starts.

Names (rules, pre-aggregators, attacks, experiments, their parameters) get a
did-you-mean suggestion (:func:`did_you_mean`, difflib); bounds (the rule's
n >= ..., f <= n, an attack that needs Byzantine workers) name the values;
the memory a run needs is estimated and compared with what the machine has
(:func:`estimate_memory`). Nothing here imports TensorFlow: a typo costs
milliseconds, not a TensorFlow import or a cluster start.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from typing import Any

__all__ = ["did_you_mean", "check_name", "check_rule", "check_pre", "check_attack", "check_experiment",
           "check_config", "estimate_memory", "available_memory", "ensure_cwd_importable", "CheckError"]


class CheckError(ValueError):
    """A configuration that cannot run (bad name, bound, memory)."""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """``"; did you mean 'krum'?"`` for the closest choice(s), or an empty string."""
    close = difflib.get_close_matches(str(name), list(choices), n=2, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


def check_name(kind: str, name: str, choices: list[str] | tuple[str, ...]) -> None:
    """Raise CheckError naming ``name``, the closest choice and every choice, when ``name`` is not a choice."""
    if name not in choices:
        raise CheckError(f"unknown {kind} {name!r}{did_you_mean(name, choices)} (known: {', '.join(choices)})")


def _check_params(kind: str, name: str, params: dict[str, Any], accepted: list[str]) -> None:
    for k in params:
        if k not in accepted:
            raise CheckError(f"{kind} {name!r}: unknown parameter {k!r}{did_you_mean(k, accepted)} "
                             f"(accepted: {', '.join(accepted) or 'none'})")


def check_rule(name: str, params: dict[str, Any] | None = None) -> None:
    from .. import api

    rules = api.rules()
    check_name("rule", name, list(rules))
    _check_params("rule", name, params or {}, list(rules[name]["params"]))


def check_pre(pre: list[Any]) -> None:
    from .. import api

    pres = api.pre_aggregators()
    for item in pre or []:
        name, params = (item, {}) if isinstance(item, str) else (item[0], dict(item[1]))
        check_name("pre-aggregator", name, list(pres))
        _check_params("pre-aggregator", name, params, list(pres[name]["params"]))


def check_attack(name: str, params: dict[str, Any] | None = None) -> None:
    from .byzantine import ALL_ATTACKS, parse_attack

    check_name("attack", (name or "none").replace("-", "_"), list(ALL_ATTACKS))
    try:
        parse_attack(name, params)
    except ValueError as exc:
        raise CheckError(str(exc)) from None


def ensure_cwd_importable() -> str:
    """Put the current directory first on ``sys.path`` (``--experiment mymod:factory`` finds ./mymod.py
    however pyagg was started: console script, ``-m``, mpiexec rank)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path[:1]:
        sys.path.insert(0, cwd)
    return cwd


def check_experiment(spec: str) -> None:
    """A built-in name, or ``module:factory`` whose module can be found (not imported: it may load TF)."""
    from .workloads import EXPERIMENTS

    if spec in EXPERIMENTS:
        return
    if ":" not in spec:
        raise CheckError(f"unknown experiment {spec!r}{did_you_mean(spec, list(EXPERIMENTS))} (built in: "
                         f"{', '.join(EXPERIMENTS)}; or 'module:factory', the module found from the current "
                         "directory or PYTHONPATH)")
    mod, attr = spec.split(":", 1)
    if not mod or not attr:
        raise CheckError(f"experiment {spec!r}: expected 'module:factory'")
    ensure_cwd_importable()
    try:
        found = importlib.util.find_spec(mod)
    except (ImportError, ValueError) as exc:
        found = None
        why = f" ({exc})"
    else:
        why = ""
    if found is None:
        raise CheckError(f"experiment {spec!r}: no module {mod!r} in the current directory ({os.getcwd()}) or on "
                         f"PYTHONPATH{why}")


# ------------------------------------------------------------------ memory ---
def available_memory() -> int | None:
    """Bytes this process may still use: MemAvailable, capped by a cgroup limit; None when unknown."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    for path, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                       ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(path) as fh:
                raw = fh.read().strip()
            if raw == "max":
                continue
            limit = int(raw)
            with open(used) as fh:
                cur = int(fh.read().strip())
            if limit < (1 << 60):
                free = max(limit - cur, 0)
                avail = free if avail is None else min(avail, free)
        except (OSError, ValueError):
            continue
    return avail


def estimate_memory(cfg: Any, d: int | None = None, data_bytes: int | None = None) -> dict[str, int]:
    """Bytes a run needs, by part, from the configuration alone (before anything is built).

    ``d`` and ``data_bytes`` come from :func:`pyagg.cluster.workloads.describe` when not given. The
    model: every process holds the data (train + test) and its model (parameters, gradient and a few
    activation-sized buffers ~ 4 d floats, plus TensorFlow's own ~400 MB); the server also holds the
    (n, d) gradient matrix, the rule's work space (the pairwise-distance rules hold another (n, d)
    copy) and the optimizer state; the local launcher computes all n gradients in one function (an
    (n, d) Jacobian plus the per-worker batch activations).
    """
    from .workloads import describe

    if d is None or data_bytes is None:
        info = describe(cfg.experiment, **cfg.experiment_args)
        d = info["d"] if d is None else d
        data_bytes = info["data_bytes"] if data_bytes is None else data_bytes
    n = int(cfg.workers)
    f4 = 4
    tf_base = 400 << 20
    model = 4 * d * f4
    opt = {"sgd": 0, "momentum": 1, "nesterov": 1, "adam": 2}.get(cfg.optimizer, 2) * d * f4
    server = n * d * f4 * 2 + opt + model + data_bytes + tf_base
    if cfg.launcher == "local":
        workers = n * d * f4 * 2  # the batched per-worker gradients and their copies as rows
        parts = {"server": server, "workers (in-process)": workers}
    else:
        parts = {"server": server, "workers": n * (model + data_bytes + tf_base)}
    parts["total"] = sum(parts.values())
    return parts


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(b) < 1024 or unit == "TiB":
            return f"{b:.1f} {unit}" if unit != "B" else f"{int(b)} B"
        b /= 1024
    return f"{b:.1f} TiB"


HEADROOM = 0.85
"""Fraction of the available memory a run may plan to use (the estimate is a model, not a measure)."""


def check_memory(cfg: Any) -> dict[str, int] | None:
    """Refuse (CheckError with the figures) a run that needs more memory than the machine has."""
    if os.environ.get("PYAGG_SKIP_MEMORY_CHECK"):
        return None
    need = estimate_memory(cfg)
    avail = available_memory()
    if avail is not None and need["total"] > HEADROOM * avail and not cfg.hostfile:
        parts = ", ".join(f"{k} {_fmt_bytes(v)}" for k, v in need.items() if k != "total")
        raise CheckError(
            f"this run needs about {_fmt_bytes(need['total'])} of memory ({parts}) but this machine has "
            f"{_fmt_bytes(avail)} available ({int(HEADROOM * 100)}% of it usable): use fewer workers, a smaller "
            "model or data set (e.g. synthetic "
            "n_train=...), or the MPI launcher across hosts (--hostfile); PYAGG_SKIP_MEMORY_CHECK=1 skips this check")
    return need


# ------------------------------------------------------------------- config ---
def check_config(cfg: Any, memory: bool = True) -> None:
    """Every check of a run, cheapest first; raises CheckError (a ValueError)."""
    try:
        cfg.validate()
    except CheckError:
        raise
    except ValueError as exc:
        raise CheckError(str(exc)) from None
    check_experiment(cfg.experiment)
    check_rule(cfg.rule, cfg.rule_args)
    check_pre(cfg.pre)
    check_attack(cfg.attack, cfg.attack_args)
    if (cfg.attack or "none") != "none" and cfg.byzantine == 0:
        raise CheckError(f"--attack {cfg.attack} needs Byzantine workers to run it: add --byzantine N "
                         "(with --byzantine 0 every worker is honest and the attack would be ignored)")
    from .server import make_aggregator

    try:
        make_aggregator(cfg, cfg.workers)
    except ValueError as exc:
        raise CheckError(str(exc)) from None
    if memory and cfg.experiment in _builtin():
        check_memory(cfg)


def _builtin() -> tuple[str, ...]:
    from .workloads import EXPERIMENTS

    return tuple(EXPERIMENTS)
