"""An eval suite file: which evals run with which configs, their thresholds and the seed."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import Any, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from shardlab.evals.suite.registry import EvalError, get
from shardlab.evals.suite.results import Threshold
from shardlab.trainers.config import ConfigError, read_yaml

MAX_SEED = 2**30 - 1  # procgen seeds are signed 32-bit and evals add offsets (seed + 1, seed + i)


def check_seed(seed: Any, where: str) -> int:
    """``seed`` if it is an integer in [0, MAX_SEED]; EvalError naming ``where`` otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise EvalError(f"{where} must be an integer in [0, {MAX_SEED}], got {seed!r}")
    return seed


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
    unknown = sorted(map(str, set(suite) - {"evals", "thresholds", "seed"}))
    if unknown:
        raise EvalError(f"suite {path} has unknown keys {unknown}; use evals, thresholds, seed")
    evals = suite.get("evals")
    if not isinstance(evals, dict) or not evals:
        raise EvalError(f"suite {path} names no evals; give a mapping such as "
                        "evals: {goal_misgeneralization: {mazes: 200}} (`shardlab list evals`)")
    for name, cfg in evals.items():
        if not isinstance(name, str):
            raise EvalError(f"suite {path}: eval name {name!r} is not a name; see `shardlab list evals`")
        get(name)  # unknown names fail before anything runs
        if cfg is not None and not isinstance(cfg, dict):
            raise EvalError(f"suite {path}: the config of eval {name!r} must be a mapping of its keys "
                            f"(e.g. {{mazes: 100}}) or empty, got {cfg!r}")
    evals = dict(evals)
    evals = _apply_overrides(evals, overrides, path)
    suite_evals = list(evals)
    if only:
        for name in only:
            if name not in evals:
                get(name)
                raise EvalError(f"eval {name!r} is not in suite {path}; it has {', '.join(evals)}")
        evals = {name: evals[name] for name in evals if name in only}
    thresholds = []
    declared = suite.get("thresholds") or {}
    if not isinstance(declared, dict):
        raise EvalError(f"thresholds in suite {path} must be a mapping such as "
                        "{goal_misgeneralization.p_cheese: {min: 0.5}}, got " + repr(declared))
    for key, bounds in declared.items():
        if not isinstance(bounds, dict) or not set(bounds) <= {"min", "max"} or not bounds:
            raise EvalError(f"threshold {key!r} in {path} must look like {{min: x}} and/or {{max: y}}")
        _check_threshold(key, bounds, suite_evals, path)
        thresholds.append(Threshold(key, bounds.get("min"), bounds.get("max")))
    seed = check_seed(suite.get("seed", 0), f"seed in suite {path}")
    return {name: cfg or {} for name, cfg in evals.items()}, thresholds, seed


def _check_threshold(key: Any, bounds: dict, suite_evals: Sequence[str], path: str) -> None:
    """EvalError unless ``key`` is EVAL.METRIC of an eval in the suite and the bounds are numbers, min <= max."""
    eval_name, dot, metric = str(key).partition(".")
    if not isinstance(key, str) or not dot or not metric:
        raise EvalError(f"threshold {key!r} in {path} must be named EVAL.METRIC, e.g. goal_misgeneralization.p_cheese")
    if eval_name not in suite_evals:
        get(eval_name)  # an unknown eval gets the close-names message
        raise EvalError(f"threshold {key!r} in {path} is for eval {eval_name!r}, which the suite does not run; "
                        f"it runs {', '.join(suite_evals)}")
    for side, value in bounds.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise EvalError(f"threshold {key!r} in {path}: {side} must be a finite number, got {value!r}")
    if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
        raise EvalError(f"threshold {key!r} in {path} can never hold: min {bounds['min']} > max {bounds['max']}")


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
            merged = OmegaConf.merge(OmegaConf.create(evals[name] or {}), patch[name])
        except OmegaConfBaseException as exc:
            raise EvalError(f"override {item!r}: {str(exc).splitlines()[0]}") from None
        except yaml.YAMLError as exc:  # the value is parsed as YAML
            raise EvalError(f"override {item!r}: the value is not valid YAML ({getattr(exc, 'problem', exc)}); "
                            "check its brackets and put a space after each colon, e.g. probes.layers=[embedder.relufc_out]") from None
        evals[name] = OmegaConf.to_container(merged)
    return evals


def eval_config(cls: type, name: str, values: dict) -> Any:
    """An eval's Config dataclass from the suite's values; EvalError naming the bad key."""
    try:
        config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls.Config), values))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        where = f" key {key!r}" if key else ""
        raise EvalError(f"config of eval {name!r}{where}: {str(exc).splitlines()[0]}") from None
    except ValueError as exc:  # a Config.__post_init__ check: already one line naming the key
        raise EvalError(str(exc)) from None
    bad = _non_finite(dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {})
    if bad is not None:
        raise EvalError(f"config of eval {name!r} key {bad[0]!r}: must be a finite number, got {bad[1]}")
    return config


def _non_finite(data: Any, prefix: str = "") -> Optional[tuple[str, float]]:
    """(key, value) of the first NaN or infinite number in a config's values, or None."""
    if isinstance(data, float) and not math.isfinite(data):
        return prefix, data
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for key, value in items:
        found = _non_finite(value, f"{prefix}[{key}]" if isinstance(key, int) else f"{prefix}.{key}".lstrip("."))
        if found is not None:
            return found
    return None
