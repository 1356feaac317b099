"""``benchmark.py learn``: does the recipe learn? Train it (or resume the run directory), then
evaluate every step-N checkpoint, sampled and greedy, and a random policy on the same held-out
mazes (the first episode of each seeded env), and print the learning curve.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict

from benchmarks.common import write_json_report

NAME = "learn"
HELP = "does the recipe learn? train, then evaluate each checkpoint against a random policy"
DEFAULT_CONFIG = os.path.join("configs", "train", "maze_ppo_cpu.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``learn``."""
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="training recipe")
    parser.add_argument("--run-dir", default="runs/bench-learn", help="run directory (resumed if it exists)")
    parser.add_argument("--steps", type=int, default=300_000, help="env steps to train")
    parser.add_argument("--checkpoint-every", type=int, default=50_000, help="env steps between evaluated checkpoints")
    parser.add_argument("--episodes", type=int, default=200, help="held-out episodes per policy and checkpoint")
    parser.add_argument("--json", help="write the curve as JSON here")
    parser.add_argument("overrides", nargs="*", help="config overrides")


def run(args: argparse.Namespace) -> int:
    """Train the recipe, evaluate every step-N checkpoint and a random policy on the same held-out mazes."""
    from omegaconf import OmegaConf

    from shardlab.envs.maze import MazeEnvConfig
    from shardlab.models.weights import load_policy_weights
    from shardlab import cli
    from shardlab.trainers.checkpointing import step_checkpoints
    from shardlab.trainers.config import load_config
    from shardlab.trainers.episodes import first_episodes, summarise
    from shardlab.trainers.ppo import build_policy

    start = time.perf_counter()
    length = [f"trainer.total_steps={args.steps}", f"trainer.checkpoint_every={args.checkpoint_every}",
              "trainer.keep_checkpoints=1000"]
    if os.path.isfile(os.path.join(args.run_dir, "config.yaml")):
        code = cli.main(["resume", args.run_dir, *length])
    else:
        code = cli.main(["train", args.config, *args.overrides, *length, "--run-dir", args.run_dir])
    if code:
        return code
    train_seconds = time.perf_counter() - start
    cfg = load_config(os.path.join(args.run_dir, "config.yaml"), length)
    held_out = MazeEnvConfig(**{**OmegaConf.to_container(cfg.env), "num_envs": args.episodes, "seed": 987_654})
    rows = [{"env_steps": 0, "policy": "random", **asdict(summarise(first_episodes(None, held_out)))}]
    for steps, path in step_checkpoints(os.path.join(args.run_dir, "checkpoints")):
        policy = load_policy_weights(build_policy(cfg), path).eval()
        for greedy in (False, True):
            summary = summarise(first_episodes(policy, held_out, greedy=greedy))
            rows.append({"env_steps": steps, "policy": "greedy" if greedy else "sampled", **asdict(summary)})
    print(f"\nlearning curve: {args.config}, {args.episodes} held-out mazes per row "
          f"(first episode of each seeded env, cheese region {cfg.env.rand_region}), "
          f"training took {train_seconds / 60:.1f} min")
    print(f"  {'env steps':>10}  {'policy':<8} {'mean return':>14} {'cheese':>7} {'corner':>7} {'length':>7}")
    for row in rows:
        print(f"  {row['env_steps']:>10,}  {row['policy']:<8} {row['mean_return']:>7.2f} ± {row['return_stderr']:<4.2f} "
              f"{row['cheese_rate']:>7.1%} {row['corner_rate']:>7.1%} {row['mean_length']:>7.0f}")
    if args.json:
        write_json_report(args.json, {"benchmark": "learn", "config": args.config, "train_seconds": train_seconds,
                                      "rows": rows})
    return 0
