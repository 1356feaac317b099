"""Load policy weights from a file: a bare state_dict or ``{model_state_dict, ...}``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from shardlab.torch_files import Advice, read_torch_file


class WeightsError(ValueError):
    """A weights file that cannot be loaded into the model; the message says why and what to do."""


WEIGHTS = Advice("weights file", "pass the weights file itself (e.g. a .pth)", "re-download or re-save it")


def state_dict_of(obj: Any, source: str, prefix: str = "policy.") -> dict[str, torch.Tensor]:
    """The network's state_dict inside a loaded weights or checkpoint object: a bare state_dict,
    ``{'model_state_dict': ...}``, or a shardlab (Lightning) checkpoint, whose network keys start
    with ``prefix`` (the module attribute holding it; the rest, e.g. the loss's copies, is dropped)."""
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    elif isinstance(obj, Mapping) and "state_dict" in obj:
        obj = {k[len(prefix):]: v for k, v in obj["state_dict"].items() if k.startswith(prefix)}
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {source} holds no state_dict; expected a state_dict or "
                           "{'model_state_dict': ...}")
    return dict(obj)


def read_weights_file(path: str | os.PathLike, prefix: str = "policy.") -> tuple[dict[str, torch.Tensor], str]:
    """A weights file's state_dict (read safely, weights_only) and the file's SHA-256, from one read."""
    loaded, sha256 = read_torch_file(path, WeightsError, WEIGHTS)
    return state_dict_of(loaded, os.fspath(path), prefix), sha256


def read_state_dict(path: str | os.PathLike, prefix: str = "policy.") -> dict[str, torch.Tensor]:
    """Read a state_dict safely (weights_only) from a published or shardlab file (see :func:`state_dict_of`)."""
    return read_weights_file(path, prefix)[0]


def load_policy_weights(model: nn.Module, weights: Mapping[str, torch.Tensor] | str | os.PathLike,
                        prefix: str = "policy.", source: str | None = None) -> nn.Module:
    """Load a state_dict (or the weights file at a path) into ``model`` strictly, naming missing,
    unexpected or misshapen keys; ``source`` names where the state_dict came from in errors."""
    if isinstance(weights, Mapping):
        state, path = dict(weights), source or "<state_dict>"
    else:
        state, path = read_state_dict(weights, prefix), os.fspath(weights)
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
