"""Build of pyagg: CMake builds the C++ engine (and the TF op when TensorFlow is
importable), then setuptools builds the Cython bindings against it.

The engine library lands next to the extension module (in the build tree for a
wheel, in the source tree for an editable install) and is found through an
$ORIGIN rpath. Options reach CMake through the environment:

  PYAGG_CMAKE_ARGS   extra CMake arguments, e.g. "-DPYAGG_WITH_CUDA=OFF"
  PYAGG_BUILD_JOBS   parallel build jobs (default: CPU count)
  PYAGG_BUILD_DIR    CMake build directory (default: build/cmake-<python>)

A requested feature that cannot be built fails the build; nothing is compiled
at import time.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _cmake_build_dir() -> Path:
    tag = f"cmake-{sys.implementation.cache_tag}-{sysconfig.get_platform()}"
    return Path(os.environ.get("PYAGG_BUILD_DIR", ROOT / "build" / tag)).resolve()


class CMakeBuildExt(build_ext):
    """Runs CMake (engine, TF op) before compiling the Cython extensions."""

    def run(self) -> None:
        pkg_dir = Path(self.get_ext_fullpath("pyagg._ext")).resolve().parent
        pkg_dir.mkdir(parents=True, exist_ok=True)
        build_dir = _cmake_build_dir()
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = [
            "cmake",
            "-S", str(ROOT),
            "-B", str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPYAGG_PYTHON_EXECUTABLE={sys.executable}",
            f"-DPYAGG_PYTHON_OUTPUT_DIR={pkg_dir}",
            "-DPYAGG_BUILD_TESTS=ON",
        ]
        if not (build_dir / "CMakeCache.txt").exists():
            try:
                subprocess.run(["ninja", "--version"], check=True, capture_output=True)
                cfg += ["-G", "Ninja"]
            except (OSError, subprocess.CalledProcessError):
                pass
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
