"""An eval suite file: which evals run with which configs, their thresholds and the seed."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from shardlab.evals.registry import EvalError, get
from shardlab.evals.results import Threshold
from shardlab.trainers.config import ConfigError, read_yaml


def resolve_suite(suite: str) -> str:
    """The suite file a ``--suite`` argument names: a YAML path, or a shipped name such as ``ci``."""
    from shardlab import configs

    try:
        return configs.resolve("suite", os.fspath(suite))
    except FileNotFoundError as exc:
        raise EvalError(str(exc)) from None


def load_suite(path: str, only: Optional[Sequence[str]],
               overrides: Sequence[str] = ()) -> tuple[dict[str, Any], list[Threshold], int]:
    """The suite YAML: ``evals: {name: {config}}``, ``thresholds: {eval.metric: {min, max}}``, ``seed``;
    ``overrides`` (``EVAL.KEY=VALUE``) change the configs of evals in the suite, ``only`` keeps
    the named evals."""
    try:
        suite = read_yaml(path)
    except ConfigError as exc:
        raise EvalError(str(exc).replace("config file", "suite file")) from None
    unknown = sorted(set(suite) - {"evals", "thresholds", "seed"})
    if unknown:
        raise EvalError(f"suite {path} has unknown keys {unknown}; use evals, thresholds, seed")
    evals = dict(suite.get("evals") or {})
    for name in evals:
        get(name)  # unknown names fail before anything runs
    evals = _apply_overrides(evals, overrides, path)
    if only:
        for name in only:
            if name not in evals:
                get(name)
                raise EvalError(f"eval {name!r} is not in suite {path}; it has {', '.join(evals)}")
        evals = {name: evals[name] for name in evals if name in only}
    thresholds = []
    for key, bounds in (suite.get("thresholds") or {}).items():
        if not isinstance(bounds, dict) or not set(bounds) <= {"min", "max"} or not bounds:
            raise EvalError(f"threshold {key!r} in {path} must look like {{min: x}} and/or {{max: y}}")
        thresholds.append(Threshold(key, bounds.get("min"), bounds.get("max")))
    seed = suite.get("seed", 0)
    if not isinstance(seed, int):
        raise EvalError(f"seed in suite {path} must be an integer, got {seed!r}")
    return {name: cfg or {} for name, cfg in evals.items()}, thresholds, seed


def _apply_overrides(evals: dict[str, Any], overrides: Sequence[str], path: str) -> dict[str, Any]:
    """The suite's eval configs with ``EVAL.KEY=VALUE`` overrides merged in (values parsed as YAML)."""
    for item in overrides:
        key, equals, _ = item.partition("=")
        name = key.split(".", 1)[0]
        if not equals or "." not in key:
            raise EvalError(f"override {item!r} must look like EVAL.KEY=VALUE, e.g. retargeting.max_steps=500")
        if name not in evals:
            get(name)  # an unknown eval gets the close-names message
            raise EvalError(f"override {item!r} names eval {name!r}, which is not in suite {path}; "
                            f"it has {', '.join(evals)}")
        try:
            patch = OmegaConf.to_container(OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise EvalError(f"override {item!r}: {str(exc).splitlines()[0]}") from None
        merged = OmegaConf.merge(OmegaConf.create(evals[name] or {}), patch[name])
        evals[name] = OmegaConf.to_container(merged)
    return evals


def eval_config(cls: type, name: str, values: dict) -> Any:
    """An eval's Config dataclass from the suite's values; EvalError naming the bad key."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls.Config), values))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        where = f" key {key!r}" if key else ""
        raise EvalError(f"config of eval {name!r}{where}: {str(exc).splitlines()[0]}") from None
