"""Deprecated name of :mod:`set_lightning.entry`, the dispatching entry point (``cli.py`` beside
``lightning_cli.py`` read as a second CLI). Kept for console scripts installed before the rename
(``set-lightning = set_lightning.cli:main``) and code that imports it."""

from __future__ import annotations

import warnings

from set_lightning.entry import SUBCOMMAND_HELP, main, print_help

__all__ = ["SUBCOMMAND_HELP", "main", "print_help"]

warnings.warn("set_lightning.cli is deprecated: the entry point is set_lightning.entry (a set-lightning "
              "command installed before the rename: reinstall the package)", DeprecationWarning, stacklevel=2)
