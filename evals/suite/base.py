"""What every eval class shares: its Config kept as ``self.config``, and the check, before anything
runs, that the network has every activation its Config names (``layer_fields``)."""

from __future__ import annotations

from typing import Any, ClassVar, Sequence


class Eval:
    """Optional base of a registered eval.

    ``layer_fields`` names the Config fields that hold activation (HookPoint) names: a string, a
    list of strings or None. :meth:`check_model` refuses a network that lacks one of them, naming
    the config key, before the suite plays a single episode.
    """

    name: ClassVar[str] = ""  # set by @register
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
    from shardlab.evals.suite.registry import EvalError
    from shardlab.models.hooks import HookError, hooked  # torch: only once a model is being checked

    for key, names in layers.items():
        try:
            with hooked(model, cache=list(names)):
                pass
        except HookError as exc:
            raise EvalError(f"{key}: {exc}") from None
