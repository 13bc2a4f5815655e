"""The ``pyagg`` command: ``pyagg train ...`` and ``pyagg experiment ...``."""

from __future__ import annotations

import sys

USAGE = """usage: pyagg {train,experiment} ...

  pyagg train        train a model on a parameter server + n workers, f Byzantine
                     (pyagg train --help)
  pyagg experiment   rules x attacks comparison (byzantine) and per-step overhead
                     (pyagg experiment --help)
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        from .train import main as train_main

        return train_main(rest, prog="pyagg train")
    if cmd == "experiment":
        from .experiment import main as exp_main

        return exp_main(rest, prog="pyagg experiment")
    if cmd in ("--version", "version"):
        from . import __version__

        print(__version__)
        return 0
    print(f"pyagg: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
