"""The eval registry: ``@register("name")`` on a class with a ``Config`` dataclass and ``run(ctx)``;
other packages add evals through the ``shardlab.evals`` entry-point group."""

from __future__ import annotations

import difflib
from importlib import metadata
from typing import Callable, TypeVar

from shardlab.trainers.kinds import stored_kind

ENTRY_POINT_GROUP = "shardlab.evals"
_REGISTRY: dict[str, type] = {}
_plugins_loaded = False
T = TypeVar("T", bound=type)


class EvalError(ValueError):
    """Bad input to the eval suite (unknown eval, a checkpoint it does not fit, bad config)."""


def register(name: str) -> Callable[[T], T]:
    """Class decorator adding an eval under ``name``; it needs a ``Config`` dataclass and ``run(ctx)``.

    An optional class attribute ``kinds = ("ppo", ...)`` names the training kinds (config ``algo`` values) it fits;
    ``version`` (a positive integer, default 1) goes into every results.json row as ``eval_version``:
    bump it when a change makes the eval's numbers incomparable with older results (baseline
    comparisons refuse to compare across versions).
    """
    def add(cls: T) -> T:
        if not hasattr(cls, "Config") or not callable(getattr(cls, "run", None)):
            raise TypeError(f"eval {name!r} needs a Config dataclass and a run(ctx) method")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"eval name {name!r} is already registered by {_REGISTRY[name].__module__}")
        version = getattr(cls, "version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise TypeError(f"eval {name!r}: version must be a positive integer, got {version!r}")
        cls.name, cls.version = name, version
        _REGISTRY[name] = cls
        return cls
    return add


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import shardlab.evals.suite.builtin  # noqa: F401  (registers the evals shipped with shardlab)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry.load()  # importing the module runs its @register decorators


def available() -> list[str]:
    """Names of all registered evals, plugins included."""
    _load_plugins()
    return sorted(_REGISTRY)


def check_fits(cls: type, kind: str, checkpoint: str) -> None:
    """EvalError unless the eval's ``kinds`` (default: any) include the checkpoint's kind."""
    # a plugin written before kinds were spelled as algos may still say "ppo_maze"
    kinds = tuple(stored_kind(name) for name in getattr(cls, "kinds", None) or ())
    if kinds and kind not in kinds:
        raise EvalError(f"eval {cls.name!r} needs a {' or '.join(kinds)} checkpoint but {checkpoint} is "
                        f"a {kind} checkpoint; drop it with --only or use a suite for {kind}")


def get(name: str) -> type:
    """The eval class registered as ``name``; EvalError with close names if there is none."""
    _load_plugins()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; available: {', '.join(sorted(_REGISTRY))}"
        raise EvalError(f"unknown eval {name!r}{hint}")
    return _REGISTRY[name]
