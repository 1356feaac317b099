"""nn.Modules: the IMPALA policy and checkpoint-weight loading."""

from shardlab.models.impala import ImpalaPolicy, preprocess

__all__ = ["ImpalaPolicy", "preprocess"]
