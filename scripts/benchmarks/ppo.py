"""``benchmark.py ppo``: env steps per second of PPO on the procgen maze, three ways.

In one process, one after the other, on the same env config, network, num_envs, num_steps,
minibatch size and epochs:

1. **trainer** — the real Lightning ``PPOModule`` under the ``pl.Trainer`` that
   ``trainers.run.fit`` builds (``trainers.lightning_setup.build_trainer``: same precision,
   gradient-norm clipping and ``max_steps`` arithmetic; no logger, no checkpoints, no progress
   bar, one process even if the config asks for DDP).
2. **plain** — the hand-written PyTorch PPO loop of ``scripts/ppo_reference.py`` (no Lightning, no
   torchrl): the same ``MazeEnv``, ``ImpalaPolicy`` and reward normaliser; rollout under
   ``torch.inference_mode``, GAE in plain torch, clipped policy and value losses, entropy bonus,
   per-minibatch advantage normalisation, grad-norm clip, Adam with the same per-step LR schedule.
   Same algorithm, not bit-identical numbers (it samples actions with ``torch.multinomial`` instead
   of ``Categorical``); tests/test_ppo_reference.py checks its GAE and losses against the trainer's.
3. **ceiling** — the network work alone: per iteration ``num_steps`` inference forwards of batch
   ``num_envs`` plus ``epochs × minibatches`` forward + backward + grad clip + Adam steps on
   minibatches gathered from a fixed buffer of random uint8 observations, preprocessed the same
   way. No env, no GAE, no framework; env steps/s here means ``num_envs × num_steps`` per iteration.

Timing. Every measurement runs ``--warmup`` untimed iterations (default 1: it pays for env
creation, oneDNN primitive caching and allocator growth), then ``--iterations`` timed ones. The
clock reads ``time.perf_counter()`` at iteration boundaries; the timed window runs from the end of
the last warm-up iteration to the end of the last iteration, so it holds everything in between.
For the trainer the boundaries come from a Callback's ``on_train_batch_end`` after the last
optimizer step of an iteration, so Lightning's per-step overhead (hooks, closure, clipping, LR
scheduler, data-loader ticks) is inside the window and trainer start-up and teardown are outside.
Rates are env steps in the window / window seconds. With ``--repeats R`` the three measurements
run R times, the order reversed on every other repeat (so a slow drift of the machine, e.g. a
competing process or thermal throttling, does not always hit the same one), and the reported rate
is the median over repeats. The "cores" column is process CPU time / wall time: well below the
thread count means serial Python, env stepping, or another process competing for the CPU.
Threads are torch's default; the benchmark never changes them.

Reading the numbers. On a shared 2-core VM one run of each measurement varies by about ±5-10%
from run to run, more than the 5% the ratio targets allow, so judge the targets with
``--repeats 2`` or more and look at the per-repeat rates. A competing process wrecks the numbers
(OpenMP threads wait on a descheduled sibling); the load average is printed for that reason. CPU
results also depend on the allocator: glibc returns big tensors to the kernel and page-faults
them back on every minibatch, so ``MALLOC_*``/``OMP_*``-style variables that are set are
recorded in the header and the JSON. The trainer's own ``perf/env_steps_per_sec`` is shown for
comparison; its clock spans one iteration boundary to the next. All measurements run with
``trainers.allocator.keep_freed_memory()`` applied, as `shardlab train` does.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import statistics
import tempfile
from typing import TYPE_CHECKING, Any, Callable

from benchmarks.common import (EXIT_OK, REPO, IterationClock, Measurement, PhaseTimer, progress,
                               write_json_report)

if TYPE_CHECKING:  # heavy imports happen inside the functions, after argument parsing
    import torch
    from omegaconf import DictConfig

NAME = "ppo"
HELP = "env steps/s: Lightning trainer vs plain PyTorch PPO vs network-only ceiling"
DEFAULT_CONFIG = os.path.join("configs", "train", "maze_ppo_cpu_rgb.yaml")
MEASUREMENTS = ("trainer", "plain", "ceiling")
TARGET_TRAINER_OVER_PLAIN, TARGET_TRAINER_OVER_CEILING = 1.0, 0.95


def _device(cfg: "DictConfig") -> "torch.device":
    """The device the config's trainer.accelerator means (cpu or one CUDA GPU)."""
    import torch
    from shardlab.trainers.config import ConfigError
    accelerator = cfg.trainer.accelerator
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if accelerator in ("gpu", "cuda", "auto"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={accelerator} but no CUDA GPU is visible; "
                              "pass trainer.accelerator=cpu")
        return torch.device("cuda", 0)
    raise ConfigError(f"the benchmark runs on cpu or cuda, not trainer.accelerator={accelerator}")


# -- the three measurements ---------------------------------------------------------------------
def measure_trainer(cfg: "DictConfig", warmup: int, iterations: int, device: "torch.device",
                    repeat: int) -> Measurement:
    """Env steps/s of the real PPOModule under a pl.Trainer configured like trainers.run.fit."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback

    from shardlab.trainers.config import to_dict
    from shardlab.trainers.lightning_setup import build_trainer, expected_warnings_silenced
    from shardlab.trainers.ppo import PPOModule
    from shardlab.trainers.precision import device_precision

    t = cfg.trainer
    pl.seed_everything(t.seed, workers=True, verbose=False)
    module = PPOModule(to_dict(cfg), world_size=1)
    module.metrics_path = None
    schedule = module.schedule
    clock = IterationClock("trainer", warmup, iterations, schedule.steps_per_iteration, device)
    rollout: list[float] = []
    self_reported: list[float] = []

    class Boundaries(Callback):
        """Marks iteration ends after their last optimizer step (callbacks run before the module's
        on_train_start, so env creation falls into the untimed warm-up)."""

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            clock.start()

        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
            if trainer.global_step % schedule.updates_per_iteration == 0:
                clock.end_iteration()
                if len(clock.wall) - 1 > warmup:
                    # private attributes, read only to show where the trainer's time goes
                    rollout.append(getattr(pl_module, "_rollout_seconds", float("nan")))
                    self_reported.append(pl_module.iteration_metrics().get(
                        "perf/env_steps_per_sec", float("nan")))

    with tempfile.TemporaryDirectory(prefix="shardlab-bench-") as root:
        # the Trainer trainers.run.fit builds, on one device, without loggers or checkpoint callbacks
        trainer = build_trainer(module, root_dir=root, accelerator="gpu" if device.type == "cuda" else "cpu",
                                precision=device_precision(t.precision, device.type),
                                max_steps=(warmup + iterations) * schedule.updates_per_iteration,
                                callbacks=[Boundaries()])
        with expected_warnings_silenced():
            trainer.fit(module)
    # rollout as PPOModule times it (collection + GAE + shuffles); everything else is update
    window = clock.wall[-1] - clock.wall[warmup]
    phases = {"rollout": sum(rollout), "update": window - sum(rollout)}
    reported = statistics.fmean(self_reported) if self_reported else math.nan
    return clock.measurement(repeat, phases, {"self_reported_env_steps_per_sec": reported})


def measure_plain(cfg: "DictConfig", warmup: int, iterations: int, device: "torch.device",
                  repeat: int) -> Measurement:
    """Env steps/s of the plain PyTorch PPO loop (scripts/ppo_reference.py) on the same env,
    network and batch shape."""
    import ppo_reference

    timer = PhaseTimer(device)
    clock = IterationClock("plain", warmup, iterations, cfg.env.num_envs * cfg.ppo.num_steps, device)
    timer.counting = warmup == 0

    def end_iteration(iteration: int) -> None:
        clock.end_iteration()
        timer.counting = iteration + 1 >= warmup  # phases count in the timed iterations only

    ppo_reference.train(cfg, device, warmup + iterations, phase=timer, on_start=clock.start,
                        on_iteration_end=end_iteration)
    phases = dict(timer.totals)
    phases["policy+sampling"] = phases["rollout"] - phases.get("env", 0.0)
    return clock.measurement(repeat, phases)


def measure_ceiling(cfg: "DictConfig", warmup: int, iterations: int, device: "torch.device",
                    repeat: int) -> Measurement:
    """Env-step-equivalents/s of the same forward/backward/Adam work on random data (no env)."""
    import torch

    import ppo_reference as plain
    from shardlab.envs.maze import observation_shape
    from shardlab.models.impala import NUM_ACTIONS, preprocess

    T, N, cl = cfg.ppo.num_steps, cfg.env.num_envs, cfg.model.channels_last
    plain.seed_everything(cfg.trainer.seed)
    policy = plain.make_policy(cfg, device)
    optimizer, scheduler = plain.make_optimizer(cfg, policy)
    autocast = plain.autocast_for(cfg, device)
    # one fixed buffer the size of a rollout, so minibatches are gathered exactly like real ones
    obs_buf = torch.randint(0, 256, (T, N, *observation_shape(cfg.env)), dtype=torch.uint8, device=device)
    flat_obs = obs_buf.view(T * N, *observation_shape(cfg.env))
    targets = [torch.randint(0, NUM_ACTIONS, (T * N,), device=device),  # action
               -torch.rand(T * N, device=device) - 2.0,  # old log-prob, near log(1/15)
               torch.randn(T * N, device=device), torch.randn(T * N, device=device),  # old value, advantage
               torch.randn(T * N, device=device)]  # value target
    generator = torch.Generator().manual_seed(cfg.trainer.seed)
    timer = PhaseTimer(device)
    clock = IterationClock("ceiling", warmup, iterations, T * N, device)
    clock.start()
    for iteration in range(warmup + iterations):
        timer.counting = iteration >= warmup
        with timer("rollout"):
            policy.eval()
            with torch.inference_mode(), autocast():
                for t in range(T):
                    policy(preprocess(obs_buf[t], cl))
                policy(preprocess(obs_buf[-1], cl))  # the bootstrap value forward the others do
            policy.train()
        with timer("update"):
            plain.update(cfg, policy, optimizer, scheduler, flat_obs, targets, generator, autocast, device)
        clock.end_iteration()
    return clock.measurement(repeat, dict(timer.totals))


MEASURE: dict[str, Callable[..., Measurement]] = {
    "trainer": measure_trainer, "plain": measure_plain, "ceiling": measure_ceiling}
LABELS = {"trainer": "trainer (Lightning PPOModule)", "plain": "plain PyTorch loop",
          "ceiling": "network-only ceiling"}


# -- reporting ----------------------------------------------------------------------------------
def _config_summary(cfg: "DictConfig", device: "torch.device") -> dict[str, Any]:
    """The settings that decide throughput, for the table and the JSON."""
    import pytorch_lightning as pl
    import torch

    from shardlab.trainers.precision import device_precision
    batch = cfg.env.num_envs * cfg.ppo.num_steps
    return {
        "num_envs": cfg.env.num_envs, "num_steps": cfg.ppo.num_steps, "batch": batch,
        "minibatch_size": cfg.ppo.minibatch_size, "minibatches_per_epoch": batch // cfg.ppo.minibatch_size,
        "epochs": cfg.ppo.epochs, "scale": cfg.model.scale, "channels_last": cfg.model.channels_last,
        "precision": device_precision(str(cfg.trainer.precision), device.type),
        "distribution_mode": cfg.env.distribution_mode,
        "device": str(device), "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "pytorch_lightning": pl.__version__,
        # allocator and threading knobs change CPU results a lot, so record any that are set
        "environment": {k: v for k, v in sorted(os.environ.items())
                        if k.startswith(("MALLOC_", "GLIBC_TUNABLES", "OMP_", "MKL_", "KMP_", "LD_PRELOAD"))},
    }


def summarize(runs: list[Measurement]) -> dict[str, Any]:
    """Median rate per measurement over repeats, and the two ratios the targets are about."""
    rates = {name: statistics.median(m.rate for m in runs if m.name == name)
             for name in MEASUREMENTS if any(m.name == name for m in runs)}
    ratios = {}
    if "trainer" in rates and "plain" in rates:
        ratios["trainer_over_plain"] = rates["trainer"] / rates["plain"]
    if "trainer" in rates and "ceiling" in rates:
        ratios["trainer_over_ceiling"] = rates["trainer"] / rates["ceiling"]
    return {"rates": rates, "ratios": ratios}


def format_table(summary: dict[str, Any], runs: list[Measurement], config: dict[str, Any],
                 args: argparse.Namespace, loadavg: tuple[float, float]) -> str:
    """The human-readable report: config, one row per measurement, phase split, ratios."""
    c = config
    lines = [
        f"PPO throughput: {args.config}" + (f" {' '.join(args.overrides)}" if args.overrides else ""),
        f"  num_envs {c['num_envs']} × num_steps {c['num_steps']} = batch {c['batch']}, minibatch "
        f"{c['minibatch_size']} ({c['minibatches_per_epoch']}/epoch), epochs {c['epochs']}, "
        f"scale {c['scale']}, {'channels_last' if c['channels_last'] else 'channels_first'}, "
        f"{c['precision']}" + (f" (plain and ceiling: {c['plain_precision']})" if c.get("plain_precision") else "")
        + f", {c['distribution_mode']} mazes",
        f"  {c['device']}, torch threads {c['threads']} (interop {c['interop_threads']}, "
        f"{c['cpu_count']} CPUs), torch {c['torch']}, lightning {c['pytorch_lightning']}"
        + "".join(f", {k}={v}" for k, v in c["environment"].items()),
        f"  {args.iterations} timed iteration(s) after {args.warmup} warm-up, {args.repeats} repeat(s)"
        + (", median over repeats" if args.repeats > 1 else "")
        + f"; load average {loadavg[0]:.2f} before, {loadavg[1]:.2f} after",
        "",
        f"  {'measurement':<31}{'env steps/s':>12}{'s/iter':>9}{'rollout':>9}{'update':>9}{'cores':>7}",
    ]
    for name, rate in summary["rates"].items():
        mine = [m for m in runs if m.name == name]
        per_iter = statistics.median(m.seconds / args.iterations for m in mine)
        rollout = statistics.median(m.phases.get("rollout", math.nan) / args.iterations for m in mine)
        update = statistics.median(m.phases.get("update", math.nan) / args.iterations for m in mine)
        cores = statistics.median(m.cpu_seconds / m.seconds for m in mine)
        lines.append(f"  {LABELS[name]:<31}{rate:>12,.1f}{per_iter:>9.2f}{rollout:>9.2f}{update:>9.2f}{cores:>7.2f}")
    lines.append("  (rollout/update: seconds per iteration; the trainer's rollout also holds GAE and shuffling)")
    detail = []
    plain = [m for m in runs if m.name == "plain"]
    if plain:
        env = statistics.median(m.phases.get("env", 0.0) / args.iterations for m in plain)
        net = statistics.median(m.phases.get("policy+sampling", 0.0) / args.iterations for m in plain)
        gae = statistics.median(m.phases.get("gae", 0.0) / args.iterations for m in plain)
        detail.append(f"  plain rollout split per iteration: env.step {env:.2f} s, policy forward + "
                      f"sampling {net:.2f} s; GAE {gae:.3f} s")
    trainer = [m for m in runs if m.name == "trainer"]
    if trainer:
        reported = statistics.median(m.notes.get("self_reported_env_steps_per_sec", math.nan) for m in trainer)
        detail.append(f"  trainer's own perf/env_steps_per_sec (mean of timed iterations): {reported:,.1f}")
    if len(runs) > len(summary["rates"]):
        for name in summary["rates"]:
            spread = ", ".join(f"{m.rate:,.1f}" for m in runs if m.name == name)
            detail.append(f"  {name} per repeat: {spread}")
    if detail:
        lines += [""] + detail
    ratios = summary["ratios"]
    if ratios:
        lines.append("")
    for key, label, target in (("trainer_over_plain", "trainer / plain", TARGET_TRAINER_OVER_PLAIN),
                               ("trainer_over_ceiling", "trainer / ceiling", TARGET_TRAINER_OVER_CEILING)):
        if key in ratios:
            verdict = "ok" if ratios[key] >= target else "BELOW TARGET"
            lines.append(f"  {label:<19}{ratios[key]:>6.3f}   target >= {target:.2f}  {verdict}")
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``benchmark.py ppo``."""
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"YAML training recipe (default {DEFAULT_CONFIG})")
    parser.add_argument("--iterations", type=int, default=2,
                        help="timed PPO iterations per measurement (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default 1, min 1)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run all measurements this many times, alternating their order; "
                             "report medians (default 1)")
    parser.add_argument("--only", default=",".join(MEASUREMENTS),
                        help="comma-separated subset of trainer,plain,ceiling (default all)")
    parser.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")
    parser.add_argument("--plain-precision", metavar="P",
                        help="trainer.precision for the plain loop and the ceiling only (e.g. 32-true, to race a "
                             "bf16-mixed trainer against the fp32 eager loop); default: the config's")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value config overrides, e.g. ppo.num_steps=32")


def run(args: argparse.Namespace) -> int:
    """Run the three PPO measurements, print the table, optionally write JSON."""
    import ppo_reference
    from shardlab.trainers.config import ConfigError, load_config

    only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = [name for name in only if name not in MEASUREMENTS]
    if unknown or not only:
        raise ConfigError(f"--only takes a comma-separated subset of {','.join(MEASUREMENTS)}, got {args.only!r}")
    if args.iterations < 1 or args.warmup < 1 or args.repeats < 1:
        raise ConfigError("--iterations, --warmup and --repeats must be >= 1 (the first iteration "
                          "pays one-off costs and is never timed)")
    config_path = args.config if os.path.isabs(args.config) or os.path.exists(args.config) \
        else os.path.join(REPO, args.config)
    cfg = load_config(config_path, args.overrides)
    device = _device(cfg)
    ppo_reference.autocast_for(cfg, device)  # reject unsupported precisions before anything runs
    if cfg.trainer.devices * cfg.trainer.num_nodes > 1:
        progress(f"note: the config asks for {cfg.trainer.devices * cfg.trainer.num_nodes} processes; "
                 "the benchmark measures one")
    # Lightning's info lines (GPU available, tips, ...) would drown the progress lines; import
    # first, because importing pytorch_lightning resets its logger to INFO
    importlib.import_module("pytorch_lightning")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    config = _config_summary(cfg, device)
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        progress(f"warning: load average is {load_before:.2f} before starting; another process may be "
                 "using the CPU and the numbers will be noisy")
    plain_cfg = cfg
    if args.plain_precision:
        plain_cfg = load_config(config_path, [*args.overrides, f"trainer.precision={args.plain_precision}"])
        ppo_reference.autocast_for(plain_cfg, device)
        config["plain_precision"] = args.plain_precision
    runs: list[Measurement] = []
    for repeat in range(args.repeats):
        order = only if repeat % 2 == 0 else tuple(reversed(only))
        for name in order:
            progress(f"{name}: start (repeat {repeat + 1}/{args.repeats}, {args.warmup} warm-up + "
                     f"{args.iterations} timed iterations of {config['batch']} env steps)")
            measurement = MEASURE[name](cfg if name == "trainer" else plain_cfg, args.warmup, args.iterations,
                                        device, repeat)
            progress(f"{name}: {measurement.rate:,.1f} env steps/s over {measurement.seconds:.1f} s")
            runs.append(measurement)
    load_after = os.getloadavg()[0]
    summary = summarize(runs)
    print(format_table(summary, runs, config, args, (load_before, load_after)))
    if args.json:
        report = {
            "benchmark": "ppo", "config_path": args.config, "overrides": list(args.overrides),
            "config": config, "iterations": args.iterations, "warmup_iterations": args.warmup,
            "repeats": args.repeats, "env_steps_per_iteration": config["batch"],
            **summary, "targets": {"trainer_over_plain": TARGET_TRAINER_OVER_PLAIN,
                                   "trainer_over_ceiling": TARGET_TRAINER_OVER_CEILING},
            "load_average": {"before": load_before, "after": load_after},
            "runs": [m.to_json() for m in runs],
        }
        write_json_report(args.json, report)
    return EXIT_OK
