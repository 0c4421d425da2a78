"""set_lightning: the Spacetime E(n)-Transformer (SET) and its baselines for N-body dynamics."""

import sys
from pathlib import Path

__version__ = "0.1.0"


def program_name() -> str:
    """How the user started the program: ``python -m set_lightning`` or the console script's name."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return "python -m set_lightning" if not name or name.endswith(".py") or name == "-c" else name
