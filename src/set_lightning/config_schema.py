"""The configuration schema of the CLI (for checking a sweep's keys and resolving its runs) and the hints
that error messages about the model get.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Sequence

from set_lightning.errors import UserError, one_line
from set_lightning.lightning_cli import make_cli
from set_lightning.settings import canonical_model_names, class_name


def import_class(class_path: str) -> Any:
    """The object a config's ``class_path`` names (``package.module.Name``)."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class ConfigSchema:
    """The configuration schema of the CLI, for checking a sweep's keys and arguments before any run."""

    def __init__(self) -> None:
        from set_lightning.models.registry import model_class, model_kwargs

        self._model_class, self._model_kwargs = model_class, model_kwargs
        self.cli = make_cli(["--seed_everything=false"], run=False, parse_only=True)
        self.parser = self.cli.parser
        self.paths: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            self.paths[prefix] = value
            if isinstance(value, dict) and not prefix.startswith("model.net"):
                for k, v in value.items():
                    walk(f"{prefix}.{k}", v)

        for key, value in self.cli.config.clone().as_dict().items():
            walk(key, value)
        self.paths.setdefault("config", None)  # --config files

    def parse(self, args: Sequence[str], where: str) -> Any:
        """The config ``args`` give (raises a UserError prefixed with ``where``)."""
        try:
            return self.parser.parse_args(canonical_model_names(args))
        except Exception as err:  # noqa: BLE001 - every parse failure is the user's input
            raise UserError(f"{where}: {model_hint(one_line(err))}") from None

    def check_key(self, key: str, args: Sequence[str], where: str) -> None:
        """Check one dotted override key; ``args`` (without the key) pick the model class it applies to.

        Raises:
            UserError: the key does not exist; the message names it and the closest valid key.
        """
        if key.startswith("model.net."):
            net = self.parse([a for a in args if not a.startswith("--model.net.")], where)
            cls_path = net.get("model.net.class_path")
            cls = self._model_class(cls_path)
            names = self._model_kwargs(cls) if cls is not None else []
            arg = key[len("model.net."):]
            arg = arg[len("init_args."):] if arg.startswith("init_args.") else arg
            if arg == "class_path" or arg in names:
                return
            candidates = [f"model.net.init_args.{n}" for n in names]
            hint = f" ({class_name(cls_path)} takes: {', '.join(names)})"
        else:
            if self._known(key):
                return
            candidates = [p for p in self.paths if not p.startswith("model.net.")]
            hint = ""
        close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
        suggestion = f"; did you mean '{close[0]}'?" if close else "; see fit --print_config for the keys"
        raise UserError(f"{where}: unknown key '{key}'{suggestion}{hint}")

    def _known(self, key: str) -> bool:
        """A key of the schema, or one below a class (``trainer.logger``) or a list (``trainer.callbacks``),
        whose keys depend on what the config puts there (the full parse checks those)."""
        if key in self.paths:
            return True
        parts = key.split(".")
        for i in range(1, len(parts)):
            value = self.paths.get(".".join(parts[:i]), {})
            if not isinstance(value, dict) or "class_path" in value:
                return True
        return False


def model_hint(text: str) -> str:
    """Advice for an error about ``model.net``: the model's init arguments, or the allowed model names."""
    import re

    from set_lightning.models import MODELS
    from set_lightning.models.registry import model_kwargs

    rejected = re.search(r"class_path '([\w.]+)': Option '(\w+)' is not accepted", text)
    if rejected:
        try:
            names = model_kwargs(import_class(rejected.group(1)))
        except Exception:  # noqa: BLE001 - not one of our models: leave the message as it is
            names = []
        if names:
            close = difflib.get_close_matches(rejected.group(2), names, n=1)
            text += (f" (did you mean '{close[0]}'? " if close else " (") + \
                f"{rejected.group(1).rsplit('.', 1)[-1]} takes: {', '.join(names)})"
    elif "model.net" in text and "import path" in text:
        names = ", ".join(cls.__name__ for cls in MODELS.values())
        text += f" (allowed models: {names}, in any case, or a full class path)"
    return text
