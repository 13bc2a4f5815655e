"""A user's install, end to end (slow): fresh venv, `pip install ".[tf]"` twice, isolation on.

The source tree is copied (tracked and untracked-but-not-ignored files, as a
fresh clone has them) and installed twice from the same copy with pip's
default build isolation: the second build must not trip over anything the
first left behind (a CMake cache pointing into the first, deleted, isolated
build environment). Then, in that venv, the TF op (compiled at first use
against the installed TensorFlow, into a private cache) must equal
pyagg.aggregate bit for bit, and the wheel must hold no native tests or
benchmarks and be portable (no -march=native).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

CHECK = r"""
import json, sys
import numpy as np
import tensorflow as tf
import pyagg
from pyagg import tf_bridge
info = pyagg.build_info()
rng = np.random.default_rng(5)
G = rng.standard_normal((11, 4096)).astype(np.float32)
same = {}
for rule, f, p in [("krum", 2, {}), ("bulyan", 2, {}), ("median", 3, {}), ("multi-krum", 2, {"m": 5})]:
    op = tf_bridge.aggregate(tf.constant(G), rule, f, **p).numpy()
    same[rule] = bool(np.array_equal(op, pyagg.aggregate(G, rule, f, **p)))
print(json.dumps({"info": info, "same": same, "lib": tf_bridge.loaded_library(), "pkg": pyagg.__file__}))
"""


def _copy_tree(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


@pytest.mark.skipif(shutil.which("git") is None, reason="git not found")
def test_fresh_venv_pip_install_tf_twice(tmp_path):
    src, venv = tmp_path / "src", tmp_path / "venv"
    _copy_tree(src)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYAGG_", "VIRTUAL_ENV"))}
    env["PYAGG_CACHE_DIR"] = str(tmp_path / "cache")
    env["PYAGG_WITH_CUDA"] = os.environ.get("PYAGG_WITH_CUDA", "OFF")  # the CUDA backend is not what this tests
    times = []
    for attempt in (1, 2):
        t0 = time.perf_counter()
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", f"{src}[tf]"], env=env, cwd=tmp_path,
                           capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        assert r.returncode == 0, f"install #{attempt} failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    print(f"pip install '.[tf]' (isolated): {times[0]:.0f} s, then {times[1]:.0f} s")
    r = subprocess.run([str(py), "-c", CHECK], env=dict(env, TF_CPP_MIN_LOG_LEVEL="2"), cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-6000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert str(venv) in out["pkg"]  # the installed package, not the source tree
    assert str(tmp_path / "cache") in out["lib"]  # the op was compiled at run time into the cache
    assert out["same"] == {"krum": True, "bulyan": True, "median": True, "multi-krum": True}, out["same"]
    assert out["info"]["native_arch"] is False and out["info"]["cpu_isas"][0] in ("base", "native")
    site = Path(out["pkg"]).parent.parent
    assert not list(site.glob("pyagg/**/cpu_bench*")) and not list(site.glob("pyagg/**/test_*"))
    assert (site / "pyagg" / "include" / "pyagg" / "rules.h").is_file()
    assert (site / "pyagg" / "tf_bridge" / "aggregate_op.cc").is_file()
