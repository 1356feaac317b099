"""Load policy weights from a file: a bare state_dict or ``{model_state_dict, ...}``."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn


class WeightsError(ValueError):
    """A weights file that cannot be loaded into the model; the message says why and what to do."""


def read_state_dict(path: str | os.PathLike, prefix: str = "policy.") -> dict[str, torch.Tensor]:
    """Read a state_dict safely (weights_only) from a published or shardlab file.

    In a shardlab (Lightning) checkpoint the network's keys start with ``prefix`` (the module
    attribute holding it); the rest (e.g. the loss's copies) is dropped.
    """
    if os.path.isdir(path):
        raise WeightsError(f"weights file {path} is a folder; pass the weights file itself (e.g. a .pth)")
    if not os.path.isfile(path):
        raise WeightsError(f"weights file {path} does not exist; check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise WeightsError(f"weights file {path} is corrupt or not a torch file "
                           f"({type(exc).__name__}); re-download or re-save it") from None
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    elif isinstance(obj, Mapping) and "state_dict" in obj:
        obj = {k[len(prefix):]: v for k, v in obj["state_dict"].items() if k.startswith(prefix)}
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {path} holds no state_dict; expected a state_dict or "
                           "{'model_state_dict': ...}")
    return dict(obj)


def load_policy_weights(model: nn.Module, path: str | os.PathLike, prefix: str = "policy.") -> nn.Module:
    """Load a weights file into ``model`` strictly, naming missing, unexpected or misshapen keys."""
    state = read_state_dict(path, prefix)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or misshapen:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if misshapen:
            parts.append("shape mismatch " + _short(
                [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in misshapen]))
        raise WeightsError(f"weights file {path} does not fit this model: {'; '.join(parts)} "
                           "(check model.scale and the observation size)")
    model.load_state_dict(state)
    return model


def _short(items: list[str], limit: int = 4) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
