"""``python -m pyagg.tf_bridge build [--force]``: compile the TF op for the installed TensorFlow.

``python -m pyagg.tf_bridge info`` prints where the op would be loaded from.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pyagg.tf_bridge", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile the op for the installed TensorFlow (cached)")
    b.add_argument("--force", action="store_true", help="rebuild even if a cached library exists")
    sub.add_parser("info", help="print the op library's build facts and cache location")
    args = ap.parse_args(argv)

    from . import _build, build_info

    if args.cmd == "build":
        try:
            lib = _build.build(force=args.force)
        except _build.BuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(lib)
        return 0
    info = build_info()
    info["cache"] = str(_build.cache_root())
    version = _build.installed_tf_version()
    info["installed_tensorflow"] = version
    info["cached"] = [str(p) for p in _build.cached_for_version(version)] if version else []
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
