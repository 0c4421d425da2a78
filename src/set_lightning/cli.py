"""``python -m set_lightning {fit,validate,test,predict,sweep}``: the entry point; it only dispatches.

``fit``/``validate``/``test``/``predict`` go to Lightning's own CLI
(:class:`set_lightning.lightning_cli.SETLightningCLI`), ``sweep`` to the ablation runner
(:mod:`set_lightning.experiments.sweep`). Both run under
:func:`set_lightning.errors.run_with_clean_errors`: bad input is one ``error: ...`` line.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from set_lightning.errors import run_with_clean_errors


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point: ``set-lightning`` / ``python -m set_lightning``."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] == "sweep":
        from set_lightning.experiments.sweep import main as sweep_main

        sys.exit(run_with_clean_errors(lambda: sweep_main(words[1:])))

    from set_lightning.lightning_cli import make_cli, model_hint

    # args=None lets LightningCLI read sys.argv itself (it warns when given both)
    sys.exit(run_with_clean_errors(lambda: make_cli(None if argv is None else words), hint=model_hint))


if __name__ == "__main__":
    main()
