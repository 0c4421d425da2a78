"""``python -m set_lightning {fit,validate,test,predict,sweep}``: the entry point; it only dispatches.

``fit``/``validate``/``test``/``predict`` go to Lightning's own CLI
(:class:`set_lightning.lightning_cli.NBodyLightningCLI`), ``sweep`` to the ablation runner
(:mod:`set_lightning.experiments.sweep`). Both run under
:func:`set_lightning.errors.run_with_clean_errors`: bad input is one ``error: ...`` line; Ctrl-C
exits 130 after printing the command that resumes the run.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

from set_lightning import program_name
from set_lightning.errors import run_with_clean_errors

SUBCOMMAND_HELP = {
    "fit": "train a model (resume: --ckpt_path last, or a checkpoint file)",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split (test/pos_mse is the benchmark figure)",
    "predict": "write a checkpoint's predictions of the test split (predictions.pt, predictions.png)",
    "sweep": "run an ablation file (every variant x grid point x seed), resumably, and report it",
}


def print_help(file: Any = None) -> None:
    """The top-level help: every subcommand, ``sweep`` included."""
    prog = program_name()
    lines = [f"usage: {prog} [-h] {{{','.join(SUBCOMMAND_HELP)}}} ...", "",
             "The Spacetime E(n)-Transformer (SET) and its baselines on charged N-body dynamics, on PyTorch "
             "Lightning.", "", "subcommands:"]
    lines += [f"  {name:<9} {text}" for name, text in SUBCOMMAND_HELP.items()]
    from set_lightning.trained import manifest

    shipped = manifest()
    if shipped:
        lines += ["", "shipped trained models (--ckpt_path NAME with validate, test, predict; "
                      "python -m set_lightning test --ckpt_path NAME reproduces its test MSE):"]
        lines += [f"  {name:<22} {e['model']} ({e['n_params']} params) on {e['data']['system']} "
                  f"N={e['data']['n_particles']}, test MSE {e['test']['pos_mse']:.5g}" for name, e in shipped.items()]
    lines += ["", f"'{prog} <subcommand> --help' lists a subcommand's options; "
                  f"'{prog} fit --print_config' prints the full default configuration."]
    print("\n".join(lines), file=file or sys.stdout)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point: ``set-lightning`` / ``python -m set_lightning``."""
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or words[0] in ("-h", "--help"):
        print_help(None if words else sys.stderr)
        if not words:
            print(f"error: a subcommand is required: {', '.join(SUBCOMMAND_HELP)}", file=sys.stderr)
        sys.exit(0 if words else 2)
    if words[0] == "sweep":
        from set_lightning.experiments.sweep import main as sweep_main

        sys.exit(run_with_clean_errors(lambda: sweep_main(words[1:], prog=program_name())))

    from set_lightning.callbacks import InterruptHint
    from set_lightning.config_schema import model_hint
    from set_lightning.lightning_cli import make_cli

    hint = InterruptHint([program_name(), *words])

    def run() -> None:
        # args=None lets LightningCLI read sys.argv itself (it warns when given both)
        make_cli(None if argv is None else words, trainer_defaults={"callbacks": [hint]})

    try:
        code = run_with_clean_errors(run, hint=model_hint)
    except (SystemExit, KeyboardInterrupt):
        # Lightning turns Ctrl-C into exit(1) after a graceful shutdown; the hint has said how to resume
        if hint.interrupted or sys.exc_info()[0] is KeyboardInterrupt:
            if not hint.interrupted:
                print("interrupted", file=sys.stderr)
            sys.exit(130)
        raise
    sys.exit(code)


if __name__ == "__main__":
    main()
