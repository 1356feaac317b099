"""The decision transformer's model section (models/decision_transformer.py), without torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

STATE_ENCODINGS = ("linear", "onehot")


@dataclass
class DTModelConfig:
    """The decision transformer (models/decision_transformer.py)."""

    kind: str = "decision_transformer"
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 2
    context: int = 20  # timesteps per window (3 tokens each with RTG, 2 without)
    dropout: float = 0.1
    state_encoding: str = "onehot"  # onehot: linear over the one-hot 7×7×3 encoding; linear: over raw values
    use_rtg: bool = True  # false: behavioural cloning, no return-to-go tokens
    use_mission: bool = False  # prepend the mission's words as tokens (BabyAI)
    mlp_activation: str = "gelu"  # relu, gelu, kwta, topk, l1 (models/sparse.py)
    mlp_activation_options: Dict[str, Any] = field(default_factory=dict)  # e.g. {percent_on: 0.1}
    mlp_ratio: int = 4
    rtg_scale: float = 1.0  # returns-to-go are divided by this before embedding
