"""Thin wrapper: ``python scripts/train.py CONFIG.yaml [key=value ...] [--run-dir DIR]``."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shardlab.trainers.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
