"""GPU check: ``python scripts/benchmarks/gpu.py [--cpu-smoke] [--out DIR]`` (or ``benchmark.py gpu``).

One command that shows a GPU machine runs everything shardlab trains and evaluates, and how fast.
Stages, each timed; a failing stage is recorded and the rest still run; the exit code is 1 when any
stage failed (2 for bad options), 0 otherwise:

* ``ppo-fp32``, ``ppo-bf16`` — the published recipe (configs/train/maze_ppo.yaml: scale-4 IMPALA,
  512 envs × 256 steps, minibatch 8192, 3 epochs) through the real ``PPOModule`` and
  ``trainers.run.fit`` (loggers, final checkpoint) for ``--ppo-warmup`` (1) + ``--ppo-iterations`` (2)
  iterations, at precision 32-true and bf16-mixed. Reports env steps/s over the timed iterations and
  where each iteration's time goes: env stepping (``MazeEnv.step``, after a device sync so it is
  CPU stepping only), policy forward (the rest of the rollout: forwards, sampling, copies, reward
  normalisation, GAE, shuffles) and update (the iteration's minibatch steps). ``--ppo-budget``
  (120 s) stops a precision early, at an iteration end, when another iteration would pass it, so
  slow hardware still finishes in time (at least one timed iteration always runs).
* ``dt`` — a small DoorKey data set from scripts/dt_doorkey_data.py (real MiniGrid envs), then
  ``shardlab train configs/train/dt_doorkey.yaml`` on the device (500 steps; full mode: the training
  loss must go down).
* ``classify`` — ``shardlab train`` of configs/train/digits_dense.yaml and digits_kwta.yaml on the
  device (full mode: validation accuracy must reach 0.8).
* ``eval`` — ``python -m shardlab eval tests/fixtures/ci_policy.ckpt --suite ci`` on the device in a
  fresh process, as CI runs it (``--limit 50 --baseline tests/fixtures/ci_baseline.json``): exit code
  0 and a results.json are required; a missed CI threshold or a regression against the CPU
  baseline means the device computes something else, so it fails the check.
* ``native`` — the native torch maze env (``env.backend: native``) with its tensors on the device:
  lock-step replays against procgen from the same states with the same actions (grid and RGB, 64
  envs × 200 steps; every frame, reward and done must be identical, else the stage fails), then
  bare env steps/s with random actions by batch size for both views, and procgen's at 1024 envs
  (target: >= 10M grid env steps/s on one GPU, reported, not enforced).
* ``ppo-native`` — ``ppo-bf16`` on ``env.backend: native`` (the env's tensors on the CPU, as the
  trainer builds it), for the native-vs-procgen ratio of the published recipe on the same GPU.

Without ``--cpu-smoke`` the sizes are the full ones above and the device is the GPU; ``--device cpu``
is refused then unless ``--stages`` leaves out the PPO stages (hours on a CPU).
``--cpu-smoke`` runs the same stages on the CPU with tiny sizes (scale 1, 4 envs × 16 steps, a few
DT/classifier steps, 4 eval mazes), in well under a minute; bf16-mixed is skipped, with the reason,
where the CPU cannot autocast to bfloat16. ``--out DIR`` gets gpu_check.json, gpu_check.log and the
stages' run and eval folders (checkpoints are deleted once checked, unless ``--keep-checkpoints``).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from typing import Any, Callable

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

NAME = "gpu"
HELP = ("GPU check: published PPO recipe in fp32 and bf16-mixed (env steps/s, env/forward/update split), "
        "DT and classifier training, CI eval suite; exit 1 on any failure")

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
STAGES = ("ppo-fp32", "ppo-bf16", "dt", "classify", "eval", "native", "ppo-native")
PRECISIONS = {"ppo-fp32": "32-true", "ppo-bf16": "bf16-mixed", "ppo-native": "bf16-mixed"}
NATIVE_TARGET = 10e6  # grid env steps/s of the bare native env on one GPU
NATIVE_SIZES = {"full": {"grid": [1024, 16384, 65536], "rgb": [1024, 8192]}, "smoke": {"grid": [8], "rgb": [8]}}
NATIVE_REPLAY = {"full": (64, 200), "smoke": (4, 10)}  # envs, steps
PPO_RECIPE = os.path.join("configs", "train", "maze_ppo.yaml")
DT_RECIPE = os.path.join("configs", "train", "dt_doorkey.yaml")
CLASSIFY_RECIPES = (os.path.join("configs", "train", "digits_dense.yaml"),
                    os.path.join("configs", "train", "digits_kwta.yaml"))
EVAL_CHECKPOINT = os.path.join("tests", "fixtures", "ci_policy.ckpt")
EVAL_BASELINE = os.path.join("tests", "fixtures", "ci_baseline.json")
MIN_CLASSIFY_ACCURACY = 0.8  # full mode; digits reaches ~0.95 within the samples trained here

# sizes: full (the GPU machine) and --cpu-smoke
PPO_SMOKE = ["model.scale=1", "env.num_envs=4", "ppo.num_steps=16", "ppo.minibatch_size=32", "ppo.epochs=1"]
DT_DATA = {"full": ["--epsilons", "0", "0.5", "1", "--episodes", "60", "30", "10"],
           "smoke": ["--epsilons", "0", "1", "--episodes", "4", "1"]}
DT_TRAIN = {"full": ["trainer.total_steps=500", "trainer.checkpoint_every=500", "monitor.validate_every=250"],
            "smoke": ["model.n_layers=1", "model.d_model=32", "model.context=4", "optim.batch_size=16",
                      "optim.warmup_steps=2", "monitor.log_every=5", "monitor.validate_every=5",
                      "trainer.total_steps=10", "trainer.checkpoint_every=10"]}
CLASSIFY_TRAIN = {"full": ["trainer.total_steps=20000", "trainer.checkpoint_every=20000", "optim.eval_every=10000"],
                  "smoke": ["trainer.total_steps=256", "trainer.checkpoint_every=256", "optim.eval_every=256"]}


class StageError(RuntimeError):
    """A stage ran but its result is wrong (a bad exit code, a non-finite loss, a missed threshold)."""


class BadInput(ValueError):
    """Options that cannot work (exit 2)."""


# -- command line -----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the GPU check."""
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny sizes on the CPU (the test suite runs this); default: full sizes on the GPU")
    parser.add_argument("--out", default="gpu_check_out", help="folder for gpu_check.json, gpu_check.log and "
                        "the stages' runs (default gpu_check_out)")
    parser.add_argument("--device", default="auto",
                        help="cuda, cpu or auto (default: cuda when a GPU is visible; cpu with --cpu-smoke)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated subset of {','.join(STAGES)} (default all)")
    parser.add_argument("--ppo-iterations", type=int, default=None,
                        help="timed PPO iterations per precision (default 2; smoke 1)")
    parser.add_argument("--ppo-warmup", type=int, default=1,
                        help="untimed PPO iterations first (default 1: env creation, cuDNN autotuning)")
    parser.add_argument("--ppo-budget", type=float, default=120.0,
                        help="seconds per precision: once one timed iteration is done, PPO stops at an "
                             "iteration end when another iteration would pass this (default 120)")
    parser.add_argument("--eval-checkpoint", default=EVAL_CHECKPOINT,
                        help=f"policy the eval stage evaluates (default {EVAL_CHECKPOINT})")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="mazes per eval (default 50 as CI, compared with the CI baseline; smoke 4, no baseline)")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep the stages' checkpoints (default: deleted once checked, so --out stays small)")
    parser.add_argument("--fail-stage", choices=STAGES, default=None,
                        help="make this stage fail on purpose (tests that a failure is reported and the rest runs)")


def run(args: argparse.Namespace) -> int:
    """Run the selected stages, print the table, write the JSON; 0 if all passed, 1 if not, 2 on bad input."""
    try:
        check = Check(args)
    except BadInput as exc:
        print(f"gpu check: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from shardlab.trainers.allocator import keep_freed_memory
    keep_freed_memory()  # as `shardlab train` and benchmark.py do
    return check.run_all()


# -- the check --------------------------------------------------------------------------------
class Check:
    """Options resolved, the output folder, the log and the stage results."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.smoke = bool(args.cpu_smoke)
        self.mode = "smoke" if self.smoke else "full"
        stages = [name.strip() for name in args.stages.split(",") if name.strip()]
        unknown = [name for name in stages if name not in STAGES]
        if unknown or not stages:
            raise BadInput(f"--stages takes a comma-separated subset of {','.join(STAGES)}, got {args.stages!r}")
        self.stages = [name for name in STAGES if name in stages]
        self.ppo_iterations = args.ppo_iterations if args.ppo_iterations is not None else (1 if self.smoke else 2)
        if self.ppo_iterations < 1 or args.ppo_warmup < 0:
            raise BadInput("--ppo-iterations must be >= 1 and --ppo-warmup >= 0")
        self.eval_limit = args.eval_limit if args.eval_limit is not None else (4 if self.smoke else 50)
        if self.eval_limit < 1:
            raise BadInput("--eval-limit must be >= 1")
        import torch  # after parsing: a bad option answers fast
        device = args.device
        if device == "auto":
            device = "cpu" if self.smoke or not torch.cuda.is_available() else "cuda"
        if device.startswith("cuda:"):
            raise BadInput("--device takes cuda or cpu; pick the GPU with CUDA_VISIBLE_DEVICES")
        if device not in ("cuda", "cpu"):
            raise BadInput(f"--device must be cuda, cpu or auto, got {args.device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise BadInput("--device cuda but torch sees no CUDA GPU")
        if device == "cpu" and not self.smoke and any(name in PRECISIONS for name in self.stages):
            raise BadInput("the full-size PPO stages would take hours on the CPU; pass --cpu-smoke, run on a "
                           "GPU, or leave them out of --stages")
        self.device = device
        self.accelerator = "gpu" if device == "cuda" else "cpu"
        self.out = os.path.abspath(args.out)
        os.makedirs(self.out, exist_ok=True)
        self.log_path = os.path.join(self.out, "gpu_check.log")
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.results: list[dict[str, Any]] = []
        self.start = time.perf_counter()

    # -- output ---------------------------------------------------------------------------------
    def progress(self, message: str) -> None:
        """A timestamped line on stderr and in the log."""
        line = f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - self.start:6.1f}s] {message}"
        print(line, file=sys.stderr, flush=True)
        self.log(line)

    def log(self, text: str) -> None:
        self._log.write(text.rstrip("\n") + "\n")
        self._log.flush()

    def stage_dir(self, name: str) -> str:
        path = os.path.join(self.out, name)
        if os.path.exists(path):  # a rerun into the same --out starts clean
            import shutil
            shutil.rmtree(path)
        return path

    def drop_checkpoints(self, run_dir: str) -> None:
        """Delete a checked run's checkpoints (tens of MB each at scale 4) unless --keep-checkpoints."""
        folder = os.path.join(run_dir, "checkpoints")
        if self.args.keep_checkpoints or not os.path.isdir(folder):
            return
        for name in os.listdir(folder):
            if name.endswith(".ckpt"):
                os.remove(os.path.join(folder, name))

    # -- driver ---------------------------------------------------------------------------------
    def run_all(self) -> int:
        """Every selected stage, then the table and the JSON."""
        import torch
        _quiet_lightning()
        environment = _environment(self.device)
        self.progress(f"gpu check ({'cpu smoke' if self.smoke else 'full'}) on {environment['device_name']}: "
                      f"stages {', '.join(self.stages)}; torch {environment['versions'].get('torch')}, "
                      f"torchrl {environment['versions'].get('torchrl')}, out {self.out}")
        runners: dict[str, Callable[[], dict[str, Any]]] = {
            "ppo-fp32": lambda: self.ppo("ppo-fp32"), "ppo-bf16": lambda: self.ppo("ppo-bf16"),
            "dt": self.dt, "classify": self.classify, "eval": self.eval, "native": self.native,
            "ppo-native": lambda: self.ppo("ppo-native")}
        for name in self.stages:
            self.results.append(self.run_stage(name, runners[name]))
            gc.collect()
            if self.device == "cuda":
                torch.cuda.empty_cache()
        failed = [r["name"] for r in self.results if r["status"] == "failed"]
        code = EXIT_FAILED if failed else EXIT_OK
        report = {"check": NAME, "mode": "cpu-smoke" if self.smoke else "full", "device": self.device,
                  **environment, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "argv": sys.argv[1:], "seconds": time.perf_counter() - self.start, "ok": not failed,
                  "failed": failed, "exit_code": code, "stages": self.results}
        table = format_table(report)
        print(table, flush=True)
        self.log(table)
        path = os.path.join(self.out, "gpu_check.json")
        from shardlab.atomic import write_json

        write_json(path, _jsonable(report))
        self.progress(f"wrote {path}; {'all stages passed' if not failed else 'FAILED: ' + ', '.join(failed)}")
        self._log.close()
        return code

    def run_stage(self, name: str, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one stage; an exception marks it failed (traceback in the log) and the check goes on."""
        self.progress(f"{name}: start")
        start = time.perf_counter()
        entry: dict[str, Any] = {"name": name, "status": "ok", "seconds": 0.0, "error": None, "result": {}}
        try:
            if self.args.fail_stage == name:
                raise StageError(f"failed on purpose (--fail-stage {name})")
            entry["result"] = body()
            if entry["result"].get("skipped"):
                entry["status"] = "skipped"
        except Exception as exc:  # noqa: BLE001  (any failure of a stage is reported, the rest still runs)
            entry["status"], entry["error"] = "failed", f"{type(exc).__name__}: {exc}"
            self.log(traceback.format_exc())
        entry["seconds"] = time.perf_counter() - start
        self.progress(f"{name}: {entry['status']} in {entry['seconds']:.1f} s"
                      + (f" — {entry['error']}" if entry["error"] else "")
                      + (f" — {entry['result'].get('reason')}" if entry["status"] == "skipped" else ""))
        return entry

    # -- the native env -------------------------------------------------------------------------
    def native(self) -> dict[str, Any]:
        """Replays of the native env on the device against procgen (must match), then its bare speed."""
        scripts = os.path.join(REPO, "scripts")
        if scripts not in sys.path:  # run as scripts/benchmarks/gpu.py, the benchmarks package is not on the path
            sys.path.insert(0, scripts)
        from benchmarks import native

        envs, steps = NATIVE_REPLAY[self.mode]
        starts = native.procgen_starts(envs + 4 * envs, "hard", seed=7)
        replays = {}
        for view in ("grid", "rgb"):
            self.progress(f"native: {view} replay against procgen, {envs} envs × {steps} steps on {self.device}")
            replays[view] = native.replay(starts, steps, view, self.device, num_envs=envs)
            if replays[view]["differing_frames"] or replays[view]["differing_steps"]:
                raise StageError(f"the native env on {self.device} differs from procgen ({view}): {replays[view]}")
        rates: dict[str, dict[int, float]] = {}
        seconds = 0.2 if self.smoke else 2.0
        for view, sizes in NATIVE_SIZES[self.mode].items():
            rates[view] = {}
            for n in sizes:
                self.progress(f"native: bare {view} env, {n} envs on {self.device}")
                rates[view][n] = native.env_steps_per_second(view, n, seconds, self.device)
        procgen = {view: native.env_steps_per_second(view, min(1024, NATIVE_SIZES[self.mode][view][0]), seconds,
                                                     "procgen") for view in rates}
        best = max(rates["grid"].values())
        return {"replays": replays, "env_steps_per_sec": rates, "procgen_env_steps_per_sec": procgen,
                "best_grid_env_steps_per_sec": best, "meets_target": best >= NATIVE_TARGET, "target": NATIVE_TARGET}

    # -- (a) PPO ----------------------------------------------------------------------------------
    def ppo(self, name: str) -> dict[str, Any]:
        """The published recipe through PPOModule + trainers.run.fit at one precision, timed per phase."""
        import torch

        precision = PRECISIONS[name]
        if precision == "bf16-mixed":
            reason = _bf16_unsupported(self.device)
            if reason:
                return {"skipped": True, "reason": reason, "precision": precision}
        import pytorch_lightning as pl
        from pytorch_lightning.callbacks import Callback

        from shardlab.trainers import run as runs
        from shardlab.trainers.config import check_runnable, load_config, to_dict
        from shardlab.trainers.ppo import Schedule

        overrides = [f"trainer.accelerator={self.accelerator}", "trainer.devices=1", f"trainer.precision={precision}",
                     "trainer.progress_bar=false", "trainer.checkpoint_every=1000000000", "trainer.keep_checkpoints=1"]
        if self.smoke:
            overrides += PPO_SMOKE
        if name == "ppo-native":
            overrides.append("env.backend=native")
        cfg = load_config(os.path.join(REPO, PPO_RECIPE), overrides)
        iterations = self.args.ppo_warmup + self.ppo_iterations
        steps = Schedule(cfg, world_size=1).steps_per_iteration
        cfg = load_config(os.path.join(REPO, PPO_RECIPE), [*overrides, f"trainer.total_steps={iterations * steps}"])
        check_runnable(cfg)
        schedule = Schedule(cfg, world_size=1)
        self.progress(f"{name}: {cfg.env.num_envs} envs × {cfg.ppo.num_steps} steps = {schedule.steps_per_iteration:,} "
                      f"env steps/iteration, scale {cfg.model.scale}, minibatch {cfg.ppo.minibatch_size} × "
                      f"{schedule.updates_per_iteration} updates, {precision}; {self.args.ppo_warmup} warm-up + "
                      f"{self.ppo_iterations} timed iteration(s), budget {self.args.ppo_budget:.0f} s")
        device = torch.device("cuda", 0) if self.device == "cuda" else torch.device("cpu")
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
        module = timed_ppo_module_class()(to_dict(cfg), world_size=1)
        run_dir = self.stage_dir(name)
        runs.prepare_run_dir(cfg, run_dir)
        warmup, budget, check = self.args.ppo_warmup, self.args.ppo_budget, self
        rows: list[dict[str, Any]] = []
        marks: list[float] = []
        stage_start = time.perf_counter()

        class Boundaries(Callback):
            """Iteration ends (after their last optimizer step): wall time and the module's phase clocks."""

            def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
                sync()
                marks.append(time.perf_counter())

            def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
                if trainer.global_step % schedule.updates_per_iteration:
                    return
                sync()
                marks.append(time.perf_counter())
                seconds = marks[-1] - marks[-2]
                rollout, env = pl_module._rollout_seconds, pl_module.env_seconds
                pl_module.env_seconds = 0.0
                metrics = pl_module.iteration_metrics()
                index = len(rows) + 1
                row = {"iteration": index, "warmup": index <= warmup, "seconds": seconds, "env": env,
                       "forward": rollout - env, "update": seconds - rollout,
                       "env_steps_per_sec": schedule.steps_per_iteration / seconds,
                       "train": {k: v for k, v in metrics.items() if k.startswith("train/")}}
                rows.append(row)
                check.progress(f"{name}: iteration {index}/{iterations}{' (warm-up)' if row['warmup'] else ''} "
                               f"{seconds:.1f} s = env {env:.1f} + forward {row['forward']:.1f} + update "
                               f"{row['update']:.1f}; {row['env_steps_per_sec']:,.0f} env steps/s")
                timed = index - warmup
                # stop when another iteration like this one would end past the budget
                if timed >= 1 and index < iterations and time.perf_counter() - stage_start + seconds > budget:
                    check.progress(f"{name}: another iteration would pass --ppo-budget {budget:.0f} s; stopping "
                                   f"after {timed} timed iteration(s)")
                    trainer.should_stop = True

        runs.fit(cfg, run_dir, module=module, callbacks=[Boundaries()])
        timed = [row for row in rows if not row["warmup"]]
        if not timed:
            raise StageError(f"no timed iteration finished ({len(rows)} iteration(s) in all)")
        bad = {k: v for row in rows for k, v in row["train"].items() if not math.isfinite(v)}
        if bad:
            raise StageError(f"non-finite training statistics: {bad}")
        seconds = sum(row["seconds"] for row in timed)
        split = {phase: sum(row[phase] for row in timed) for phase in ("env", "forward", "update")}
        rate = schedule.steps_per_iteration * len(timed) / seconds
        if not rate > 0:
            raise StageError(f"env steps/s is {rate}")
        checkpoint = os.path.join(run_dir, "checkpoints", "last.ckpt")
        saved = os.path.isfile(checkpoint)
        if len(rows) == iterations and not saved:
            raise StageError(f"training ended but wrote no {checkpoint}")
        self.drop_checkpoints(run_dir)
        result = {
            "precision": precision, "recipe": PPO_RECIPE, "overrides": overrides, "num_envs": cfg.env.num_envs,
            "num_steps": cfg.ppo.num_steps, "scale": cfg.model.scale, "minibatch_size": cfg.ppo.minibatch_size,
            "epochs": cfg.ppo.epochs, "env_steps_per_iteration": schedule.steps_per_iteration,
            "warmup_iterations": warmup, "timed_iterations": len(timed),
            "stopped_early": len(rows) < iterations, "env_steps_per_sec": rate,
            "seconds_per_iteration": seconds / len(timed),
            "split_seconds_per_iteration": {k: v / len(timed) for k, v in split.items()},
            "split_fraction": {k: v / seconds for k, v in split.items()},
            "warmup_seconds": sum(row["seconds"] for row in rows if row["warmup"]),
            "iterations": rows, "checkpoint_written": saved,
        }
        if device.type == "cuda":
            result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        return result

    # -- (b) DT and classifiers ---------------------------------------------------------------------
    def dt(self) -> dict[str, Any]:
        """Collect a small DoorKey data set with the real MiniGrid env, then train the DT recipe."""
        folder = self.stage_dir("dt")
        os.makedirs(folder)
        data = os.path.join(folder, "doorkey.npz")
        start = time.perf_counter()
        script = _load_script("dt_doorkey_data")
        if script.main(["--out", data, *DT_DATA[self.mode]]) != 0:
            raise StageError("scripts/dt_doorkey_data.py failed")
        data_seconds = time.perf_counter() - start
        from shardlab.trainers.trajectories import load_trajectories
        dataset = load_trajectories(data)
        self.progress(f"dt: {dataset.num_episodes} episodes, {dataset.num_steps} steps collected in {data_seconds:.1f} s")
        run_dir = os.path.join(folder, "run")
        overrides = [f"data.path={data}", f"trainer.accelerator={self.accelerator}", "trainer.progress_bar=false",
                     *DT_TRAIN[self.mode]]
        train = self._train(os.path.join(REPO, DT_RECIPE), overrides, run_dir)
        from shardlab.trainers.config import load_config
        steps = load_config(os.path.join(REPO, DT_RECIPE), overrides).trainer.total_steps
        return {"recipe": DT_RECIPE, "overrides": overrides, "episodes": dataset.num_episodes,
                "dataset_steps": dataset.num_steps, "data_seconds": data_seconds, "optimizer_steps": steps,
                "optimizer_steps_per_sec": steps / train["seconds"], **train}

    def classify(self) -> dict[str, Any]:
        """Train the dense and the k-winners digits classifiers on the device."""
        runs = {}
        folder = self.stage_dir("classify")
        for recipe in CLASSIFY_RECIPES:
            name = os.path.splitext(os.path.basename(recipe))[0]
            overrides = [f"trainer.accelerator={self.accelerator}", "trainer.progress_bar=false",
                         *CLASSIFY_TRAIN[self.mode]]
            train = self._train(os.path.join(REPO, recipe), overrides, os.path.join(folder, name))
            samples = int(train["last_row"]["samples"])
            train["samples_per_sec"] = samples / train["seconds"]
            accuracy = train["last_row"].get("val/accuracy")
            if not self.smoke and (accuracy is None or accuracy < MIN_CLASSIFY_ACCURACY):
                raise StageError(f"{name}: val/accuracy {accuracy} after {samples} samples, expected >= "
                                 f"{MIN_CLASSIFY_ACCURACY}")
            self.progress(f"classify: {name} {samples:,} samples in {train['seconds']:.1f} s, "
                          f"val/accuracy {accuracy}")
            runs[name] = {"recipe": recipe, "overrides": overrides, **train}
        return {"runs": runs}

    def _train(self, recipe: str, overrides: list[str], run_dir: str) -> dict[str, Any]:
        """``shardlab train`` in this process; exit 0, a checkpoint and finite losses required."""
        from shardlab import cli

        start = time.perf_counter()
        code = cli.main(["train", recipe, *overrides, "--run-dir", run_dir])
        seconds = time.perf_counter() - start
        if code != 0:
            raise StageError(f"shardlab train {os.path.basename(recipe)} exited {code}")
        checkpoint = os.path.join(run_dir, "checkpoints", "last.ckpt")
        if not os.path.isfile(checkpoint):
            raise StageError(f"no checkpoint at {checkpoint}")
        with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        if not rows:
            raise StageError(f"{run_dir}/metrics.jsonl is empty")
        last = rows[-1]
        bad = {k: v for row in rows for k, v in row.items()
               if "loss" in k and isinstance(v, float) and not math.isfinite(v)}
        if bad:
            raise StageError(f"non-finite losses in {run_dir}/metrics.jsonl: {bad}")
        losses = [row["train/loss"] for row in rows if "train/loss" in row]
        if not self.smoke and len(losses) >= 2 and not losses[-1] < losses[0]:
            raise StageError(f"train/loss did not go down ({losses[0]:.4f} → {losses[-1]:.4f})")
        self.drop_checkpoints(run_dir)
        return {"seconds": seconds, "run_dir": run_dir, "first_train_loss": losses[0] if losses else None,
                "last_row": last}

    # -- (c) eval ---------------------------------------------------------------------------------
    def eval(self) -> dict[str, Any]:
        """``python -m shardlab eval CKPT --suite ci`` in a fresh process; exit 0 and results.json required."""
        out = self.stage_dir("eval")
        checkpoint = os.path.join(REPO, EVAL_CHECKPOINT) if self.args.eval_checkpoint == EVAL_CHECKPOINT \
            else os.path.abspath(self.args.eval_checkpoint)
        command = [sys.executable, "-m", "shardlab", "eval", checkpoint, "--suite", "ci", "--out", out,
                   "--device", self.device, "--limit", str(self.eval_limit), "--no-progress"]
        if not self.smoke and self.args.eval_limit is None:  # CI's command: compare with the CPU baseline
            command += ["--baseline", os.path.join(REPO, EVAL_BASELINE)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([REPO, *filter(None, [env.get("PYTHONPATH")])])
        self.progress(f"eval: {' '.join(command[1:])}")
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        with open(os.path.join(self.out, "eval.log"), "w") as handle:
            handle.write(proc.stdout + proc.stderr)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        self.log("\n".join(["eval output (last lines):", *tail]))
        results_path = os.path.join(out, "results.json")
        result: dict[str, Any] = {"command": command[1:], "exit_code": proc.returncode, "seconds": seconds,
                                  "results": results_path if os.path.isfile(results_path) else None,
                                  "output_tail": tail[-5:]}
        if proc.returncode != 0:
            meaning = {1: "a CI threshold was missed or a metric regressed against the baseline",
                       2: "bad input (checkpoint, suite or options)"}.get(proc.returncode, "crashed")
            raise StageError(f"shardlab eval exited {proc.returncode} ({meaning}); see "
                             f"{os.path.join(self.out, 'eval.log')}")
        if result["results"] is None:
            raise StageError(f"shardlab eval wrote no {results_path}")
        with open(results_path) as handle:
            results = json.load(handle)
        values = {f"{r['eval']}.{r['name']}": r["value"] for r in results.get("results", [])
                  if r.get("name") in ("in_region/p_cheese", "p_cheese", "decision/p_cheese")}
        result["metrics"] = values
        result["device_name"] = results.get("device_name")
        return result


# -- PPO instrumentation ------------------------------------------------------------------------
_TIMED_CLASS: list[type] = []


def timed_ppo_module_class() -> type:
    """PPOModule whose env's ``step`` is timed (after a device sync, so only CPU stepping counts)."""
    if _TIMED_CLASS:
        return _TIMED_CLASS[0]
    import torch

    from shardlab.trainers.ppo import PPOModule

    class TimedPPOModule(PPOModule):
        """The real module; ``env_seconds`` accumulates the time spent in ``MazeEnv.step``."""

        env_seconds = 0.0

        def make_env(self, seed_offset: int):
            env = super().make_env(seed_offset)
            step, module = env.step, self

            def timed_step(actions: torch.Tensor):
                if actions.is_cuda:  # the forward that produced the actions finishes first
                    torch.cuda.synchronize(actions.device)
                start = time.perf_counter()
                try:
                    return step(actions)
                finally:
                    module.env_seconds += time.perf_counter() - start

            env.step = timed_step
            return env

    _TIMED_CLASS.append(TimedPPOModule)
    return TimedPPOModule


# -- helpers ----------------------------------------------------------------------------------
def _bf16_unsupported(device: str) -> str | None:
    """Why bf16-mixed cannot run here, or None."""
    import torch
    if device == "cuda":
        return None if torch.cuda.is_bf16_supported() else f"{torch.cuda.get_device_name(0)} has no bfloat16 support"
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = torch.nn.Conv2d(3, 4, 3)(torch.randn(1, 3, 8, 8))
        if out.dtype != torch.bfloat16:
            return "CPU autocast did not produce bfloat16"
    except Exception as exc:  # noqa: BLE001
        return f"CPU cannot autocast to bfloat16: {type(exc).__name__}: {exc}"
    return None


def _load_script(name: str) -> Any:
    """A module from scripts/ by file name (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _quiet_lightning() -> None:
    """Lightning's info banners (GPU available, tips) would bury the progress lines."""
    import pytorch_lightning  # noqa: F401  (importing it resets its logger level)

    from shardlab.trainers.lightning_setup import silence_expected_warnings

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    silence_expected_warnings()  # for the whole check: evals and scripts it runs build trainers too


def _environment(device: str) -> dict[str, Any]:
    """Device, host and package versions for the report."""
    import importlib.metadata as metadata

    import torch
    versions: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__,
                                       "cuda": torch.version.cuda}
    for dist in ("pytorch-lightning", "torchrl", "tensordict", "numpy", "procgen-mirror", "gym3", "minigrid",
                 "gymnasium", "omegaconf"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    name = torch.cuda.get_device_name(0) if device == "cuda" else (platform.processor() or platform.machine())
    return {"device_name": name, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "versions": versions}


def _jsonable(value: Any) -> Any:
    """NaN/inf as strings, so the JSON stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _summary(stage: dict[str, Any]) -> str:
    """One line of what a stage measured."""
    r = stage["result"]
    name = stage["name"]
    if stage["status"] == "failed":
        return stage["error"] or "failed"
    if stage["status"] == "skipped":
        return r.get("reason", "skipped")
    if name.startswith("ppo"):
        f = r["split_fraction"]
        s = r["split_seconds_per_iteration"]
        memory = f", peak {r['peak_gpu_memory_gib']:.1f} GiB" if "peak_gpu_memory_gib" in r else ""
        return (f"{r['env_steps_per_sec']:,.0f} env steps/s ({r['timed_iterations']} × {r['env_steps_per_iteration']:,}); "
                f"per iteration env {s['env']:.2f} s ({f['env']:.0%}), forward {s['forward']:.2f} s "
                f"({f['forward']:.0%}), update {s['update']:.2f} s ({f['update']:.0%}){memory}")
    if name == "dt":
        row = r["last_row"]
        first = r.get("first_train_loss")
        return (f"{r['optimizer_steps']} steps at {r['optimizer_steps_per_sec']:.1f}/s on {r['episodes']} episodes; "
                f"train/loss {first if first is not None else float('nan'):.3f} → "
                f"{row.get('train/loss', float('nan')):.3f}, val/loss {row.get('val/loss', float('nan')):.3f}")
    if name == "classify":
        return "; ".join(f"{k} {v['samples_per_sec']:,.0f} samples/s, val/accuracy "
                         f"{v['last_row'].get('val/accuracy', float('nan')):.3f}" for k, v in r["runs"].items())
    if name == "eval":
        metrics = ", ".join(f"{k.split('.', 1)[1]} {v:.2f}" for k, v in r.get("metrics", {}).items())
        return f"exit {r['exit_code']}, results.json written; {metrics}"
    if name == "native":
        frames = sum(replay["frames"] for replay in r["replays"].values())
        speeds = "; ".join(f"{view} " + ", ".join(f"{n}: {rate:,.0f}" for n, rate in by_size.items())
                           for view, by_size in r["env_steps_per_sec"].items())
        return (f"{frames} replayed frames identical to procgen; env steps/s {speeds} (procgen "
                + ", ".join(f"{view} {rate:,.0f}" for view, rate in r["procgen_env_steps_per_sec"].items())
                + f"); grid target {r['target']:,.0f}: {'met' if r['meets_target'] else 'not met'}")
    return ""


def format_table(report: dict[str, Any]) -> str:
    """The compact end-of-run table."""
    v = report["versions"]
    lines = ["", f"GPU check ({report['mode']}) on {report['device']} ({report['device_name']}): torch {v['torch']}"
             f" (CUDA {v['cuda']}), torchrl {v['torchrl']}, tensordict {v['tensordict']}, numpy {v['numpy']}, "
             f"python {v['python']}", "",
             f"  {'stage':<12}{'status':<9}{'seconds':>8}  result"]
    for stage in report["stages"]:
        lines.append(f"  {stage['name']:<12}{stage['status']:<9}{stage['seconds']:>8.1f}  {_summary(stage)}")
    verdict = "all stages passed" if report["ok"] else f"FAILED: {', '.join(report['failed'])}"
    lines += ["", f"  total {report['seconds']:.0f} s; {verdict}; exit {report['exit_code']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python scripts/benchmarks/gpu.py [options]``."""
    parser = argparse.ArgumentParser(prog="gpu.py", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
