"""Decision-transformer training: windows and split, loss masking, the LR schedule, a tiny run that
learns, bit-exact resume, rebuilding from the checkpoint alone, bad input, and 2-process CPU DDP."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

from shardlab.models.decision_transformer import DecisionTransformer
from shardlab import cli
from shardlab.trainers.checkpointing import load_checkpoint
from shardlab.trainers.config import ConfigError, build_config
from shardlab.trainers.dt import action_loss, lr_factor
from shardlab.trainers.dt_data import EpisodeWindows, split_episodes
from shardlab.trainers.restore import load_trained
from shardlab.trainers.trajectories import from_episodes, save_trajectories

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "train", "dt_doorkey.yaml")


def tiny_dataset(path, episodes: int = 24, seed: int = 0, env_id: str = "MiniGrid-DoorKey-5x5-v0") -> str:
    """Episodes whose action is a function of the state (learnable), returns spread over [0, 1]."""
    rng = np.random.default_rng(seed)
    obs, actions, rewards = [], [], []
    for _ in range(episodes):
        length = int(rng.integers(2, 12))
        states = rng.integers(0, 3, (length, 7, 7, 3)).astype(np.uint8)
        obs.append(states)
        actions.append(states[:, 3, 6, 0].astype(np.int64))  # the cell in front decides the action
        reward = np.zeros(length, np.float32)
        reward[-1] = rng.random()
        rewards.append(reward)
    missions = ["go to the red ball", "go to a purple key"] * (episodes // 2) + ["open the door"] * (episodes % 2)
    traj = from_episodes(obs, actions, rewards, [True] * episodes, [False] * episodes, missions,
                         {"env_id": env_id, "obs": "image", "num_actions": 7, "max_steps": 250})
    save_trajectories(path, traj)
    return str(path)


def tiny_args(data: str, steps: int = 20) -> list[str]:
    return [f"data.path={data}", "model.n_layers=1", "model.d_model=32", "model.context=4", "optim.batch_size=16",
            "optim.warmup_steps=2", "monitor.log_every=5", "monitor.validate_every=10", f"trainer.total_steps={steps}",
            "trainer.checkpoint_every=10", "trainer.progress_bar=false", "trainer.keep_checkpoints=5"]


def rows(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def test_windows_are_left_padded_within_one_episode(tmp_path):
    from shardlab.trainers.trajectories import load_trajectories
    traj = load_trajectories(tiny_dataset(tmp_path / "d.npz"))
    windows = EpisodeWindows(traj, np.array([1, 2]), context=4)
    start = int(traj.episode_starts[1])
    assert len(windows) == int(traj.episode_lengths[1] + traj.episode_lengths[2])
    batch = windows.gather(torch.tensor([start + 1]))
    assert batch.step_mask.tolist() == [[False, False, True, True]]
    assert batch.timesteps[0, 2:].tolist() == [0, 1]
    assert torch.equal(batch.states[0, 3], torch.from_numpy(traj.observations[start + 1]))
    first = windows.sample(64, torch.Generator().manual_seed(0))
    again = windows.sample(64, torch.Generator().manual_seed(0))
    assert torch.equal(first.states, again.states)
    # every real step of every window belongs to the window's own episode
    episode_of = torch.from_numpy(np.repeat(np.arange(traj.num_episodes), traj.episode_lengths))
    assert set(episode_of[windows.ends].tolist()) == {1, 2}


def test_episode_split_is_seeded_and_disjoint():
    train, validation = split_episodes(50, 0.2, seed=3)
    assert len(validation) == 10 and not set(train) & set(validation) and len(train) + len(validation) == 50
    assert np.array_equal(split_episodes(50, 0.2, seed=3)[1], validation)
    assert not np.array_equal(split_episodes(50, 0.2, seed=4)[1], validation)
    assert len(split_episodes(5, 0.0, seed=0)[1]) == 0 and len(split_episodes(2, 0.9, seed=0)[0]) == 1


def test_loss_and_accuracy_count_real_steps_only(tmp_path):
    from shardlab.trainers.trajectories import load_trajectories
    traj = load_trajectories(tiny_dataset(tmp_path / "d.npz"))
    windows = EpisodeWindows(traj, np.arange(traj.num_episodes), context=4)
    batch = windows.sample(32, torch.Generator().manual_seed(1))
    logits = torch.randn(32, 4, 7)
    loss, correct, count = action_loss(logits, batch)
    pad = ~batch.step_mask
    assert pad.any() and count == batch.step_mask.sum()
    altered = torch.where(pad.unsqueeze(-1), torch.randn(32, 4, 7) * 50, logits)
    batch.actions[pad] = 6 - batch.actions[pad]
    assert torch.equal(action_loss(altered, batch)[0], loss) and action_loss(altered, batch)[1] == correct


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1) and lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.55)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_tiny_run_learns_logs_and_rebuilds_from_the_checkpoint_alone(tmp_path):
    data = tiny_dataset(tmp_path / "d.npz")
    run_dir = tmp_path / "run"
    assert cli.main(["train", RECIPE, *tiny_args(data, steps=60), "optim.lr=3e-3", "model.dropout=0.0",
                     "--run-dir", str(run_dir)]) == 0
    logged = rows(run_dir)
    assert [r["steps"] for r in logged] == list(range(5, 65, 5))
    assert logged[-1]["samples"] == 60 * 16
    assert logged[-1]["train/accuracy"] > logged[0]["train/accuracy"] + 0.2  # actions follow the state
    assert "val/loss" in logged[1] and "val/accuracy" in logged[-1] and "val/loss" not in logged[0]
    assert os.listdir(run_dir / "tb")
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["shardlab"]["kind"] == "dt" and ckpt["shardlab"]["steps"] == 60
    spec = ckpt["hyper_parameters"]["config"]["spec"]
    assert spec["obs_shape"] == [7, 7, 3] and spec["num_actions"] == 7 and spec["max_timestep"] == 250
    assert spec["env_id"] == "MiniGrid-DoorKey-5x5-v0" and 0 <= spec["return_min"] <= spec["return_max"] <= 1
    os.remove(data)  # the checkpoint alone is enough to rebuild the network
    trained = load_trained(run_dir / "checkpoints" / "last.ckpt")
    assert isinstance(trained.model, DecisionTransformer) and trained.kind == "dt" and trained.steps == 60
    assert not trained.model.training and trained.model.context == 4


def test_resume_is_bit_exact(tmp_path):
    data = tiny_dataset(tmp_path / "d.npz")
    straight, split = tmp_path / "straight", tmp_path / "split"
    for run_dir in (straight, split):
        assert cli.main(["train", RECIPE, *tiny_args(data), "--run-dir", str(run_dir)]) == 0
    checkpoints = split / "checkpoints"
    os.remove(checkpoints / "last.ckpt")
    os.remove(checkpoints / "step-000000000020.ckpt")
    os.link(checkpoints / "step-000000000010.ckpt", checkpoints / "last.ckpt")
    assert cli.main(["resume", str(split)]) == 0
    after, reference = (load_checkpoint(d / "checkpoints" / "last.ckpt") for d in (split, straight))
    assert after["global_step"] == reference["global_step"] == 20
    for key, value in reference["state_dict"].items():
        assert torch.equal(after["state_dict"][key], value), key  # same windows, dropout masks and schedule
    timeless = lambda run: [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows(run)]
    assert timeless(split) == timeless(straight)  # every step logged once, with the same numbers


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    data = tiny_dataset(tmp_path / "d.npz")
    cases = [[f"data.path={tmp_path / 'missing.npz'}"], ["model.d_model=30", "model.n_heads=4"],
             ["model.mlp_activation=swish"], ["model.mlp_activation_options={percent_onn: 0.1}"],
             ["optim.lrr=1e-3"]]
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip file")
    cases.append([f"data.path={tmp_path / 'corrupt.npz'}"])
    for number, overrides in enumerate(cases):
        capsys.readouterr()
        args = [*tiny_args(data), *overrides, "--run-dir", str(tmp_path / f"bad{number}")]
        assert cli.main(["train", RECIPE, *args]) == 2, overrides
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error" in err[0], (overrides, err)
    # resuming on a dataset with other observations is refused before training
    run_dir = tmp_path / "run"
    assert cli.main(["train", RECIPE, *tiny_args(data, steps=10), "--run-dir", str(run_dir)]) == 0
    from shardlab.trainers.trajectories import load_trajectories
    traj = load_trajectories(data)
    traj.metadata["max_steps"] = 100
    save_trajectories(data, traj)
    capsys.readouterr()
    assert cli.main(["resume", str(run_dir), "trainer.total_steps=20"]) == 2
    assert "spec.max_timestep" in capsys.readouterr().err


def test_onehot_encoding_needs_index_observations():
    cfg = build_config({"algo": "dt", "spec": {"obs_shape": [7, 7, 20], "num_actions": 7, "obs": "onehot"}})
    from shardlab.trainers.dt import DTModule
    with pytest.raises(ConfigError, match="state_encoding=linear"):
        DTModule.build_model(cfg)


@pytest.mark.slow("ddp")
def test_ddp_two_cpu_processes(tmp_path, warm_python):
    # rank 0 forks from a warm interpreter (tests/warm_python.py); Lightning starts rank 1 afresh
    data = tiny_dataset(tmp_path / "d.npz")
    run_dir = tmp_path / "ddp"
    result = warm_python.run(["train", RECIPE, *tiny_args(data, steps=10), "trainer.accelerator=cpu",
                              "trainer.devices=2", "--run-dir", str(run_dir)], ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 10 and ckpt["hyper_parameters"]["world_size"] == 2
    assert ckpt["shardlab"]["samples"] == 10 * 16 * 2  # windows summed over both ranks
    assert rows(run_dir)[-1]["samples"] == 320 and "val/accuracy" in rows(run_dir)[-1]


def test_doorkey_planner_data_spreads_returns(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("dt_doorkey_data", os.path.join(ROOT, "scripts", "dt_doorkey_data.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    planner = script.collect("MiniGrid-DoorKey-5x5-v0", epsilon=0.0, episodes=3, seed=5)
    assert planner.terminated.all() and (planner.episode_returns > 0.9).all()  # the planner solves DoorKey
    assert planner.metadata["max_steps"] == 250 and planner.obs_shape == (7, 7, 3)
    out = tmp_path / "mix.npz"
    assert script.main(["--out", str(out), "--epsilons", "0", "1", "--episodes", "2", "--seed", "9"]) == 0
    from shardlab.trainers.trajectories import load_trajectories
    data = load_trajectories(out)
    assert data.num_episodes == 4 and len(data.metadata["parts"]) == 2


def test_benchmark_measures_both_sides(tmp_path):
    import argparse
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from benchmarks import dt as bench_dt
    args = argparse.Namespace(config=RECIPE, data=tiny_dataset(tmp_path / "d.npz"), steps=2, warmup=1, repeats=1,
                              overrides=["model.n_layers=1", "model.d_model=32", "model.context=4", "optim.batch_size=8"],
                              json=None)
    report = bench_dt.measure(args)
    assert [r["name"] for r in report["runs"]] == ["trainer", "plain"]
    assert report["config"]["tokens_per_step"] == 8 * 12 and report["ratio_trainer_over_plain"] > 0
    assert "trainer / plain" in bench_dt.format_report(report)
