"""How a command's settings are completed and checked before anything is built.

- :func:`reconcile_with_checkpoint`: with ``--ckpt_path``, the checkpoint's model and data settings
  win; a setting the command gives that contradicts them is one error naming both values.
- :func:`follow_data_dims`: a model's ``node_dim`` / ``edge_dim`` follow what the data carry.
- :func:`check_config_files`: each ``--config`` file is YAML whose sections are mappings.
- :func:`canonical_model_names`: ``--model.net set`` (any case) names the class.
- :func:`named_keys`: the keys a command sets explicitly (what "given by the user" means above).
- :func:`current_model_names`: a checkpoint's model arguments under their current names.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Sequence

import yaml
from jsonargparse import Namespace

from set_lightning.data import NBodyDataModule
from set_lightning.errors import UserError, one_line

#: model settings that only change how a checkpoint is evaluated: the command's value is used
MODEL_EVAL_KEYS = {"close_encounter"}
#: data settings of this machine, never taken from a checkpoint
DATA_MACHINE_KEYS = {"cache_dir", "num_workers"}
#: data settings test/validate/predict may change freely (how many trajectories, how batched)
DATA_SIZE_KEYS = {"n_train", "n_val", "n_test", "batch_size"}


def _strip_init_args(key: str) -> str:
    return ".".join(part for part in key.split(".") if part != "init_args")


def named_keys(words: Sequence[str]) -> set[str]:
    """The dotted config keys a command sets explicitly: its ``--key`` options and the keys of its
    ``--config`` files (``init_args`` left out: ``model.net.hidden``; a class path: ``model.net``)."""
    keys: set[str] = set()

    def add(key: str) -> None:
        key = _strip_init_args(key)
        keys.add(key[: -len(".class_path")] if key.endswith(".class_path") else key)

    def flatten(prefix: str, value: Any) -> None:
        add(prefix)
        if isinstance(value, dict):
            for k, v in value.items():
                flatten(f"{prefix}.{k}", v)

    for i, word in enumerate(words):
        if not word.startswith("-"):
            continue
        key, has_value, value = word.lstrip("-").partition("=")
        if key in ("config", "c"):
            path = value if has_value else (words[i + 1] if i + 1 < len(words) else "")
            try:
                loaded = yaml.safe_load(Path(path).read_text()) if Path(path).is_file() else None
            except yaml.YAMLError:
                loaded = None
            for k, v in (loaded or {}).items() if isinstance(loaded, dict) else ():
                flatten(str(k), v)
        elif key:
            add(key)
    return keys


def class_name(class_path: Any) -> str:
    return str(class_path).rsplit(".", 1)[-1]


def reconcile_with_checkpoint(cfg: Any, defaults: Any, named: set[str], info: Any, sub: str) -> None:
    """Set ``cfg``'s model and data settings to those ``info`` (a checkpoint) was trained with.

    A setting the command gives explicitly (named on the command line or in a ``--config`` file, or
    different from the defaults) and that differs from the checkpoint's is an error naming both
    values, except: data settings with ``allow_data_override`` (the command's value is used), the
    trajectory counts and batch size outside ``fit``, and evaluation-only model settings.
    Machine settings (``cache_dir``, ``num_workers``) always stay the command's.

    Raises:
        UserError: one line listing every conflict.
    """
    conflicts: list[str] = []

    def explicit(key: str) -> bool:
        return _strip_init_args(key) in named or cfg.get(key) != defaults.get(key)

    def differs(key: str, trained: Any) -> bool:
        return cfg.get(key) != trained and explicit(key)

    net = info.model.get("net")
    if isinstance(net, dict) and net.get("class_path"):
        trained_args = dict(net.get("init_args") or {})
        given = cfg.get("model.net.class_path")
        if class_name(given) != class_name(net["class_path"]) and explicit("model.net.class_path"):
            conflicts.append(f"model.net: checkpoint {class_name(net['class_path'])}, command {class_name(given)}")
        elif class_name(given) == class_name(net["class_path"]):
            conflicts += [f"model.net.{k}: checkpoint {v!r}, command {cfg.get(f'model.net.init_args.{k}')!r}"
                          for k, v in trained_args.items() if differs(f"model.net.init_args.{k}", v)]
        cfg["model.net"] = Namespace(class_path=net["class_path"], init_args=Namespace(**trained_args))
    for key, value in info.model.items():
        if key == "net" or key in MODEL_EVAL_KEYS or f"model.{key}" not in cfg:
            continue
        if differs(f"model.{key}", value):
            conflicts.append(f"model.{key}: checkpoint {value!r}, command {cfg.get(f'model.{key}')!r}")
        cfg[f"model.{key}"] = value
    model_conflicts = bool(conflicts)

    overridden, taken = [], []
    for key, value in (info.data or {}).items():
        dotted = f"data.{key}"
        if key in DATA_MACHINE_KEYS or dotted not in cfg or cfg.get(dotted) == value:
            continue
        if not explicit(dotted):
            taken.append(f"{key}={value!r}")
            cfg[dotted] = value
        elif sub != "fit" and key in DATA_SIZE_KEYS:
            continue
        elif cfg.get("allow_data_override"):
            overridden.append(f"{key}={cfg.get(dotted)!r} (trained with {value!r})")
        else:
            conflicts.append(f"{dotted}: checkpoint {value!r}, command {cfg.get(dotted)!r}")
    if conflicts:
        hints = []
        if model_conflicts:
            hints.append("the model and its settings always come from the checkpoint: drop those options")
        if len(conflicts) > sum(c.startswith("model.") for c in conflicts):
            hints.append("drop the data options to use the checkpoint's, or pass --allow_data_override true "
                         "to run on other data on purpose")
        raise UserError(f"ckpt_path: {info.path} was trained with other settings than the command gives: "
                        + "; ".join(conflicts) + " (" + "; ".join(hints) + ")")
    if info.data is None:
        print(f"note: {info.path} records no data settings; using the command's")
    if taken:
        print("data settings of the checkpoint: " + ", ".join(taken))
    if overridden:
        print("--allow_data_override: running on other data than the checkpoint was trained with: "
              + ", ".join(overridden))


def current_model_names(cfg: Any) -> None:
    """Put the values of ``model.net``'s arguments that a checkpoint written before a rename records under
    their old names (``renamed_args`` of the model class) under the current names.

    Lightning reads a checkpoint's hyper-parameters into the config as they are; the model would warn
    that the old name is deprecated, which tells the user nothing to act on (the file is not theirs to
    edit). An argument also set under its current name (not at its default) is left for the model to
    refuse.
    """
    from set_lightning.models.registry import model_class

    cls = model_class(cfg.get("model.net.class_path"))
    init_args = cfg.get("model.net.init_args")
    if cls is None or not isinstance(init_args, Namespace):
        return
    defaults = inspect.signature(cls.__init__).parameters
    for old, new in cls.renamed_args.items():
        value = init_args.get(old)
        if value is not None and init_args.get(new, defaults[new].default) == defaults[new].default:
            init_args[new], init_args[old] = value, None


def follow_data_dims(cfg: Any, named: set[str]) -> None:
    """Set the model's ``node_dim`` / ``edge_dim`` to what the data carry, unless the command sets them.

    A value the command sets (on the command line or in a ``--config`` file) that contradicts the data is an
    error now, before anything is written (rather than at the first batch).
    """
    from set_lightning.models.registry import model_class, model_kwargs

    cls = model_class(cfg.get("model.net.class_path"))
    names = set(model_kwargs(cls)) if cls is not None else set()
    if not names & {"node_dim", "edge_dim"} or not isinstance(cfg.get("data"), Namespace):
        return
    accepted = set(inspect.signature(NBodyDataModule.__init__).parameters) - {"self"}
    node, edge = NBodyDataModule(**{k: v for k, v in cfg["data"].items() if k in accepted}).attribute_dims()
    graph = cfg.get("model.net.init_args.graph")
    for key, carried, what in (("node_dim", node, "node attribute column(s)"),
                               ("edge_dim", edge, "pair attribute channel(s) (edge_attr)")):
        if key not in names:
            continue
        full = f"model.net.init_args.{key}"
        if f"model.net.{key}" not in named:
            cfg[full] = carried
            continue
        given = cfg.get(full)
        if given != carried and not (key == "edge_dim" and graph == "given" and given == 0 and carried > 0):
            raise UserError(f"{full}: {given} given, but the data carry {carried} {what}; set {carried}, or leave "
                            f"it unset (it follows the data)")


def check_config_files(words: Sequence[str]) -> None:
    """Each ``--config`` file is YAML (an error names the file and the line) whose ``trainer``, ``model`` and
    ``data`` sections are mappings (``trainer: 5`` would be ignored silently otherwise).

    Raises:
        UserError: one line naming the file.
    """
    from set_lightning.configs import config_arg_values

    for _, value in config_arg_values(words):
        path = Path(value)
        if not path.is_file():
            continue  # the parser says that it is missing
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or one_line(err)
            raise UserError(f"--config {value}: not valid YAML{where}: {problem}") from None
        if loaded is None:
            continue
        if not isinstance(loaded, dict):
            raise UserError(f"--config {value}: a config file must be a mapping of sections (trainer:, model:, "
                            f"data:, ...), got a {type(loaded).__name__}")
        for section in ("trainer", "model", "data"):
            if section in loaded and not isinstance(loaded[section], (dict, type(None))):
                raise UserError(f"--config {value}: '{section}' must be a mapping of {section} options "
                                f"(indented key: value lines), got {loaded[section]!r}")


def canonical_model_names(words: Sequence[str]) -> list[str]:
    """``--model.net set`` (any case, as in :func:`~set_lightning.models.build_model`) -> the class path."""
    from set_lightning.models import MODELS

    out = list(words)
    for i, word in enumerate(out):
        key, has_value, value = word.partition("=")
        if key not in ("--model.net", "--model.net.class_path"):
            continue
        j, value = (i, value) if has_value else (i + 1, out[i + 1] if i + 1 < len(out) else "")
        cls = MODELS.get(value.lower())
        if cls is not None:
            path = f"set_lightning.models.{cls.__name__}"
            out[j] = f"{key}={path}" if has_value else path
    return out
