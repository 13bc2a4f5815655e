"""Config-driven sweeps (issue 12, item 4): `pyagg experiment run sweep.toml`.

A small config run with 2 processes: every run's results, the mean +- std table (checked against the
per-run rows), the worst-case attack per rule, the heatmaps; re-running skips finished runs (their
files untouched) and re-runs only what is missing; typos are refused before anything runs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest

from pyagg.sweep import expand, load_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """
[sweep]
name = "tiny"
jobs = 2

[base]
workers = 5
steps = 15
eval_every = 5
checkpoint_every = 5
optimizer = "momentum"

[grid]
rule = ["average", "median"]
attack = ["none", "sign_flip:scale=10"]
byzantine = [1]
alpha = ["iid", 0.5]
seed = [0, 1]
"""


def _run(*args, cwd=ROOT, timeout=400):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="2",
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pyagg.cli", "experiment", "run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_expand_semantics(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text(CONFIG.replace('byzantine = [1]', 'byzantine = [1, 2]\ndeclared_f = ["actual", 2]'))
    runs = expand(load_sweep(str(p)))
    # grid points: rule 2 x (f, declared) in {(1,1), (1,2), (2,2)} (declared "actual" = 2 is the same point
    # as 2 at f=2) x alpha 2 x seed 2, for each of the 2 attacks
    assert len(runs) == 2 * (2 * 3 * 2 * 2)
    # attack "none" runs with 0 Byzantine workers: points that differ only in the actual f share one run
    none = [r for r in runs if r["point"]["attack"] == "none"]
    assert len(none) == 24 and all(r["cfg"].byzantine == 0 for r in none)
    assert len({r["cfg"].out for r in none}) == 2 * 2 * 2 * 2  # rule x declared f {1, 2} x alpha x seed
    assert sum(not r["alias"] for r in none) == 16
    att = [r for r in runs if r["point"]["attack"] != "none"]
    assert not any(r["alias"] for r in att) and len(att) == 24
    assert {(r["cfg"].byzantine, r["cfg"].f) for r in att} == {(1, 1), (1, 2), (2, 2)}
    c = [r["cfg"] for r in att if r["point"]["alpha"] == 0.5][0]
    assert c.shards == "dirichlet" and c.alpha == 0.5 and c.attack == "sign_flip" and c.attack_args == {"scale": 10}
    assert len({r["cfg"].out for r in runs if not r["alias"]}) == sum(not r["alias"] for r in runs)


@pytest.mark.parametrize("text,msg", [
    ('[grid]\nrule = ["krumm"]\n', "did you mean 'krum'"),
    ('[grid]\nattack = ["gausian"]\n', "did you mean 'gaussian'"),
    ('[grid]\nrules = ["krum"]\n', "did you mean 'rule'"),
    ('[base]\nworkerz = 3\n', "did you mean 'workers'"),
    ('[grid]\nrule = "krum"\n', "must be a non-empty list"),
])
def test_bad_configs_are_refused_before_running(tmp_path, text, msg):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    r = _run(str(p), "--out", str(tmp_path / "o"), timeout=120)
    assert r.returncode == 2 and msg in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.timeout(900)
def test_small_sweep_two_processes_resume_and_heatmaps(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CONFIG)
    out = tmp_path / "sweep"
    r = _run(str(cfg), "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.load(open(out / "results.json"))
    rows = res["runs"]
    assert len(rows) == 16 and all(x["status"] == "done" for x in rows), [x["status"] for x in rows]
    # mean +- std per cell (seeds pooled), recomputed from results.csv
    with open(out / "results.csv") as fh:
        csv_rows = list(csv.DictReader(fh))
    for cell in res["cells"]:
        xs = [float(x["final_accuracy"]) for x in csv_rows
              if all(x[k] == str(cell[k]) for k in ("rule", "attack", "alpha"))]
        assert len(xs) == 2
        m = sum(xs) / 2
        sd = math.sqrt(sum((x - m) ** 2 for x in xs))  # sample std of 2 values: divide by n - 1 = 1
        assert cell["mean"] == pytest.approx(m) and cell["std"] == pytest.approx(sd)
    # worst-case attack per rule (one attack here, so it is that one) and the heatmaps
    assert {w["attack"] for w in res["worst_case"]} == {"sign_flip:scale=10"}
    assert len(res["worst_case"]) == 2 * 2  # rule x alpha
    heat = res["files"]["heatmaps"]
    assert any("heatmap_rule_attack" in h for h in heat) and all(os.path.getsize(h) > 1000 for h in heat)
    md = (out / "results.md").read_text()
    assert "±" in md and "Worst-case attack" in md
    # average is poisoned by sign flips, the median is not (same seeds, iid)
    def mean(rule, attack, alpha="iid"):
        return [c["mean"] for c in res["cells"] if c["rule"] == rule and c["attack"] == attack
                and c["alpha"] == alpha][0]
    assert mean("median", "sign_flip:scale=10") > mean("average", "sign_flip:scale=10")

    # resume: nothing re-runs, no run's files change
    stamps = {x["out"]: os.stat(os.path.join(x["out"], "summary.json")).st_mtime_ns for x in rows}
    victim = rows[3]["out"]
    os.unlink(os.path.join(victim, "summary.json"))  # as if the sweep had been stopped in that run
    r = _run(str(cfg), "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr[-4000:]
    res2 = json.load(open(out / "results.json"))
    status = {x["out"]: x["status"] for x in res2["runs"]}
    assert status.pop(victim) == "done"
    assert set(status.values()) == {"reused"}
    for o in status:
        assert os.stat(os.path.join(o, "summary.json")).st_mtime_ns == stamps[o]
    assert [c["mean"] for c in res2["cells"]] == pytest.approx([c["mean"] for c in res["cells"]], abs=0.05)
