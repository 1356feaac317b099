"""The activation options every network's model section shares (``activation``, ``percent_on``,
``boost_strength``, ...) and their checks, without torch: models/sparse.py builds the activations
they name, the trainers' schemas extend :class:`ActivationConfig`."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Optional

from shardlab.configs.checks import need, need_finite, need_one_of

KINDS = ("relu", "gelu", "kwta", "topk", "l1")
SPARSE_KINDS = ("kwta", "topk", "l1")  # kinds that change what a dense network computes
OPTIONS = {"relu": (), "gelu": (), "l1": (), "topk": ("percent_on", "local"),
           "kwta": ("units", "percent_on", "boost_strength", "duty_cycle_period", "local", "k_inference_factor")}


def check_fraction(name: str, value: float) -> None:
    """ValueError unless ``value`` is in (0, 1]."""
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}; e.g. {name}=0.1 keeps 10% of units")


def check_kwinners(units: Optional[int] = None, percent_on: float = 0.1, boost_strength: float = 1.0,
                   duty_cycle_period: int = 1000, k_inference_factor: float = 1.0) -> None:
    """ValueError (TypeError for a non-integer ``units``) for options models.sparse.KWinners cannot take."""
    if units is not None:
        try:
            operator.index(units)
        except TypeError:
            raise TypeError(f"units must be an integer (the layer width), got {units!r}") from None
    check_fraction("percent_on", percent_on)
    if boost_strength < 0:
        raise ValueError(f"boost_strength must be >= 0, got {boost_strength}; 0 turns boosting off")
    if duty_cycle_period < 1:
        raise ValueError(f"duty_cycle_period must be >= 1, got {duty_cycle_period}")
    if k_inference_factor < 1 or percent_on * k_inference_factor > 1:
        raise ValueError(f"k_inference_factor must be >= 1 with percent_on × factor <= 1, got "
                         f"{k_inference_factor} (percent_on {percent_on})")


def check_activation(kind: str = "relu", **options: Any) -> dict[str, Any]:
    """The options of ``options`` that activation ``kind`` uses (a config can carry every sparse
    option whatever the kind); ValueError for an unknown kind or option or a bad value."""
    if kind not in OPTIONS:
        raise ValueError(f"unknown activation {kind!r}; choose one of {', '.join(KINDS)}")
    known = set().union(*OPTIONS.values())
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown activation option {', '.join(unknown)}; options are "
                         f"{', '.join(sorted(known))}")
    used = {key: value for key, value in options.items() if key in OPTIONS[kind]}
    if kind == "topk":
        check_fraction("percent_on", used.get("percent_on", 0.1))
    elif kind == "kwta":
        check_kwinners(**{key: value for key, value in used.items() if key != "local"})
    return used


@dataclass
class ActivationConfig:
    """The activation of a network and the options of the sparse kinds (models/sparse.py); every
    algo's model section extends it. The default relu is the dense network."""

    activation: str = "relu"  # relu, kwta, topk, l1 (ReLU + l1_coef·mean|activation| loss) or gelu
    sparse_layers: list[str] = field(default_factory=lambda: ["*"])  # fnmatch patterns over the activation sites
    percent_on: float = 0.1  # kwta/topk: fraction of units kept
    boost_strength: float = 1.0  # kwta: boost factor exp((percent_on − duty_cycle)·boost_strength)
    duty_cycle_period: int = 1000  # kwta: samples averaged in the duty cycle
    kwta_local: bool = False  # kwta/topk on conv maps: per location over channels, not over C·H·W
    k_inference_factor: float = 1.0  # kwta: percent_on × this many winners in eval mode (nupic: 1.5)
    l1_coef: float = 0.0  # activation=l1: weight of the summed mean |activation| in the loss


def activation_options(model: Any) -> dict:
    """The models.sparse options (make_activation keywords) a model section sets."""
    return dict(percent_on=model.percent_on, boost_strength=model.boost_strength,
                duty_cycle_period=model.duty_cycle_period, local=model.kwta_local,
                k_inference_factor=model.k_inference_factor)


def validate_sparse_options(model: Any) -> None:
    """Checks of the activation options every network's model section shares (activation,
    percent_on, boost_strength, k_inference_factor, duty_cycle_period, l1_coef)."""
    need_one_of(model.activation, KINDS, "model.activation")
    need_finite(model, "model", ["percent_on", "boost_strength", "k_inference_factor", "l1_coef"])
    need(0 < model.percent_on <= 1, f"model.percent_on must be in (0, 1], got {model.percent_on}")
    need(model.boost_strength >= 0, f"model.boost_strength must be >= 0, got {model.boost_strength}")
    need(model.k_inference_factor >= 1 and model.percent_on * model.k_inference_factor <= 1,
         f"model.k_inference_factor must be >= 1 with percent_on × factor <= 1, got {model.k_inference_factor}")
    need(model.duty_cycle_period >= 1, f"model.duty_cycle_period must be >= 1, got {model.duty_cycle_period}")
    need(model.l1_coef >= 0, f"model.l1_coef must be >= 0, got {model.l1_coef}")
    need(model.l1_coef == 0 or model.activation == "l1",
         f"model.l1_coef={model.l1_coef} only acts with model.activation=l1 (got {model.activation!r})")
