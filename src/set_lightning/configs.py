"""Where the config files are: the packaged ``conf/`` folder and how a config name resolves.

The CLI, the sweep runner and the benchmarks all find configs through :func:`resolve_config`, so
``--config conf/set.yaml`` means the same file from a source checkout (where ``./conf`` links to
the packaged folder), from any other working directory and in an installed package (a Docker image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

#: The packaged configs: ``defaults.yaml``, one file per model, ``data/`` one file per data set.
CONF_DIR = Path(__file__).resolve().parent / "conf"
#: What every subcommand starts from, in order: the trainer and the small SET run, then its data.
DEFAULT_CONFIGS = (CONF_DIR / "defaults.yaml", CONF_DIR / "data" / "small.yaml")
#: The name prefix that means "a packaged config": ``conf/set.yaml``, ``conf/data/nbody20.yaml``.
PREFIX = "conf/"


def resolve_config(name: str | Path, root: Optional[str | Path] = None) -> Path:
    """The file a config name refers to.

    ``name`` is read relative to ``root`` (default: the working directory) when that file exists.
    Otherwise a name ``conf/<rest>`` is the packaged config ``<rest>``. Anything else comes back as
    given (relative to ``root``), for the caller to report as missing.
    """
    path = Path(root or ".") / name
    if path.is_file():
        return path
    text = Path(name).as_posix()
    if text.startswith(PREFIX) and (CONF_DIR / text[len(PREFIX):]).is_file():
        return CONF_DIR / text[len(PREFIX):]
    return path


def config_arg_values(args: Sequence[str]) -> list[tuple[int, str]]:
    """``(index, value)`` of every ``--config``/``-c`` value in CLI ``args`` (both ``--config X`` and
    ``--config=X``); the index is that of the word holding the value."""
    found = []
    for i, arg in enumerate(args):
        if arg.startswith("--config="):
            found.append((i, arg.split("=", 1)[1]))
        elif arg in ("--config", "-c") and i + 1 < len(args):
            found.append((i + 1, args[i + 1]))
    return found


def resolve_config_args(args: Sequence[str], root: Optional[str | Path] = None) -> list[str]:
    """``args`` with each ``--config`` value that names a packaged config (and no local file)
    replaced by that file's path; every other word unchanged."""
    out = list(args)
    for i, value in config_arg_values(args):
        resolved = resolve_config(value, root)
        if resolved != Path(root or ".") / value:
            out[i] = out[i][: len(out[i]) - len(value)] + str(resolved)
    return out
