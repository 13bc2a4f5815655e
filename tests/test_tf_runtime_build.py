"""The TF op compiled at run time against the installed TensorFlow (pyagg/tf_bridge/_build.py).

What a wheel install relies on: no op library next to the package, the op is
compiled into a per-user cache (per TensorFlow version and ABI) at first use
or by ``python -m pyagg.tf_bridge build``, and is then bit-identical to
:func:`pyagg.aggregate`. Missing compiler / TensorFlow give one message with
the command that fixes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import pyagg  # noqa: E402
from pyagg import tf_bridge  # noqa: E402
from pyagg.tf_bridge import _build  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def wheel_like(monkeypatch, tmp_path):
    """As after `pip install .`: no op built next to the package, an empty cache."""
    info = tmp_path / "_build_info.json"
    info.write_text(json.dumps({"built": False, "reason": "PYAGG_BUILD_TF=OFF at build time"}))
    monkeypatch.setattr(tf_bridge, "_INFO_FILE", info)
    monkeypatch.setattr(tf_bridge, "_ops", None)
    monkeypatch.setattr(tf_bridge, "_loaded_path", None)
    monkeypatch.setenv("PYAGG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PYAGG_TF_AUTOBUILD", raising=False)
    return tmp_path / "cache"


FIRST_USE = r"""
import json, sys
from pathlib import Path
import numpy as np
import tensorflow as tf
import pyagg
from pyagg import tf_bridge
from pyagg.tf_bridge import _build
tf_bridge._INFO_FILE = Path(sys.argv[1])       # as after `pip install .`: nothing built next to the package
res = {"built_before": tf_bridge.is_built()}
rng = np.random.default_rng(3)
G = rng.standard_normal((9, 1000)).astype(np.float32)
out = tf_bridge.aggregate(tf.constant(G), "multi-krum", f=2, m=4)
res["eager_equal"] = bool(np.array_equal(out.numpy(), pyagg.aggregate(G, "multi-krum", f=2, m=4)))
G64 = rng.standard_normal((7, 300))
fn = tf.function(lambda x: tf_bridge.aggregate(x, "bulyan", f=1))
res["graph_equal"] = bool(np.array_equal(fn(tf.constant(G64)).numpy(), pyagg.aggregate(G64, "bulyan", f=1)))
lib = Path(tf_bridge.loaded_library())
res["lib"] = str(lib)
mtime = lib.stat().st_mtime_ns
res["cached_again"] = _build.build(tf, quiet=True) == lib and lib.stat().st_mtime_ns == mtime
res["built_after"] = tf_bridge.is_built()
res["tf"] = tf.__version__
print(json.dumps(res))
"""


def test_first_use_compiles_into_the_cache_and_equals_the_engine(tmp_path):
    # A fresh process: TF registers an op once per process, so the library
    # compiled here cannot be loaded beside the in-package one of this process.
    info = tmp_path / "_build_info.json"
    info.write_text(json.dumps({"built": False, "reason": "PYAGG_BUILD_TF=OFF at build time"}))
    env = dict(os.environ, PYAGG_CACHE_DIR=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYAGG_TF_AUTOBUILD", None)
    r = subprocess.run([sys.executable, "-c", FIRST_USE, str(info)], capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "compiling the TF op for TensorFlow" in r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["built_before"] is False and res["built_after"] is True
    assert res["eager_equal"] and res["graph_equal"] and res["cached_again"]
    lib = Path(res["lib"])
    assert (tmp_path / "cache") in lib.parents
    assert lib.parent.parent.name == f"tf-{res['tf']}" and lib.parent.name.startswith("cxx11abi1-")
    facts = json.loads((lib.parent / "build.json").read_text())
    assert facts["tensorflow_version"] == res["tf"] and facts["built"] is True


def test_autobuild_off_names_the_command(wheel_like, monkeypatch):
    monkeypatch.setenv("PYAGG_TF_AUTOBUILD", "0")
    with pytest.raises(tf_bridge.TFBridgeError) as e:
        tf_bridge.load()
    msg = str(e.value)
    assert "pyagg TF bridge not built" in msg and "python -m pyagg.tf_bridge build" in msg
    assert not list(wheel_like.glob("**/*.so"))


def test_missing_compiler_is_one_clear_message(wheel_like, monkeypatch, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(tf_bridge.TFBridgeError) as e:
        tf_bridge.load()
    msg = str(e.value)
    assert "no C++ compiler found" in msg
    assert msg.rstrip().endswith("-m pyagg.tf_bridge build")
    assert "\n" not in msg


def test_compile_error_is_reported_with_the_compiler_output(wheel_like, monkeypatch, tmp_path):
    fake = tmp_path / "bin" / "c++"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'fatal: pretend compiler failure' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    want = r"(?s)failed \(exit 3\).*pretend compiler failure.*pyagg.tf_bridge build"
    with pytest.raises(_build.BuildError, match=want):
        _build.build(tf, quiet=True)
    assert not list(wheel_like.glob("**/*.so"))  # no half-written library left in the cache


def test_cli_without_tensorflow(tmp_path):
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "from pyagg.tf_bridge.__main__ import main\n"
        "sys.exit(main(['build']))\n"
    )
    env = dict(os.environ, PYAGG_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 1
    assert "TensorFlow is not importable" in r.stderr and "pip install tensorflow-cpu" in r.stderr
    assert "-m pyagg.tf_bridge build" in r.stderr


def test_cli_info_reports_the_cache(tmp_path):
    env = dict(os.environ, PYAGG_CACHE_DIR=str(tmp_path / "c"))
    r = subprocess.run([sys.executable, "-m", "pyagg.tf_bridge", "info"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["cache"] == str(tmp_path / "c" / "tf_ops")
    assert info["installed_tensorflow"] == tf.__version__
