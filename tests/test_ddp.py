"""DDP on 2 CPU processes: same optimizer steps on every rank, env steps counted over ranks."""

from __future__ import annotations

import pytest

import os

from shardlab.envs.maze import MazeEnv, MazeEnvConfig
from shardlab.trainers.checkpointing import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "train", "maze_ppo_cpu.yaml")


@pytest.mark.slow("ddp")
def test_ddp_two_cpu_processes_train_and_resume(tmp_path, warm_python):
    # rank 0 forks from a warm interpreter (tests/warm_python.py); Lightning starts rank 1 afresh
    run_dir = tmp_path / "ddp"
    tiny = ["env.num_envs=4", "ppo.num_steps=32", "ppo.minibatch_size=64", "ppo.epochs=1",
            "trainer.accelerator=cpu", "trainer.devices=2", "trainer.checkpoint_every=256",
            "trainer.progress_bar=false"]
    result = warm_python.run(["train", RECIPE, *tiny, "trainer.total_steps=512", "--run-dir", str(run_dir)], ROOT,
                             timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    # 2 ranks × 4 envs × 32 steps = 256 env steps per iteration, 2 optimizer steps each
    assert ckpt["shardlab"]["env_steps"] == 512 and ckpt["global_step"] == 4
    assert ckpt["hyper_parameters"]["world_size"] == 2

    result = warm_python.run(["resume", str(run_dir), "trainer.total_steps=1024"], ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["shardlab"]["env_steps"] == 1024 and ckpt["global_step"] == 8


def test_ranks_get_distinct_mazes():
    cfg = MazeEnvConfig(num_envs=8, distribution_mode="hard", rand_region=5, seed=3)
    envs = [MazeEnv(cfg, rank=0), MazeEnv(cfg, rank=1), MazeEnv(cfg, rank=0)]
    try:
        first, second, again = (env.reset() for env in envs)
        assert not first.equal(second)
        assert first.equal(again)  # seeded: the same rank sees the same mazes
    finally:
        for env in envs:
            env.close()
