"""Small configs the tests share: a tiny PPO maze run and a suite that runs in seconds on it."""

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAZE_RECIPE = os.path.join(ROOT, "configs", "train", "maze_ppo_cpu.yaml")
# overrides of MAZE_RECIPE: 128 env steps and 2 optimizer steps per iteration
TINY_PPO = ["env.num_envs=4", "ppo.num_steps=32", "ppo.minibatch_size=64", "ppo.epochs=1",
            "env.distribution_mode=easy", "trainer.checkpoint_every=128", "trainer.progress_bar=false",
            "trainer.keep_checkpoints=10"]

# goal_misgeneralization on 8 mazes, with a threshold that always holds
GOAL_MISGENERALIZATION = """
seed: 3
evals:
  goal_misgeneralization: {mazes: 8, decision_mazes: 8}
thresholds:
  goal_misgeneralization.p_neither: {max: 1.0}
"""


def metrics_rows(run_dir) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]
