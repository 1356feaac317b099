"""LightningModules, their data, checkpointing and the ``shardlab train|resume`` CLI."""

from shardlab import __version__

__all__ = ["__version__"]
