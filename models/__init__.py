"""The networks and what builds them: the IMPALA maze policy (``impala``), the MiniGrid
actor-critics (``minigrid_policy``, sharing ``actor_critic``'s layout), the decision transformer
(``decision_transformer``) and the image classifier (``classifier``), each with its builder from a
training config (``build_policy``, ``build_minigrid_policy``, ``build_decision_transformer``,
``build_classifier``: the kind table in trainers/kinds.py names them and hands them what the env
tells, the observation shape and action count), plus sparse activations (``sparse``), hook points
(``hooks``), checkpoint-weight loading (``weights``) and beside each network its torch-free config
section (``*_config.py``). Imports nothing of envs/ or trainers/.

``ImpalaPolicy`` and ``preprocess`` are imported on first use, so importing a config module of
this package (``shardlab.models.sparse_config``, ...) does not import torch.
"""

from __future__ import annotations

__all__ = ["ImpalaPolicy", "preprocess"]


def __getattr__(name: str):
    """``ImpalaPolicy`` and ``preprocess`` from models.impala, imported on first use."""
    if name in __all__:
        from shardlab.models import impala

        return getattr(impala, name)
    raise AttributeError(f"module 'shardlab.models' has no attribute {name!r}")
