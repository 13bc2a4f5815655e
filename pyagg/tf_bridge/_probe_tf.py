"""Build-time probe of the installed TensorFlow, run by CMakeLists.txt.

Prints ``key=value`` lines (CMake parses them): the version, the compile and
link flags of ``tf.sysconfig`` (``|``-separated), whether TF was built with
CUDA, and a hash of the flags. Exits 1 (with the reason on stderr) when
TensorFlow cannot be imported. Not imported by the package at run time.
"""

from __future__ import annotations

import hashlib
import os
import sys


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except Exception as exc:  # noqa: BLE001 - any import failure means "no TF"
        print(f"cannot import tensorflow: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    cflags = list(tf.sysconfig.get_compile_flags())
    lflags = list(tf.sysconfig.get_link_flags())
    info = dict(tf.sysconfig.get_build_info())
    cuda = bool(info.get("is_cuda_build", False))
    digest = hashlib.sha256("\n".join(cflags + lflags).encode()).hexdigest()[:16]
    print(f"version={tf.__version__}")
    print(f"cflags={'|'.join(cflags)}")
    print(f"lflags={'|'.join(lflags)}")
    print(f"cuda={1 if cuda else 0}")
    print(f"flags_hash={digest}")
    print(f"init={os.path.realpath(tf.__file__)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
