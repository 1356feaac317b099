"""The PPO recipe trains on grid observations and small mazes; the IMPALA net adapts to the input."""

from __future__ import annotations

import os

from shardlab import cli
from shardlab.models.weights import load_policy_weights
from shardlab.trainers.checkpointing import load_checkpoint
from shardlab.trainers.config import build_config, load_config
from shardlab.trainers.kinds import get_kind

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "train", "maze_ppo_cpu.yaml")


def test_grid_observation_run_trains_and_reloads(tmp_path):
    run_dir = tmp_path / "grid"
    overrides = ["env.obs=grid", "env.max_maze_size=7", "env.num_envs=4", "ppo.num_steps=32",
                 "ppo.minibatch_size=64", "ppo.epochs=1", "trainer.total_steps=256",
                 "trainer.progress_bar=false"]
    assert cli.main(["train", RECIPE, *overrides, "--run-dir", str(run_dir)]) == 0
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["shardlab"]["env_steps"] == 256
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.env.obs == "grid" and cfg.env.max_maze_size == 7
    policy = load_policy_weights(get_kind("ppo").build_network(cfg), run_dir / "checkpoints" / "last.ckpt")
    assert policy.image_size == 15  # easy mode: a 15×15 world


def test_policy_input_size_follows_observation():
    base, ppo = {"env": {"distribution_mode": "hard"}}, get_kind("ppo")
    assert ppo.build_network(build_config({**base, "env": {"obs": "grid", "distribution_mode": "hard"}})).image_size == 25
    assert ppo.build_network(build_config(base)).image_size == 64
