"""The ``shardlab collect`` options, apart from the collector so that building the command line
imports neither MiniGrid nor torch."""

from __future__ import annotations

import argparse

from shardlab.envs.minigrid_config import OBSERVATIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``collect`` subcommand's arguments."""
    parser.add_argument("--env", required=True, help="MiniGrid/BabyAI env id, e.g. MiniGrid-DoorKey-5x5-v0")
    parser.add_argument("--source", required=True,
                        help="bot (BabyAI expert, BabyAI-* envs), random, or a ppo_minigrid checkpoint path")
    parser.add_argument("--episodes", type=int, required=True, help="episodes in total, over all settings")
    parser.add_argument("--out", required=True, help="dataset file (.npz) to write")
    parser.add_argument("--epsilon", default="0", help="comma list of ε (probability of a random action)")
    parser.add_argument("--temperature", default="1",
                        help="comma list of softmax temperatures (checkpoint sources only)")
    parser.add_argument("--seed", type=int, default=0, help="env and sampling seed")
    parser.add_argument("--obs", choices=OBSERVATIONS,
                        help="observation mode (default: the checkpoint's, else image)")
    parser.add_argument("--num-envs", type=int, default=16, help="envs stepped together")
    parser.add_argument("--max-steps", type=int, help="episode time limit (default: the env's own)")
    parser.add_argument("--append", action="store_true", help="add the episodes to an existing dataset")
    parser.add_argument("--force", action="store_true", help="overwrite an existing dataset")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
