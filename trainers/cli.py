"""``python -m shardlab.trainers.cli`` runs the ``shardlab`` command (shardlab/cli.py), which
multi-process launchers re-execute."""

import sys

from shardlab.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
