"""Resume continues the step counter, LR schedule and reward normaliser; SIGKILL loses at most one
checkpoint interval and leaves no corrupt checkpoint."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
import torch

from shardlab import cli
from shardlab.trainers.checkpointing import load_checkpoint, step_checkpoints
from tiny_suites import MAZE_RECIPE, TINY_PPO, metrics_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE, TINY = MAZE_RECIPE, TINY_PPO


def test_resume_continues_steps_lr_and_normaliser(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert cli.main(["train", RECIPE, *TINY, "trainer.total_steps=512", "--run-dir", str(straight)]) == 0
    # the same run stopped half-way (as if the job ended), then resumed with the full length: a copy
    # of the straight run (the same command wrote it) cut back to its 256-step checkpoint
    shutil.copytree(straight, split)
    os.remove(split / "checkpoints" / "last.ckpt")
    for steps, path in step_checkpoints(str(split / "checkpoints")):
        if steps > 256:
            os.remove(path)
    half = split / "checkpoints" / "step-000000000256.ckpt"
    os.link(half, split / "checkpoints" / "last.ckpt")
    before = load_checkpoint(half)
    assert before["global_step"] == 4 and before["shardlab"]["env_steps"] == 256

    assert cli.main(["resume", str(split)]) == 0
    after, reference = load_checkpoint(split / "checkpoints" / "last.ckpt"), load_checkpoint(
        straight / "checkpoints" / "last.ckpt")
    assert after["global_step"] == reference["global_step"] == 8
    assert after["shardlab"]["env_steps"] == 512
    lr = lambda ckpt: ckpt["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr(after) == pytest.approx(lr(reference))
    assert after["lr_schedulers"][0]["last_epoch"] == reference["lr_schedulers"][0]["last_epoch"]
    # the normaliser kept counting from where it was
    assert after["shardlab"]["reward_norm"]["count"] > before["shardlab"]["reward_norm"]["count"]
    # the learning curve has every iteration exactly once, with the same LRs as the straight run
    rows = metrics_rows(split)
    assert [r["env_steps"] for r in rows] == [128, 256, 384, 512]
    assert [r["train/lr"] for r in rows] == pytest.approx([r["train/lr"] for r in metrics_rows(straight)])


def test_checkpoint_carries_resolved_config(tmp_path):
    assert cli.main(["train", RECIPE, *TINY, "trainer.total_steps=128", "ppo.lr=3e-4",
                     "--run-dir", str(tmp_path / "run")]) == 0
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    config = ckpt["hyper_parameters"]["config"]
    assert config["ppo"]["lr"] == 3e-4 and config["env"]["num_envs"] == 4
    assert ckpt["shardlab"]["kind"] == "ppo"  # the config's algo
    assert all(k.startswith(("policy.", "loss.")) for k in ckpt["state_dict"])
    # weights_only loading works: nothing in the file needs unpickling of arbitrary objects
    torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)


def test_sigkill_then_resume(tmp_path, warm_python):
    run_dir = tmp_path / "killed"
    # a real process, forked from a warm interpreter (tests/warm_python.py)
    process = warm_python.start(["train", RECIPE, *TINY, "trainer.total_steps=1280", "--run-dir", str(run_dir)], ROOT)
    checkpoints = run_dir / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and len(step_checkpoints(str(checkpoints))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = step_checkpoints(str(checkpoints))
    assert 2 <= len(saved) < 10, "the run should have been killed part-way"
    # every checkpoint file on disk is complete
    for _, path in saved:
        load_checkpoint(path)
    last = load_checkpoint(checkpoints / "last.ckpt")
    assert last["shardlab"]["env_steps"] >= saved[-2][0]  # at most one interval behind

    assert cli.main(["resume", str(run_dir)]) == 0
    final = load_checkpoint(checkpoints / "last.ckpt")
    assert final["shardlab"]["env_steps"] == 1280
    assert not [n for n in os.listdir(checkpoints) if ".tmp-" in n]
    steps = [r["env_steps"] for r in metrics_rows(run_dir)]
    assert steps == sorted(set(steps)) and steps[-1] == 1280


def test_resume_reports_corrupt_checkpoint_by_name(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["train", RECIPE, *TINY, "trainer.total_steps=128", "--run-dir", str(run_dir)]) == 0
    last = run_dir / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    os.remove(last)
    last.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert cli.main(["resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "last.ckpt" in err and "corrupt" in err and len(err.splitlines()) == 1


def test_resume_rejects_changed_model(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["train", RECIPE, *TINY, "trainer.total_steps=128", "--run-dir", str(run_dir)]) == 0
    assert cli.main(["resume", str(run_dir), "model.scale=2"]) == 2
    assert "model" in capsys.readouterr().err
