"""SIGTERM / SIGINT stop a training run within seconds, mid-iteration, keeping the last complete
checkpoint, with exit code 128 + signal number and one line saying how to resume."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from shardlab.trainers import stopping
from shardlab.trainers.checkpointing import load_checkpoint, step_checkpoints
from tiny_suites import MAZE_RECIPE, metrics_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STOP_WITHIN = 10.0  # seconds from the signal to the process's exit

# A real `python -m shardlab` run whose iterations turn slow once the first checkpoint exists: a
# resumed run must keep env.num_envs, ppo.num_steps and ppo.epochs, so no config gives a quick first
# iteration and long later ones, and a config whose every iteration took minutes would make this
# test take minutes. The sleep is in the env step (rollout) or in each minibatch update, the two
# places an iteration spends its time.
SLOWED_RUN = """
import os, runpy, sys, time
phase, seconds, marker = sys.argv.pop(1), float(sys.argv.pop(1)), sys.argv.pop(1)
if phase == "rollout":
    from shardlab.envs.maze import MazeEnv as Slowed
    name = "step"
else:
    from shardlab.trainers.ppo import PPOModule as Slowed
    name = "_minibatch"
original = getattr(Slowed, name)
def slowed(self, *args):
    if os.path.exists(marker):
        time.sleep(seconds)
    return original(self, *args)
setattr(Slowed, name, slowed)
runpy.run_module("shardlab", run_name="__main__", alter_sys=True)
"""
# 4 envs × 64 steps = 256 env steps and 2 epochs × 4 minibatches = 8 optimizer steps per iteration,
# a checkpoint after every iteration; slowed, an iteration takes 16 s (rollout or updates)
OVERRIDES = ["env.num_envs=4", "ppo.num_steps=64", "ppo.minibatch_size=64", "ppo.epochs=2",
             "env.distribution_mode=easy", "trainer.checkpoint_every=256", "trainer.total_steps=25600",
             "trainer.loggers=[]"]
SLEEP = {"rollout": 0.25, "update": 2.0}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _stop_mid_iteration(tmp_path, warm_python, signum: int, phase: str, progress_bar: bool = False,
                        extra: tuple[str, ...] = ()) -> tuple[str, float, int, str]:
    """Start a slowed run (forked from a warm interpreter, tests/warm_python.py), signal it 1 s into
    its second iteration; (run dir, seconds to exit, exit code, stderr)."""
    run_dir = str(tmp_path / "run")
    last = os.path.join(run_dir, "checkpoints", "last.ckpt")
    argv = [phase, str(SLEEP[phase]), last, "train", MAZE_RECIPE, *OVERRIDES,
            f"trainer.progress_bar={str(progress_bar).lower()}", *extra, "--run-dir", run_dir]
    process = warm_python.start(argv, ROOT, _env(), code=SLOWED_RUN)
    try:
        deadline = time.time() + 120
        while not os.path.exists(last) and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert os.path.exists(last), f"no first checkpoint: {process.stderr[-2000:]}"
        time.sleep(1.0)  # well inside the second, slow iteration
        assert process.poll() is None
        sent = time.perf_counter()
        process.send_signal(signum)
        code = process.wait(timeout=STOP_WITHIN + 20)
        seconds = time.perf_counter() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    print(f"{signal.Signals(signum).name} during the {phase}: exited {seconds:.2f} s after the signal")
    assert code is not None, "the run did not stop"
    return run_dir, seconds, code, process.stderr


def _assert_last_complete_checkpoint(run_dir: str) -> None:
    """Only the first iteration's checkpoint exists, and last.ckpt is it (nothing of the interrupted one)."""
    folder = os.path.join(run_dir, "checkpoints")
    assert sorted(os.listdir(folder)) == ["last.ckpt", "step-000000000256.ckpt"]
    (steps, path), = step_checkpoints(folder)
    last = os.path.join(folder, "last.ckpt")
    assert os.path.samefile(last, path)
    checkpoint = load_checkpoint(last)
    assert checkpoint["shardlab"]["env_steps"] == steps == 256 and checkpoint["global_step"] == 8
    assert [row["env_steps"] for row in metrics_rows(run_dir)] == [256]


@pytest.mark.parametrize(("signum", "phase", "code"), [(signal.SIGTERM, "rollout", 143), (signal.SIGINT, "update", 130)],
                         ids=["sigterm-rollout", "sigint-update"])
def test_signal_stops_mid_iteration(tmp_path, warm_python, signum, phase, code):
    run_dir, seconds, exit_code, stderr = _stop_mid_iteration(tmp_path, warm_python, signum, phase,
                                                              progress_bar=phase == "rollout")
    assert exit_code == code, stderr[-3000:]
    assert seconds < STOP_WITHIN
    message = stderr.rstrip("\n").splitlines()[-1]
    name = signal.Signals(signum).name
    assert message.startswith(f"shardlab: stopped by {name}; ") and f"`shardlab resume {run_dir}`" in message
    assert "Traceback" not in stderr
    _assert_last_complete_checkpoint(run_dir)
    if phase == "rollout":  # and the run continues from there
        resumed = warm_python.run(["resume", run_dir, "trainer.total_steps=512"], ROOT, _env(), timeout=120)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        after = load_checkpoint(os.path.join(run_dir, "checkpoints", "last.ckpt"))
        assert after["shardlab"]["env_steps"] == 512 and after["global_step"] == 16
        assert [row["env_steps"] for row in metrics_rows(run_dir)] == [256, 512]


@pytest.mark.slow("ddp")
def test_sigterm_stops_ddp_while_another_rank_waits_in_an_all_reduce(tmp_path, warm_python):
    # Lightning starts rank 1 from shardlab/__main__.py, without SLOWED_RUN's patch: it finishes its
    # rollout and waits in the first update's all-reduce while rank 0 is still in its slow rollout,
    # the case where Lightning's own SIGTERM handler (a broadcast inside the handler) would hang
    run_dir, seconds, exit_code, stderr = _stop_mid_iteration(
        tmp_path, warm_python, signal.SIGTERM, "rollout", extra=("trainer.accelerator=cpu", "trainer.devices=2"))
    assert exit_code == 143 and seconds < STOP_WITHIN, stderr[-3000:]
    assert "Traceback" not in stderr and stderr.rstrip("\n").splitlines()[-1].startswith("shardlab: stopped by SIGTERM; ")
    # 2 ranks × 256 env steps per iteration; the first complete iteration is the last checkpoint
    folder = os.path.join(run_dir, "checkpoints")
    assert sorted(os.listdir(folder)) == ["last.ckpt", "step-000000000512.ckpt"]
    assert load_checkpoint(os.path.join(folder, "last.ckpt"))["shardlab"]["env_steps"] == 512


def test_every_kind_stops_before_its_next_optimizer_step(tmp_path, capsys):
    # the classifier (no rollout): StopCheck ends it between steps; in-process, so fit's handlers
    # must also be gone afterwards
    from pytorch_lightning.callbacks import Callback

    from shardlab.trainers import run
    from shardlab.trainers.config import load_config

    class SignalAtStep(Callback):
        def on_train_batch_end(self, trainer, module, *args) -> None:
            if trainer.global_step == 10:  # past the first checkpoint (8 steps × 64 samples)
                os.kill(os.getpid(), signal.SIGTERM)

    cfg = load_config(os.path.join(ROOT, "configs", "train", "digits_dense.yaml"),
                      ["optim.eval_every=512", "trainer.checkpoint_every=512", "trainer.progress_bar=false",
                       "trainer.loggers=[]", "model.hidden=[32]"])
    run_dir = str(tmp_path / "run")
    module = run.build_module(cfg)
    run.prepare_run_dir(cfg, run_dir)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(stopping.RunStopped) as stopped:
        run.fit(cfg, run_dir, module=module, callbacks=[SignalAtStep()])
    assert stopped.value.code == 143 and module.global_step == 10
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert capsys.readouterr().err.splitlines()[-1].startswith("shardlab: stopped by SIGTERM; ")
    folder = os.path.join(run_dir, "checkpoints")
    assert sorted(os.listdir(folder)) == ["last.ckpt", "step-000000000512.ckpt"]
    assert load_checkpoint(os.path.join(folder, "last.ckpt"))["global_step"] == 8


def test_handlers_are_restored_and_a_second_signal_falls_back():
    calls = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    try:
        before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        with stopping.stop_on_signals():
            assert not stopping.stop_requested()
            os.kill(os.getpid(), signal.SIGINT)
            assert stopping.stop_requested() and calls == []  # the first one only asks to stop
            with pytest.raises(stopping.RunStopped) as stopped:
                stopping.raise_if_stop_requested()
            assert stopped.value.code == 130 and stopped.value.signum == signal.SIGINT
            os.kill(os.getpid(), signal.SIGINT)
            assert calls == [signal.SIGINT]  # the second one gets the handler from before
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
        assert not stopping.stop_requested()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_outside_the_main_thread_nothing_changes():
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def worker() -> None:
        with stopping.stop_on_signals():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [before]
