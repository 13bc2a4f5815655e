"""Run-time build of the TF op library against the TensorFlow installed *now*.

A wheel (``pip install .``, build isolation on) cannot compile the op: pip's
isolated build environment has no TensorFlow, and TensorFlow's C++ ABI changes
with its version, so the op must match the TensorFlow the user runs. This
module compiles ``aggregate_op.cc`` (shipped in the package) with that
TensorFlow's own compile and link flags (``tf.sysconfig``), against the engine
library and headers that ship with pyagg, and caches the result per
TensorFlow version, C++ ABI and build inputs::

    <cache>/tf-<tf version>/<abi>-<key>/_pyagg_tf_ops.so (+ build.json)

``<cache>`` is ``$PYAGG_CACHE_DIR``, else ``$XDG_CACHE_HOME/pyagg``, else
``~/.cache/pyagg``; ``<key>`` hashes everything the library depends on (pyagg
version, the op's source, the engine library file, the headers, the TF flags,
the compiler), so a reinstall or upgrade of either side builds a new one.

Entry points: ``python -m pyagg.tf_bridge build`` (explicit), or the first use
of :func:`pyagg.tf_bridge.load` (unless ``PYAGG_TF_AUTOBUILD=0``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .._ext import engine_build_info

#: The one command that builds (or rebuilds) the op for the running TensorFlow.
BUILD_COMMAND = f"{Path(sys.executable).name} -m pyagg.tf_bridge build"
LIBRARY = "_pyagg_tf_ops.so"
_HERE = Path(__file__).resolve().parent
_PKG = _HERE.parent
_SOURCE = _HERE / "aggregate_op.cc"
_TF_DISTS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "tf-nightly", "tf-nightly-cpu")


class BuildError(ImportError):
    """The op library cannot be built here (no compiler, no TensorFlow, compile error)."""


def cache_root() -> Path:
    """Where built op libraries are kept (see the module docstring)."""
    if os.environ.get("PYAGG_CACHE_DIR"):
        return Path(os.environ["PYAGG_CACHE_DIR"]) / "tf_ops"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pyagg" / "tf_ops"


def autobuild_enabled() -> bool:
    """False when ``PYAGG_TF_AUTOBUILD`` is 0/off/false/no (then only the explicit command builds)."""
    return os.environ.get("PYAGG_TF_AUTOBUILD", "1").strip().lower() not in ("0", "off", "false", "no")


def installed_tf_version() -> str | None:
    """The installed TensorFlow's version from package metadata, without importing it."""
    from importlib import metadata

    for dist in _TF_DISTS:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def cached_for_version(version: str) -> list[Path]:
    """Cached libraries built for TensorFlow `version` (any key)."""
    d = cache_root() / f"tf-{version}"
    return sorted(d.glob(f"*/{LIBRARY}")) if d.is_dir() else []


def _engine_library() -> Path:
    for name in ("libpyagg_engine.so", "libpyagg_engine.dylib"):
        p = _PKG / name
        if p.is_file():
            return p
    raise BuildError(f"pyagg's engine library is missing from {_PKG} (pyagg is not built; reinstall pyagg)")


def _include_dir() -> Path:
    inc = _PKG / "include"
    if not (inc / "pyagg" / "rules.h").is_file() or not (inc / "pyagg" / "config.h").is_file():
        raise BuildError(
            f"pyagg's engine headers are missing from {inc} (built by an older setup.py?); reinstall pyagg "
            "(pip install .) or rebuild it in place (scripts/dev_build.sh)"
        )
    return inc


def _compiler() -> str:
    for cand in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cand:
            path = shutil.which(shlex.split(cand)[0])
            if path:
                return path
    raise BuildError(
        "pyagg TF op: no C++ compiler found (CXX, c++, g++ or clang++) to compile the op for the installed "
        f"TensorFlow; install one (e.g. apt-get install g++) and run: {BUILD_COMMAND}"
    )


def _tf_facts(tf: Any) -> dict[str, Any]:
    cflags = list(tf.sysconfig.get_compile_flags())
    lflags = list(tf.sysconfig.get_link_flags())
    binfo = dict(tf.sysconfig.get_build_info())
    abi = "cxx11abi1"
    for flag in cflags:
        if flag.startswith("-D_GLIBCXX_USE_CXX11_ABI="):
            abi = "cxx11abi" + flag.split("=", 1)[1]
    return {
        "version": str(tf.__version__),
        "cflags": cflags,
        "lflags": lflags,
        "cuda": bool(binfo.get("is_cuda_build", False)),
        "abi": abi,
    }


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _plan(tf: Any) -> dict[str, Any]:
    """Everything a build needs, and the cache directory it lands in."""
    facts = _tf_facts(tf)
    if facts["abi"] == "cxx11abi0":
        raise BuildError(
            f"TensorFlow {facts['version']} was built with the old libstdc++ ABI (_GLIBCXX_USE_CXX11_ABI=0) "
            "but the pyagg engine uses the new one; install a TensorFlow >= 2.9 wheel"
        )
    engine, inc, cxx = _engine_library(), _include_dir(), _compiler()
    headers = b"".join(p.read_bytes() for p in sorted((inc / "pyagg").glob("*.h")))
    st = engine.stat()
    key = _digest(
        engine_build_info()["version"], _SOURCE.read_bytes(), headers, engine.resolve(), st.st_size, st.st_mtime_ns,
        facts["cflags"], facts["lflags"], cxx, sys.implementation.cache_tag,
    )
    engine_cuda = "#define PYAGG_WITH_CUDA" in (inc / "pyagg" / "config.h").read_text()
    cuda_inc = None
    if facts["cuda"] and engine_cuda:
        for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
            if root and (Path(root) / "include" / "cuda_runtime.h").is_file():
                cuda_inc = Path(root) / "include"
                break
    out_dir = cache_root() / f"tf-{facts['version']}" / f"{facts['abi']}-{key}"
    return dict(facts=facts, engine=engine, include=inc, cxx=cxx, out_dir=out_dir, cuda_include=cuda_inc)


def library_for(tf: Any) -> Path | None:
    """The cached library for the running TensorFlow and this pyagg install, or None."""
    try:
        lib = _plan(tf)["out_dir"] / LIBRARY
    except BuildError:
        return None
    return lib if lib.is_file() else None


def build(tf: Any = None, *, force: bool = False, quiet: bool = False) -> Path:
    """Compile the op for the running TensorFlow (if not cached) and return its path.

    Raises
    ------
    BuildError
        No TensorFlow, no compiler, missing engine files, or the compiler
        failed (its output is in the message); each message ends with the
        command that fixes or retries it.
    """
    if tf is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            import tensorflow as tf
        except ImportError as exc:
            raise BuildError(
                f"pyagg TF op: TensorFlow is not importable ({exc}); install it (pip install 'pyagg[tf]' or "
                f"pip install tensorflow-cpu) and run: {BUILD_COMMAND}"
            ) from exc
    plan = _plan(tf)
    out_dir: Path = plan["out_dir"]
    lib = out_dir / LIBRARY
    if lib.is_file() and not force:
        return lib
    facts = plan["facts"]
    out_dir.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(out_dir / ".lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)  # one compiler per key; the others wait and reuse its result
        if lib.is_file() and not force:
            return lib
        cmd = [plan["cxx"]] + [f for f in facts["cflags"] if not f.startswith(("-std=", "--std="))]
        cmd += [
            "-std=c++17", "-O2", "-fPIC", "-shared", "-w",
            f"-I{plan['include']}",
            f'-DPYAGG_TF_BUILT_VERSION="{facts["version"]}"',
        ]
        if plan["cuda_include"] is not None:
            cmd += ["-DGOOGLE_CUDA=1", f"-I{plan['cuda_include']}"]
        fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out_dir)
        os.close(fd)
        engine_dir = plan["engine"].parent
        cmd += [str(_SOURCE), "-o", tmp, f"-L{engine_dir}", "-lpyagg_engine", f"-Wl,-rpath,{engine_dir}"]
        cmd += facts["lflags"]
        if not quiet:
            print(
                f"[pyagg] compiling the TF op for TensorFlow {facts['version']} (once; cached in {out_dir})",
                file=sys.stderr, flush=True,
            )
        try:
            r = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as exc:
            os.unlink(tmp)
            raise BuildError(f"pyagg TF op: cannot run the compiler {plan['cxx']} ({exc}); fix it and run: "
                             f"{BUILD_COMMAND}") from exc
        if r.returncode != 0:
            os.unlink(tmp)
            tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-25:])
            raise BuildError(
                f"pyagg TF op: compiling against TensorFlow {facts['version']} failed (exit {r.returncode}):\n"
                f"{shlex.join(cmd)}\n{tail}\nfix the cause and run: {BUILD_COMMAND}"
            )
        os.replace(tmp, lib)
        (out_dir / "build.json").write_text(json.dumps({
            "built": True,
            "pyagg_version": engine_build_info()["version"],
            "tensorflow_version": facts["version"],
            "abi": facts["abi"],
            "gpu_kernel": plan["cuda_include"] is not None,
            "engine": str(plan["engine"]),
            "command": cmd,
        }, indent=2))
    return lib
