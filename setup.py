"""Build of pyagg: CMake builds the C++ engine, then setuptools builds the
Cython bindings against it.

The engine library lands next to the extension module (in the build tree for a
wheel, in the source tree for an in-place/editable install) and is found
through an $ORIGIN rpath. Two kinds of build:

* developer builds (``setup.py build_ext --inplace``, ``pip install -e .``):
  a persistent CMake tree (``build/cmake-<python>-<platform>``, or
  ``PYAGG_BUILD_DIR``), with the native tests and benchmarks, and the TF op
  when TensorFlow is importable (as ``scripts/dev_build.sh`` and CI use it);
* package builds (``pip install .``, ``pip wheel .``): a fresh temporary CMake
  tree each time (pip's isolated build environment is deleted after the build,
  so no CMake cache may outlive it), engine and bindings only: no tests, no
  benchmarks, no TF op (the op is compiled against the TensorFlow installed at
  run time: ``python -m pyagg.tf_bridge build``, or at first use).

Environment variables (all optional):

  PYAGG_WITH_CUDA    AUTO (default: the CUDA backend is built when nvcc is
                     found), ON (required) or OFF (not built)
  PYAGG_NATIVE_ARCH  1: compile for this machine's CPU only (-march=native);
                     default: a portable build with run-time ISA dispatch
  PYAGG_CMAKE_ARGS   extra CMake arguments (last, so they win), e.g.
                     "-DPYAGG_BUILD_TESTS=ON"
  PYAGG_BUILD_JOBS   parallel build jobs (default: CPU count)
  PYAGG_BUILD_DIR    CMake build directory (default: see above)

A requested feature that cannot be built fails the build; nothing is compiled
at import time.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _dev_build_dir() -> Path:
    tag = f"cmake-{sys.implementation.cache_tag}-{sysconfig.get_platform()}"
    return Path(os.environ.get("PYAGG_BUILD_DIR", ROOT / "build" / tag)).resolve()


def _cache_entry(cache: Path, key: str) -> str | None:
    prefix = key + ":"
    for line in cache.read_text(errors="replace").splitlines():
        if line.startswith(prefix) and "=" in line:
            return line.split("=", 1)[1]
    return None


def _drop_stale_cache(build_dir: Path) -> None:
    """Forget a CMake cache made in another environment (e.g. a deleted venv).

    A cache records absolute paths of its tools (the generator's make program,
    the compilers, cmake itself); once that environment is gone, CMake fails
    on them ("ninja: no such file or directory"). The build tree is kept, only
    the configuration is redone.
    """
    cache = build_dir / "CMakeCache.txt"
    if not cache.exists():
        return
    stale = []
    for key in ("CMAKE_MAKE_PROGRAM", "CMAKE_COMMAND", "CMAKE_CXX_COMPILER"):
        value = _cache_entry(cache, key)
        if value and os.path.isabs(value) and not os.path.exists(value):
            stale.append(f"{key}={value}")
    if stale:
        print(f"[pyagg] {build_dir}: CMake cache from another environment ({', '.join(stale)}); reconfiguring")
        cache.unlink()
        shutil.rmtree(build_dir / "CMakeFiles", ignore_errors=True)


def _on(name: str) -> bool | None:
    v = os.environ.get(name)
    if v is None or v.strip() == "":
        return None
    v = v.strip().upper()
    if v in ("1", "ON", "TRUE", "YES"):
        return True
    if v in ("0", "OFF", "FALSE", "NO"):
        return False
    raise SystemExit(f"{name} must be 1/ON or 0/OFF, got {os.environ[name]!r}")


class CMakeBuildExt(build_ext):
    """Runs CMake (engine; TF op for developer builds) before compiling the Cython extensions."""

    def run(self) -> None:
        developer = bool(self.inplace or getattr(self, "editable_mode", False))
        pkg_dir = Path(self.get_ext_fullpath("pyagg._ext")).resolve().parent
        pkg_dir.mkdir(parents=True, exist_ok=True)
        if developer or "PYAGG_BUILD_DIR" in os.environ:
            build_dir = _dev_build_dir()
            build_dir.mkdir(parents=True, exist_ok=True)
            _drop_stale_cache(build_dir)
            self._cmake(build_dir, pkg_dir, developer)
        else:
            with tempfile.TemporaryDirectory(prefix="pyagg-cmake-") as tmp:
                self._cmake(Path(tmp), pkg_dir, developer)

    def _cmake(self, build_dir: Path, pkg_dir: Path, developer: bool) -> None:
        cfg = [
            "cmake",
            "-S", str(ROOT),
            "-B", str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPYAGG_PYTHON_EXECUTABLE={sys.executable}",
            f"-DPYAGG_PYTHON_OUTPUT_DIR={pkg_dir}",
        ]
        if developer:
            cfg += ["-DPYAGG_BUILD_TESTS=ON"]
        else:
            cfg += ["-DPYAGG_BUILD_TESTS=OFF", "-DPYAGG_BUILD_BENCH=OFF", "-DPYAGG_BUILD_TF=OFF"]
        cuda = os.environ.get("PYAGG_WITH_CUDA", "").strip().upper()
        if cuda:
            cuda = {"1": "ON", "0": "OFF", "TRUE": "ON", "FALSE": "OFF"}.get(cuda, cuda)
            if cuda not in ("AUTO", "ON", "OFF"):
                raise SystemExit(f"PYAGG_WITH_CUDA must be AUTO, ON or OFF, got {os.environ['PYAGG_WITH_CUDA']!r}")
            cfg.append(f"-DPYAGG_WITH_CUDA={cuda}")
        native = _on("PYAGG_NATIVE_ARCH")
        if native is not None:
            cfg.append(f"-DPYAGG_NATIVE_ARCH={'ON' if native else 'OFF'}")
        if not (build_dir / "CMakeCache.txt").exists():
            ninja = shutil.which("ninja")
            if ninja:
                cfg += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        cfg += shlex.split(os.environ.get("PYAGG_CMAKE_ARGS", ""))
        jobs = os.environ.get("PYAGG_BUILD_JOBS", str(os.cpu_count() or 2))
        subprocess.run(cfg, check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)
        subprocess.run(["cmake", "--install", str(build_dir)], check=True, stdout=subprocess.DEVNULL)
        for ext in self.extensions:
            ext.library_dirs = [str(build_dir)]
            ext.include_dirs = [str(ROOT / "engine" / "include"), str(build_dir / "generated")]
        super().run()


def _extensions() -> list[Extension]:
    from Cython.Build import cythonize

    common = dict(language="c++", libraries=["pyagg_engine"], extra_compile_args=["-std=c++17", "-O2"])
    exts = [
        Extension("pyagg._ext", sources=["pyagg/_ext.pyx"], extra_link_args=["-Wl,-rpath,$ORIGIN"], **common),
        # The transport's bindings: lossympi links the engine library that sits in pyagg/.
        Extension("lossympi._wire", sources=["lossympi/_wire.pyx"],
                  extra_link_args=["-Wl,-rpath,$ORIGIN/../pyagg"], **common),
    ]
    return cythonize(
        exts,
        compiler_directives={"language_level": "3"},
        include_path=[str(ROOT / "pyagg")],
        quiet=True,
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": CMakeBuildExt})
