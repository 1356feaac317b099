"""Loading training configs: a kind's schema (its dataclasses, beside its trainer; the ``algo`` key
picks it from trainers/kinds.py) merged with a YAML recipe and ``dotted.key=value`` overrides by
omegaconf, then checked by the kind's validator. Every problem is a :class:`ConfigError` with a
one-line message naming the key and the fix.

Neither loading nor validating imports torch or an env library (only a MiniGrid config's env id
is looked up in gymnasium's registry); :func:`check_runnable`, the checks of this machine, does.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import os
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from shardlab.configs.checks import ConfigError, need
from shardlab.trainers.kinds import get_kind
from shardlab.trainers.trainer_config import check_loggers_installed, validate_trainer

__all__ = ["ConfigError", "read_yaml", "parse_overrides", "build_config", "load_config", "validate",
           "check_runnable", "to_dict"]


def _schema(algo: str = "ppo", source: str = "config") -> DictConfig:
    """A fresh copy of the kind's schema: building it from the dataclasses takes 5x a copy's time."""
    kind = get_kind(algo, source)
    if kind.schema not in _SCHEMAS:
        _SCHEMAS[kind.schema] = OmegaConf.structured(kind.load("schema"))
    return copy.deepcopy(_SCHEMAS[kind.schema])


_SCHEMAS: dict[str, DictConfig] = {}


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        full = f"{prefix}{key}"
        keys.extend(_leaf_keys(value, full + ".") if isinstance(value, DictConfig) else [full])
    return keys


def _unknown_key_message(full_key: str, source: str, schema: DictConfig) -> str:
    valid = _leaf_keys(schema)
    close = difflib.get_close_matches(full_key, valid, n=3, cutoff=0.6)
    if not close:  # a right leaf under a wrong parent, e.g. ppo.num_envs
        leaf = full_key.rsplit(".", 1)[-1]
        close = [k for k in valid if k.rsplit(".", 1)[-1] == leaf][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else f"; see the dataclasses in {_schema_file(schema)}"
    return f"unknown config key '{full_key}' in {source}{hint}"


def _schema_file(schema: DictConfig) -> str:
    """The repository file of a schema's dataclass, e.g. trainers/ppo_config.py."""
    module = OmegaConf.get_type(schema).__module__
    return module.removeprefix("shardlab.").replace(".", "/") + ".py"


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    for key, value in other.items():
        if isinstance(base.get(key), DictConfig) and not isinstance(value, (dict, DictConfig)):
            raise ConfigError(f"config key '{key}' in {source} must be a section of keys "
                              f"(e.g. {key}.{next(iter(base[key]))}), got {value!r}")
    try:
        # base is always this module's own copy, so it may be merged into in place (merge would copy it
        # first, which took a third of a config's build); a DictConfig from a caller is left untouched
        merge = OmegaConf.unsafe_merge if isinstance(other, dict) else OmegaConf.merge
        return merge(base, other)
    except ConfigKeyError as exc:
        raise ConfigError(_unknown_key_message(str(exc.full_key), source, base)) from None
    except ValidationError as exc:
        expected = _expected_type(str(exc.full_key), OmegaConf.get_type(base))
        raise ConfigError(f"config key '{exc.full_key}' in {source} expects {expected}, "
                          f"got {exc.value!r}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {str(exc).splitlines()[0]}") from None


def _expected_type(full_key: str, schema: type) -> str:
    node: Any = schema()
    for part in full_key.split("."):
        node = getattr(node, part, None)
    return type(node).__name__ if node is not None else "a valid value"


def read_yaml(path: str | os.PathLike) -> dict:
    """Parse a YAML recipe into a dict, with one-line errors for missing or malformed files."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} not found; pass a YAML recipe such as "
                          "configs/train/maze_ppo_cpu.yaml")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; pass a YAML recipe") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path}{where} is not valid YAML: "
                          f"{getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def parse_overrides(overrides: list[str]) -> dict:
    """``['ppo.lr=3e-4', 'env.rand_region=null']`` → nested dict, values parsed as YAML scalars."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' must look like dotted.key=value, e.g. ppo.lr=3e-4")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad override: {str(exc).splitlines()[0]}") from None
    except yaml.YAMLError as exc:  # the value is parsed as YAML: an unclosed [ or {, a stray :
        bad = next((item for item in overrides if not _parses(item.split("=", 1)[1])), overrides[0])
        raise ConfigError(f"override '{bad}': the value is not valid YAML ({getattr(exc, 'problem', exc)}); "
                          "check its brackets and put a space after each colon, e.g. model.hidden=[64,64]") from None


def _parses(value: str) -> bool:
    try:
        yaml.safe_load(value)
    except yaml.YAMLError:
        return False
    return True


def build_config(recipe: dict, overrides: list[str] = (), source: str = "config") -> DictConfig:
    """Defaults ← recipe ← overrides, type-checked and validated; returns a read-only config.

    The ``algo`` key (default ``ppo``) picks the schema from :data:`trainers.kinds.KINDS`.
    """
    if not isinstance(recipe, (dict, DictConfig)):
        raise ConfigError(f"{source} must hold a mapping of config keys, not {type(recipe).__name__}")
    parsed = parse_overrides(list(overrides))
    algo = parsed.get("algo", recipe.get("algo", "ppo"))
    cfg = _merge(_schema(algo, source), recipe, source)
    cfg = _merge(cfg, parsed, "overrides")
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> DictConfig:
    """Load a YAML recipe with overrides into a validated config of its kind; an empty recipe (no
    keys at all, e.g. a file truncated by accident) is refused rather than run as the kind's defaults."""
    recipe = read_yaml(path)
    if not recipe:
        raise ConfigError(f"config file {path} is empty (no keys); a recipe sets at least its name, e.g. "
                          "`shardlab config maze_ppo_cpu > my.yaml` writes one to start from")
    return build_config(recipe, overrides, source=str(path))


def validate(cfg: DictConfig) -> None:
    """Checks that types alone cannot express, by the kind's validator; raises ConfigError."""
    name = cfg.name  # the default run directory is runs/<name>: a path here would write elsewhere
    need(bool(name.strip()) and name not in (".", "..") and "/" not in name and "\\" not in name,
         f"name must be a plain folder name, not a path (a run goes to runs/<name> unless --run-dir says "
         f"otherwise), got {name!r}")
    validate_trainer(cfg.trainer)
    get_kind(cfg.algo).load("validate")(cfg)


def check_runnable(cfg: DictConfig) -> None:
    """Checks that depend on this machine (validate() only checks the config itself)."""
    import torch  # deferred: config handling alone should not need torch

    accelerator, devices = cfg.trainer.accelerator, cfg.trainer.devices
    if accelerator in ("gpu", "cuda"):
        available = torch.cuda.device_count()
        if available < devices:
            raise ConfigError(f"trainer.accelerator={accelerator} with trainer.devices={devices} but this "
                              f"machine has {available} CUDA GPU(s); use trainer.accelerator=cpu or fewer devices")
    if accelerator == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("trainer.accelerator=mps but this machine has no Apple MPS device; "
                          "use trainer.accelerator=cpu or auto")
    if accelerator == "tpu" and importlib.util.find_spec("torch_xla") is None:
        raise ConfigError("trainer.accelerator=tpu needs torch_xla, which is not installed; "
                          "use trainer.accelerator=cpu or auto")
    check_loggers_installed(cfg.trainer.loggers)


def to_dict(cfg: DictConfig) -> dict:
    """The resolved config as plain Python containers (what checkpoints store)."""
    return OmegaConf.to_container(cfg, resolve=True)
