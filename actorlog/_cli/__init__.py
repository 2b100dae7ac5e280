"""The ``actorlog`` command (``pip install 'actorlog[cli]'``): look inside a log, verify
it, export and import it, run the benchmarks. ``actorlog --help`` lists the commands."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    """The console script: run the command line (exits with the command's status)."""
    try:
        from ._commands import cli
    except ImportError as e:  # click or rich missing: the extra is not installed
        sys.exit(f"actorlog's command line needs its extra: pip install 'actorlog[cli]' ({e})")
    cli()
