"""Unit tests of the training cluster's pieces (no training runs, no MPI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pyagg.cluster import byzantine as bz
from pyagg.cluster.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from pyagg.cluster.config import TrainConfig, parse_pre
from pyagg.cluster.data import BatchSampler, batch_indices, make_shards
from pyagg.cluster.workloads import load_experiment, parse_kv
from pyagg.cluster.metrics import MetricsCSV, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------------------------- data ---
def test_iid_shards_partition():
    y = np.arange(1000) % 10
    shards = make_shards(y, 7, "iid", seed=3)
    allidx = np.concatenate(shards)
    assert sorted(allidx.tolist()) == list(range(1000))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    again = make_shards(y, 7, "iid", seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(shards, again))


def test_dirichlet_shards_are_skewed_and_cover():
    y = np.repeat(np.arange(10), 100)
    shards = make_shards(y, 5, "dirichlet", alpha=0.1, seed=0, min_size=8)
    assert sorted(np.concatenate(shards).tolist()) == list(range(1000))
    assert min(map(len, shards)) >= 8
    # with alpha=0.1 most workers see few classes: the largest class share per worker is high
    shares = [np.bincount(y[s], minlength=10).max() / len(s) for s in shards]
    assert np.mean(shares) > 0.3
    with pytest.raises(ValueError, match="alpha"):
        make_shards(y, 5, "dirichlet", alpha=0.0)


def test_batches_are_pure_functions_of_seed_worker_step():
    shard = np.arange(100, 200)
    s = BatchSampler(shard, 32, seed=1, worker=2)
    seq = [s.indices(t) for t in range(10)]
    for t in (7, 0, 9, 3):  # any order, fresh sampler or cached: the same batch
        assert np.array_equal(batch_indices(shard, 32, 1, 2, t), seq[t])
    assert all(len(b) == 32 and set(b) <= set(shard) for b in seq)
    # an epoch (3 batches of 32 from 100) has no repeats
    assert len(set(np.concatenate(seq[:3]).tolist())) == 96
    assert not np.array_equal(batch_indices(shard, 32, 1, 3, 0), seq[0])
    small = BatchSampler(np.arange(5), 8, 0, 0).indices(4)
    assert len(small) == 8 and set(small) <= set(range(5))


# ---------------------------------------------------------------- attacks ---
def test_choose_byzantine_is_seeded():
    a = bz.choose_byzantine(19, 3, seed=5)
    assert a == bz.choose_byzantine(19, 3, seed=5) and len(set(a)) == 3 and all(0 <= i < 19 for i in a)
    assert bz.choose_byzantine(5, 0, 1) == []
    with pytest.raises(ValueError):
        bz.choose_byzantine(5, 6, 0)


def test_parse_attack_kinds_and_errors():
    assert bz.parse_attack("sign-flip", {"scale": 3}).kind == "gradient"
    assert bz.parse_attack("label_flip").kind == "data"
    assert bz.parse_attack("crash").param("at_step") == 5
    assert bz.parse_attack("bad_dtype").kind == "bad_input"
    assert bz.parse_attack(None).kind == "none"
    with pytest.raises(ValueError, match="unknown attack"):
        bz.parse_attack("nope")
    with pytest.raises(ValueError, match="unknown parameter"):
        bz.parse_attack("gaussian", {"sgima": 1})
    with pytest.raises(ValueError, match="rate"):
        bz.parse_attack("lossy", {"rate": 2})


def test_data_attacks():
    x = np.ones((4, 3), np.float32)
    y = np.array([0, 1, 9, 3], np.int32)
    _, y2 = bz.poison_batch(bz.parse_attack("label_flip"), x, y, "sparse_categorical_crossentropy", 10)
    assert y2.tolist() == [9, 8, 0, 6]
    x2, _ = bz.poison_batch(bz.parse_attack("corrupt_inputs"), x, y, "sparse_categorical_crossentropy", 10)
    assert np.all(x2 == np.float32(-1e12))
    _, yb = bz.poison_batch(bz.parse_attack("label_flip"), x, np.array([0, 1], np.float32), "binary_crossentropy", 2)
    assert yb.tolist() == [1, 0]


def test_gradient_attack_rows_vary_per_step():
    H = np.random.default_rng(0).standard_normal((6, 10)).astype(np.float32)
    spec = bz.parse_attack("gaussian")
    a = bz.byzantine_rows(spec, H, 2, 8, seed=0, step=1)
    b = bz.byzantine_rows(spec, H, 2, 8, seed=0, step=2)
    assert a.shape == (2, 10) and a.dtype == np.float32 and not np.array_equal(a, b)
    assert np.array_equal(a, bz.byzantine_rows(spec, H, 2, 8, seed=0, step=1))
    alie = bz.byzantine_rows(bz.parse_attack("alie"), H, 2, 8, seed=0, step=0)
    assert np.all(np.isfinite(alie))


# ------------------------------------------------------------- checkpoint ---
def test_checkpoint_roundtrip_and_corruption(tmp_path):
    p = np.arange(10, dtype=np.float32)
    save_checkpoint(str(tmp_path), 41, {"params": p}, {"fingerprint": {"a": 1}})
    meta, arrays = load_checkpoint(str(tmp_path))
    assert meta["step"] == 41 and meta["fingerprint"] == {"a": 1}
    assert np.array_equal(arrays["params"], p)
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []
    # a flipped byte is detected (hash or zip CRC), never silently loaded
    path = tmp_path / "checkpoint.npz"
    raw = bytearray(path.read_bytes())
    i = raw.find(p.tobytes())
    raw[i + 5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError):
        load_checkpoint(str(tmp_path))
    assert load_checkpoint(str(tmp_path / "nothing")) is None


def test_atomic_write_replaces(tmp_path):
    f = tmp_path / "s.json"
    atomic_write_text(str(f), json.dumps({"a": 1}))
    atomic_write_text(str(f), json.dumps({"a": 2}))
    assert json.loads(f.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["s.json"]


def test_metrics_resume_drops_rows_after_checkpoint_and_torn_line(tmp_path):
    path = str(tmp_path / "metrics.csv")
    m = MetricsCSV(path, ["step", "loss"])
    for s in range(6):
        m.write({"step": s, "loss": 1.0 / (s + 1)})
    m.close()
    with open(path, "a") as fh:
        fh.write("6,0.1")  # torn: no newline
    m = MetricsCSV(path, ["step", "loss"], resume_step=3)
    m.write({"step": 4, "loss": 0.5})
    m.close()
    fields, rows = read_metrics(path)
    assert fields == ["step", "loss"]
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------- config ---
def test_parse_helpers():
    assert parse_kv("a=1,b=0.5,c=x,d=true,e-f=none") == {"a": 1, "b": 0.5, "c": "x", "d": True, "e_f": None}
    assert parse_pre(["nnm", "bucketing:s=2", "clipping:tau=5,nnm"]) == [
        "nnm", ("bucketing", {"s": 2}), ("clipping", {"tau": 5}), "nnm"]
    with pytest.raises(ValueError):
        parse_kv("novalue")
    cfg = TrainConfig(workers=5, byzantine=1)
    assert cfg.f == 1
    cfg.declared_f = 2
    assert cfg.f == 2
    with pytest.raises(ValueError, match="byzantine"):
        TrainConfig(workers=3, byzantine=4).validate()
    with pytest.raises(ValueError, match="fill"):
        TrainConfig(fill="bogus").validate()


def test_experiment_plugin_by_module_path():
    exp = load_experiment("pyagg.cluster.workloads:synthetic", seed=0, dim=7, task="linear", n_train=64, n_test=16)
    assert exp.x_train.shape == (64, 7) and exp.metric == "r2" and exp.num_classes is None
    with pytest.raises(ValueError, match="unknown experiment"):
        load_experiment("nope")
    with pytest.raises(ValueError, match="cannot import"):
        load_experiment("no_such_module_xyz:f")


# -------------------------------------------------------------------- cli ---
def _run(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_cli_help():
    r = _run("-m", "pyagg.train", "--help")
    assert r.returncode == 0, r.stderr
    for opt in ("--workers", "--byzantine", "--declared-f", "--rule", "--rule-args", "--pre", "--attack",
                "--attack-args", "--transport", "--deadline", "--fill", "--drop-rate", "--launcher", "--steps",
                "--batch-size", "--lr", "--optimizer", "--eval-every", "--checkpoint-every", "--resume", "--seed",
                "--out", "--experiment"):
        assert opt in r.stdout, opt
    r = _run("-m", "pyagg.cli", "experiment", "--help")
    assert r.returncode == 0 and "byzantine" in r.stdout and "overhead" in r.stdout
    r = _run("-m", "pyagg.cli")
    assert r.returncode == 2 and "COMMAND" in r.stderr


def test_cli_rejects_bad_arguments():
    r = _run("-m", "pyagg.train", "--attack", "nope", "--steps", "1")
    assert r.returncode == 2 and "unknown attack" in r.stderr
    r = _run("-m", "pyagg.train", "--workers", "3", "--byzantine", "1", "--rule", "bulyan", "--steps", "1",
             "--out", "/tmp/pyagg-test-bound")
    assert r.returncode == 2 and "bulyan" in r.stderr and "needs n" in r.stderr
