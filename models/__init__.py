"""nn.Modules: the IMPALA policy and checkpoint-weight loading, and beside each network its
torch-free config section (``*_config.py``).

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
