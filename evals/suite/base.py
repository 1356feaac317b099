"""What every eval shares: ``@register`` declaring it, ``EvalError`` for bad input, the optional
``Eval`` base class with its Config kept as ``self.config``, and the check, before anything runs,
that the network has every activation its Config names (``layer_fields``).

This module imports no eval and no registry, so an eval importing it closes no import cycle: the
registry (``registry``) imports the evals, the evals import this."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence, TypeVar

T = TypeVar("T", bound=type)

# every eval class whose @register has run, by name; the registry reads it after importing the evals
DECLARED: dict[str, type] = {}


class EvalError(ValueError):
    """Bad input to the eval suite (unknown eval, a checkpoint it does not fit, bad config)."""


def register(name: str) -> Callable[[T], T]:
    """Class decorator declaring an eval as ``name``; it needs a ``Config`` dataclass and ``run(ctx)``.

    Optional class attributes: ``kinds = ("ppo", ...)``, the training kinds (config ``algo``
    values) it fits; ``version`` (a positive integer, default 1), written into every results.json
    row as ``eval_version`` (bump it when a change makes the eval's numbers incomparable with older
    results: baseline comparisons refuse to compare across versions); ``headline``, the metric
    names a sweep plots and a report lists first (a tuple of strings, default none).
    """
    def add(cls: T) -> T:
        if not hasattr(cls, "Config") or not callable(getattr(cls, "run", None)):
            raise TypeError(f"eval {name!r} needs a Config dataclass and a run(ctx) method")
        if name in DECLARED and DECLARED[name] is not cls:
            raise ValueError(f"eval name {name!r} is already registered by {DECLARED[name].__module__}")
        version = getattr(cls, "version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise TypeError(f"eval {name!r}: version must be a positive integer, got {version!r}")
        headline = getattr(cls, "headline", ())
        if not isinstance(headline, tuple) or not all(isinstance(metric, str) and metric for metric in headline):
            raise TypeError(f"eval {name!r}: headline must be a tuple of metric names, got {headline!r}")
        cls.name, cls.version, cls.headline = name, version, headline
        DECLARED[name] = cls
        return cls
    return add


class Eval:
    """Optional base of a registered eval.

    ``layer_fields`` names the Config fields that hold activation (HookPoint) names: a string, a
    list of strings or None. :meth:`check_model` refuses a network that lacks one of them, naming
    the config key, before the suite plays a single episode.
    """

    name: ClassVar[str] = ""  # set by @register
    headline: ClassVar[tuple[str, ...]] = ()  # the metrics a sweep plots and a report lists first
    layer_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any) -> None:
        self.config = config

    def check_model(self, model: Any, train_config: Any) -> None:
        """EvalError naming the config key of a layer the network lacks."""
        layers = {}
        for field in self.layer_fields:
            value = getattr(self.config, field)
            layers[f"{self.name}.{field}"] = [value] if isinstance(value, str) else list(value or [])
        require_layers(model, layers)


def require_layers(model: Any, layers: dict[str, Sequence[str]]) -> None:
    """EvalError naming the config key (``{"steering.layer": [name]}``) of a layer the network lacks."""
    from shardlab.models.hooks import HookError, hooked  # torch: only once a model is being checked

    for key, names in layers.items():
        try:
            with hooked(model, cache=list(names)):
                pass
        except HookError as exc:
            raise EvalError(f"{key}: {exc}") from None
