"""The ``shardlab`` command lives in shardlab/cli.py; this name stays for imports of the old path."""

from shardlab.cli import main

__all__ = ["main"]
