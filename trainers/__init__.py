"""LightningModules, their data, checkpointing and the ``shardlab train|resume`` CLI."""

from importlib import metadata

try:
    __version__ = metadata.version("shardlab")
except metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"
