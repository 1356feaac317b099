"""ConfigError and the one-line checks every config schema's validator uses.

A leaf module (it imports nothing of shardlab), so a schema beside its trainer, model or env can
raise the error that ``shardlab train`` and ``shardlab config`` turn into exit status 2.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

MAX_SEED = 2**32 - 1  # Lightning/numpy seeds are unsigned 32-bit


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and what to do."""


def need(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless ``ok``: the one-line form every validator uses."""
    if not ok:
        raise ConfigError(message)


def need_finite(section: Any, prefix: str, keys: Sequence[str]) -> None:
    """ConfigError naming the first of ``keys`` of ``section`` that is NaN or infinite."""
    for key in keys:
        value = section[key]
        need(value is None or math.isfinite(value), f"{prefix}.{key} must be a finite number, got {value}")


def need_one_of(value: Any, choices: Sequence[str], key: str) -> None:
    """ConfigError naming ``key`` and the ``choices`` unless ``value`` is one of them."""
    need(value in choices, f"{key} must be one of {', '.join(choices)}, got {value!r}")


def need_seed(value: int, key: str, high: int = MAX_SEED) -> None:
    """ConfigError unless a seed lies in [0, high]."""
    need(0 <= value <= high, f"{key} must be an integer in [0, {high}], got {value}")
