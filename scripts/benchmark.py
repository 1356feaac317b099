"""Throughput benchmarks: ``python scripts/benchmark.py SUBCOMMAND [options]``.

Subcommands live in :data:`SUBCOMMANDS`; add one with the :func:`subcommand` decorator (a function
that adds its arguments and a function that runs it and returns an exit code).

``ppo`` measures env steps per second of PPO on the procgen maze three ways, in one process, one
after the other, on the same env config, network, num_envs, num_steps, minibatch size and epochs:

1. **trainer** — the real Lightning ``PPOModule`` under a ``pl.Trainer`` built like
   ``trainers.run.fit`` (same precision, gradient-norm clipping and ``max_steps`` arithmetic; no
   logger, no checkpoints, no progress bar, one process even if the config asks for DDP).
2. **plain** — a hand-written PyTorch PPO loop (no Lightning, no torchrl): the same ``MazeEnv``,
   ``ImpalaPolicy`` and reward normaliser; rollout under ``torch.inference_mode``, GAE in plain
   torch, clipped policy and value losses, entropy bonus, per-minibatch advantage normalisation,
   grad-norm clip, Adam with the same per-step LR schedule. Same algorithm, not bit-identical
   numbers (it samples actions with ``torch.multinomial`` instead of ``Categorical``).
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

``maze`` times the maze toolkit on one seeded maze (``--maze-size``, default 25×25): (a) state
edits per second, ``layout`` + ``with_cheese_at`` + ``MazeEnv.set_state`` on one env, and each part
alone; (b) one vector field: ``with_mouse_at`` on every open square, one batched ``render_rgb`` and
one batched ``ImpalaPolicy`` forward at scale 1 and 4; (c) ``MazeEnv`` env steps/s with grid vs rgb
observations (64 envs, random actions, both in the same run, order alternating between repeats).
Each timing runs once untimed first; medians over ``--repeats`` are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))  # the bench_*.py modules beside this file

if TYPE_CHECKING:  # heavy imports happen inside the subcommands, after argument parsing
    import torch
    from omegaconf import DictConfig

EXIT_OK, EXIT_BAD_INPUT = 0, 2
DEFAULT_PPO_CONFIG = os.path.join("configs", "train", "maze_ppo_cpu_rgb.yaml")
DEFAULT_LEARN_CONFIG = os.path.join("configs", "train", "maze_ppo_cpu.yaml")
PPO_MEASUREMENTS = ("trainer", "plain", "ceiling")
TARGET_TRAINER_OVER_PLAIN, TARGET_TRAINER_OVER_CEILING = 1.0, 0.95


# -- subcommand registry ------------------------------------------------------------------------
@dataclass(frozen=True)
class Subcommand:
    """A registered benchmark: its help line, its argument setup and its entry point."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS: dict[str, Subcommand] = {}


def subcommand(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]
               ) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register the decorated ``run(args) -> exit code`` as benchmark ``name``."""
    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        SUBCOMMANDS[name] = Subcommand(help, add_arguments, run)
        return run
    return register


def write_json_report(path: str, report: dict[str, Any]) -> None:
    """Write a benchmark's numbers as JSON (folders created) and say where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(report, handle, indent=2)
    progress(f"wrote {path}")


def progress(message: str) -> None:
    """One progress line on stderr, so a long run shows it is alive without cluttering stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- shared measurement bookkeeping -------------------------------------------------------------
@dataclass
class Measurement:
    """Timings of one measurement: the timed window and a per-phase breakdown of it."""

    name: str
    repeat: int
    env_steps: int  # env steps (or their network-only equivalent) in the timed window
    seconds: float
    cpu_seconds: float  # process CPU time in the window, all threads
    warmup_seconds: float
    iteration_seconds: list[float] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase over the window
    notes: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Env steps per second over the timed window."""
        return self.env_steps / self.seconds

    def to_json(self) -> dict:
        """Plain JSON-able dict including the rate and CPU use."""
        return {**asdict(self), "env_steps_per_sec": self.rate, "cores_used": self.cpu_seconds / self.seconds}


class IterationClock:
    """Marks iteration boundaries (wall and CPU time) and prints a progress line for each."""

    def __init__(self, name: str, warmup: int, iterations: int, steps_per_iteration: int,
                 device: "torch.device"):
        self.name, self.warmup, self.iterations = name, warmup, iterations
        self.steps_per_iteration, self.device = steps_per_iteration, device
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def start(self) -> None:
        """Mark the start of the first (warm-up) iteration."""
        self._mark()

    def end_iteration(self) -> None:
        """Mark the end of an iteration and report it."""
        self._mark()
        done = len(self.wall) - 1
        seconds = self.wall[-1] - self.wall[-2]
        if done <= self.warmup:
            progress(f"{self.name}: warm-up iteration {done}/{self.warmup} took {seconds:.1f} s")
        else:
            progress(f"{self.name}: iteration {done - self.warmup}/{self.iterations} took {seconds:.1f} s "
                     f"({self.steps_per_iteration / seconds:,.0f} env steps/s)")

    def _mark(self) -> None:
        import torch
        if self.device.type == "cuda":  # kernels are async; a boundary means the work is done
            torch.cuda.synchronize(self.device)
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def measurement(self, repeat: int, phases: dict[str, float], notes: dict[str, float] | None = None
                    ) -> Measurement:
        """The timed window (after the warm-up) as a :class:`Measurement`."""
        w = self.warmup
        if len(self.wall) != w + self.iterations + 1:
            raise RuntimeError(f"{self.name}: saw {len(self.wall) - 1} iterations, expected "
                               f"{w + self.iterations}")
        return Measurement(
            name=self.name, repeat=repeat, env_steps=self.steps_per_iteration * self.iterations,
            seconds=self.wall[-1] - self.wall[w], cpu_seconds=self.cpu[-1] - self.cpu[w],
            warmup_seconds=self.wall[w] - self.wall[0],
            iteration_seconds=[b - a for a, b in zip(self.wall[w:], self.wall[w + 1:])],
            phases=phases, notes=notes or {})


class PhaseTimer:
    """Accumulates wall seconds per named phase, counting only the timed (post-warm-up) iterations."""

    def __init__(self, device: "torch.device"):
        self.device = device
        self.totals: dict[str, float] = {}
        self.counting = False

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        """Time the enclosed block as ``phase``."""
        import torch
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            if self.counting:
                self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - start


# -- ppo: setup shared by the three measurements ------------------------------------------------
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


def _autocast(cfg: "DictConfig", device: "torch.device") -> Callable[[], contextlib.AbstractContextManager]:
    """A context factory giving the plain loop and the ceiling the precision Lightning uses."""
    import torch
    from shardlab.trainers.config import ConfigError
    precision = str(cfg.trainer.precision)
    if precision in ("32-true", "32"):
        return contextlib.nullcontext
    if precision == "bf16-mixed":  # Lightning autocasts training_step (rollout included); no scaler
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    raise ConfigError(f"the benchmark supports trainer.precision 32-true or bf16-mixed, not {precision}")


def _seed(seed: int) -> None:
    """Seed python, numpy and torch as pl.seed_everything does, so runs start alike."""
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _lr_factor(cfg: "DictConfig", updates_per_iteration: int, iterations: int) -> Callable[[int], float]:
    """The trainer's per-optimizer-step LR multiplier (linear decay per iteration, or constant)."""
    if cfg.ppo.lr_schedule == "linear":
        return lambda step: max(0.0, 1.0 - (step // updates_per_iteration) / iterations)
    return lambda step: 1.0


def ppo_loss(policy: "torch.nn.Module", obs: "torch.Tensor", action: "torch.Tensor",
             old_log_prob: "torch.Tensor", old_value: "torch.Tensor", advantage: "torch.Tensor",
             value_target: "torch.Tensor", cfg: "DictConfig") -> "torch.Tensor":
    """Clipped PPO objective + clipped value loss − entropy bonus, as the trainer's ClipPPOLoss."""
    import torch
    ppo = cfg.ppo
    logits, value = policy(obs)
    log_probs = logits.log_softmax(-1)
    log_prob = log_probs.gather(1, action.unsqueeze(1)).squeeze(1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    if ppo.normalize_advantage:  # per minibatch, like torchrl
        advantage = (advantage - advantage.mean()) / advantage.std().clamp_min(1e-6)
    ratio = (log_prob - old_log_prob).exp()
    policy_loss = -torch.min(ratio * advantage, ratio.clamp(1 - ppo.clip_eps, 1 + ppo.clip_eps) * advantage).mean()
    value_loss = (value - value_target).pow(2)
    if ppo.clip_value:  # the pessimistic of the clipped and unclipped value errors
        clipped = old_value + (value - old_value).clamp(-ppo.clip_eps, ppo.clip_eps)
        value_loss = torch.max(value_loss, (clipped - value_target).pow(2))
    # published weighting: value_coef · 0.5 · (V − R)²
    return policy_loss + 0.5 * ppo.value_coef * value_loss.mean() - ppo.entropy_coef * entropy.mean()


def _optimizer(cfg: "DictConfig", policy: "torch.nn.Module", updates_per_iteration: int, iterations: int
               ) -> tuple["torch.optim.Optimizer", "torch.optim.lr_scheduler.LRScheduler"]:
    """Adam and the LR schedule exactly as PPOModule.configure_optimizers builds them."""
    import torch
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.ppo.lr, eps=cfg.ppo.adam_eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg, updates_per_iteration, iterations))
    return optimizer, scheduler


def _update_step(policy: "torch.nn.Module", optimizer: "torch.optim.Optimizer",
                 scheduler: "torch.optim.lr_scheduler.LRScheduler", loss: "torch.Tensor", max_grad_norm: float
                 ) -> None:
    """Backward, grad-norm clip, Adam step, LR step: what Lightning does around training_step."""
    import torch
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()


# -- ppo: the three measurements ----------------------------------------------------------------
def measure_trainer(cfg: "DictConfig", warmup: int, iterations: int, device: "torch.device",
                    repeat: int) -> Measurement:
    """Env steps/s of the real PPOModule under a pl.Trainer configured like trainers.run.fit."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback

    from shardlab.trainers.config import to_dict
    from shardlab.trainers.ppo import PPOModule

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
        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, num_nodes=1, strategy="auto",
            precision=t.precision, max_steps=(warmup + iterations) * schedule.updates_per_iteration,
            max_epochs=-1, gradient_clip_val=cfg.ppo.max_grad_norm, gradient_clip_algorithm="norm",
            logger=False, callbacks=[Boundaries()], enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, log_every_n_steps=50, default_root_dir=root,
            use_distributed_sampler=False)
        with warnings.catch_warnings():
            # the same warnings trainers.run.fit silences: an endless IterableDataset is by design
            warnings.filterwarnings("ignore", message=".*(IterableDataset|does not have many workers|"
                                    "_Ticks|max_epochs).*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning vs newer torch, harmless
            trainer.fit(module)
    # rollout as PPOModule times it (collection + GAE + shuffles); everything else is update
    window = clock.wall[-1] - clock.wall[warmup]
    phases = {"rollout": sum(rollout), "update": window - sum(rollout)}
    reported = statistics.fmean(self_reported) if self_reported else math.nan
    return clock.measurement(repeat, phases, {"self_reported_env_steps_per_sec": reported})


def _network(cfg: "DictConfig", device: "torch.device") -> tuple:
    """What the plain loop and the ceiling share: schedule, seeded policy, Adam + LR schedule,
    channels-last flag and autocast context."""
    from shardlab.trainers.ppo import Schedule, build_policy

    schedule = Schedule(cfg, world_size=1)
    _seed(cfg.trainer.seed)
    policy = build_policy(cfg).to(device)
    optimizer, scheduler = _optimizer(cfg, policy, schedule.updates_per_iteration, schedule.iterations)
    return schedule, policy, optimizer, scheduler, cfg.model.channels_last, _autocast(cfg, device)


def _ppo_epochs(cfg: "DictConfig", policy: Any, optimizer: Any, scheduler: Any, flat_obs: "torch.Tensor",
                tensors: list, generator: Any, autocast: Callable, device: "torch.device") -> None:
    """The epochs × minibatches update the plain loop and the ceiling share, so both do the same work."""
    import torch

    from shardlab.models.impala import preprocess

    total, mb = flat_obs.shape[0], cfg.ppo.minibatch_size
    for _ in range(cfg.ppo.epochs):
        perm = torch.randperm(total, generator=generator).to(device)
        for start in range(0, total, mb):
            idx = perm[start:start + mb]
            with autocast():
                loss = ppo_loss(policy, preprocess(flat_obs[idx], cfg.model.channels_last),
                                *(x[idx] for x in tensors), cfg)
            _update_step(policy, optimizer, scheduler, loss, cfg.ppo.max_grad_norm)


def measure_plain(cfg: "DictConfig", warmup: int, iterations: int, device: "torch.device",
                  repeat: int) -> Measurement:
    """Env steps/s of a hand-written PyTorch PPO loop on the same env, network and batch shape."""
    import torch
    from omegaconf import OmegaConf

    from shardlab.envs.maze import MazeEnv, MazeEnvConfig, observation_shape
    from shardlab.models.impala import preprocess
    from shardlab.trainers.reward_norm import RewardNormalizer

    ppo, T, N = cfg.ppo, cfg.ppo.num_steps, cfg.env.num_envs
    schedule, policy, optimizer, scheduler, cl, autocast = _network(cfg, device)
    env = MazeEnv(MazeEnvConfig(**OmegaConf.to_container(cfg.env)), rank=0)
    reward_norm = RewardNormalizer(N, ppo.gamma, ppo.reward_clip)
    # preallocated rollout storage, written in place each iteration
    obs_buf = torch.empty((T, N, *observation_shape(cfg.env)), dtype=torch.uint8, device=device)
    actions = torch.empty((T, N), dtype=torch.long, device=device)
    log_probs = torch.empty((T, N), device=device)
    values = torch.empty((T + 1, N), device=device)
    rewards = torch.empty((T, N), device=device)
    dones = torch.empty((T, N), device=device)
    advantages = torch.empty((T, N), device=device)
    generator = torch.Generator().manual_seed(cfg.trainer.seed)
    timer = PhaseTimer(device)
    clock = IterationClock("plain", warmup, iterations, schedule.steps_per_iteration, device)
    obs = env.reset()
    clock.start()
    for iteration in range(warmup + iterations):
        timer.counting = iteration >= warmup
        with timer("rollout"):
            policy.eval()
            with torch.inference_mode(), autocast():
                for t in range(T):
                    obs_buf[t].copy_(obs, non_blocking=True)
                    logits, value = policy(preprocess(obs_buf[t], cl))
                    step_log_probs = logits.float().log_softmax(-1)
                    action = torch.multinomial(step_log_probs.exp(), 1).squeeze(1)
                    actions[t] = action
                    log_probs[t] = step_log_probs.gather(1, action.unsqueeze(1)).squeeze(1)
                    values[t] = value
                    with timer("env"):
                        obs, reward, done, _ = env.step(action)
                    if ppo.normalize_reward:
                        reward = reward_norm(reward, done)
                    rewards[t].copy_(reward, non_blocking=True)
                    dones[t].copy_(done, non_blocking=True)
                values[T] = policy(preprocess(obs.to(device, non_blocking=True), cl))[1]
            policy.train()
        with timer("gae"), torch.no_grad():
            # GAE over time; done[t] means obs t+1 starts a new episode (procgen auto-resets)
            not_done = 1.0 - dones
            last = torch.zeros(N, device=device)
            for t in reversed(range(T)):
                delta = rewards[t] + ppo.gamma * values[t + 1] * not_done[t] - values[t]
                last = delta + ppo.gamma * ppo.gae_lambda * not_done[t] * last
                advantages[t] = last
            value_targets = advantages + values[:-1]
        with timer("update"):
            flat_obs = obs_buf.view(T * N, *observation_shape(cfg.env))
            flat = [x.reshape(T * N) for x in (actions, log_probs, values[:-1], advantages, value_targets)]
            _ppo_epochs(cfg, policy, optimizer, scheduler, flat_obs, flat, generator, autocast, device)
        clock.end_iteration()
    env.close()
    phases = dict(timer.totals)
    phases["policy+sampling"] = phases["rollout"] - phases.get("env", 0.0)
    return clock.measurement(repeat, phases)


def measure_ceiling(cfg: "DictConfig", warmup: int, iterations: int, device: "torch.device",
                    repeat: int) -> Measurement:
    """Env-step-equivalents/s of the same forward/backward/Adam work on random data (no env)."""
    import torch

    from shardlab.envs.maze import observation_shape
    from shardlab.models.impala import NUM_ACTIONS, preprocess

    T, N = cfg.ppo.num_steps, cfg.env.num_envs
    schedule, policy, optimizer, scheduler, cl, autocast = _network(cfg, device)
    # one fixed buffer the size of a rollout, so minibatches are gathered exactly like real ones
    obs_buf = torch.randint(0, 256, (T, N, *observation_shape(cfg.env)), dtype=torch.uint8, device=device)
    flat_obs = obs_buf.view(T * N, *observation_shape(cfg.env))
    targets = [torch.randint(0, NUM_ACTIONS, (T * N,), device=device),  # action
               -torch.rand(T * N, device=device) - 2.0,  # old log-prob, near log(1/15)
               torch.randn(T * N, device=device), torch.randn(T * N, device=device),  # old value, advantage
               torch.randn(T * N, device=device)]  # value target
    generator = torch.Generator().manual_seed(cfg.trainer.seed)
    timer = PhaseTimer(device)
    clock = IterationClock("ceiling", warmup, iterations, schedule.steps_per_iteration, device)
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
            _ppo_epochs(cfg, policy, optimizer, scheduler, flat_obs, targets, generator, autocast, device)
        clock.end_iteration()
    return clock.measurement(repeat, dict(timer.totals))


MEASURE: dict[str, Callable[..., Measurement]] = {
    "trainer": measure_trainer, "plain": measure_plain, "ceiling": measure_ceiling}
LABELS = {"trainer": "trainer (Lightning PPOModule)", "plain": "plain PyTorch loop",
          "ceiling": "network-only ceiling"}


# -- ppo: reporting -----------------------------------------------------------------------------
def _config_summary(cfg: "DictConfig", device: "torch.device") -> dict[str, Any]:
    """The settings that decide throughput, for the table and the JSON."""
    import pytorch_lightning as pl
    import torch
    batch = cfg.env.num_envs * cfg.ppo.num_steps
    return {
        "num_envs": cfg.env.num_envs, "num_steps": cfg.ppo.num_steps, "batch": batch,
        "minibatch_size": cfg.ppo.minibatch_size, "minibatches_per_epoch": batch // cfg.ppo.minibatch_size,
        "epochs": cfg.ppo.epochs, "scale": cfg.model.scale, "channels_last": cfg.model.channels_last,
        "precision": str(cfg.trainer.precision), "distribution_mode": cfg.env.distribution_mode,
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
             for name in PPO_MEASUREMENTS if any(m.name == name for m in runs)}
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
        f"{c['precision']}, {c['distribution_mode']} mazes",
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


# -- ppo: command line --------------------------------------------------------------------------
def add_ppo_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``benchmark.py ppo``."""
    parser.add_argument("--config", default=DEFAULT_PPO_CONFIG,
                        help=f"YAML training recipe (default {DEFAULT_PPO_CONFIG})")
    parser.add_argument("--iterations", type=int, default=2,
                        help="timed PPO iterations per measurement (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default 1, min 1)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run all measurements this many times, alternating their order; "
                             "report medians (default 1)")
    parser.add_argument("--only", default=",".join(PPO_MEASUREMENTS),
                        help="comma-separated subset of trainer,plain,ceiling (default all)")
    parser.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value config overrides, e.g. ppo.num_steps=32")


@subcommand("ppo", help="env steps/s: Lightning trainer vs plain PyTorch PPO vs network-only ceiling",
            add_arguments=add_ppo_arguments)
def run_ppo(args: argparse.Namespace) -> int:
    """Run the three PPO measurements, print the table, optionally write JSON."""
    from shardlab.trainers.config import ConfigError, load_config

    only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = [name for name in only if name not in PPO_MEASUREMENTS]
    if unknown or not only:
        raise ConfigError(f"--only takes a comma-separated subset of {','.join(PPO_MEASUREMENTS)}, got {args.only!r}")
    if args.iterations < 1 or args.warmup < 1 or args.repeats < 1:
        raise ConfigError("--iterations, --warmup and --repeats must be >= 1 (the first iteration "
                          "pays one-off costs and is never timed)")
    config_path = args.config if os.path.isabs(args.config) or os.path.exists(args.config) \
        else os.path.join(REPO, args.config)
    cfg = load_config(config_path, args.overrides)
    device = _device(cfg)
    _autocast(cfg, device)  # reject unsupported precisions before anything runs
    if cfg.trainer.devices * cfg.trainer.num_nodes > 1:
        progress(f"note: the config asks for {cfg.trainer.devices * cfg.trainer.num_nodes} processes; "
                 "the benchmark measures one")
    # Lightning's info lines (GPU available, tips, ...) would drown the progress lines; import
    # first, because importing pytorch_lightning resets its logger to INFO
    import pytorch_lightning  # noqa: F401
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    config = _config_summary(cfg, device)
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        progress(f"warning: load average is {load_before:.2f} before starting; another process may be "
                 "using the CPU and the numbers will be noisy")
    runs: list[Measurement] = []
    for repeat in range(args.repeats):
        order = only if repeat % 2 == 0 else tuple(reversed(only))
        for name in order:
            progress(f"{name}: start (repeat {repeat + 1}/{args.repeats}, {args.warmup} warm-up + "
                     f"{args.iterations} timed iterations of {config['batch']} env steps)")
            measurement = MEASURE[name](cfg, args.warmup, args.iterations, device, repeat)
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


# -- entry point --------------------------------------------------------------------------------
def add_learn_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``learn``."""
    parser.add_argument("--config", default=DEFAULT_LEARN_CONFIG, help="training recipe")
    parser.add_argument("--run-dir", default="runs/bench-learn", help="run directory (resumed if it exists)")
    parser.add_argument("--steps", type=int, default=300_000, help="env steps to train")
    parser.add_argument("--checkpoint-every", type=int, default=50_000, help="env steps between evaluated checkpoints")
    parser.add_argument("--episodes", type=int, default=200, help="held-out episodes per policy and checkpoint")
    parser.add_argument("--json", help="write the curve as JSON here")
    parser.add_argument("overrides", nargs="*", help="config overrides")


@subcommand("learn", help="does the recipe learn? train, then evaluate each checkpoint against a random policy",
            add_arguments=add_learn_arguments)
def run_learn(args: argparse.Namespace) -> int:
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


# -- maze: toolkit throughput ---------------------------------------------------------------------
MAZE_FORWARD_SCALES = (1, 4)


def _median_timing(function: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    """Median and all wall-clock seconds of ``repeats`` calls of ``function`` (after one untimed call)."""
    function()  # pays one-off costs: renderer creation, oneDNN primitive caching, allocator growth
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), seconds


def _measure_state_edits(state: bytes, reps: int, repeats: int) -> dict[str, Any]:
    """(a) edits/s of layout + with_cheese_at + set_state on one env, and each part alone."""
    from shardlab.envs import maze_geometry, maze_state
    from shardlab.envs.maze import MazeEnv, MazeEnvConfig

    env = MazeEnv(MazeEnvConfig(num_envs=1, rand_region=None))
    try:
        inner = maze_state.inner_grid(state)
        squares = [s for s in maze_geometry.region_squares(inner, inner.shape[0]) if s != (0, 0)]
        where = maze_state.layout(state)
        edited = maze_state.with_cheese_at(state, squares[0], where)

        def full() -> None:
            for k in range(reps):
                here = maze_state.layout(state)
                env.set_state(0, maze_state.with_cheese_at(state, squares[k % len(squares)], here))

        parts = {
            "layout": lambda: [maze_state.layout(state) for _ in range(reps)],
            "with_cheese_at": lambda: [maze_state.with_cheese_at(state, squares[k % len(squares)], where)
                                       for k in range(reps)],
            "set_state": lambda: [env.set_state(0, edited) for _ in range(reps)],
        }
        seconds, runs = _median_timing(full, repeats)
        result: dict[str, Any] = {"reps": reps, "edits_per_sec": reps / seconds,
                                  "edits_per_sec_runs": [reps / s for s in runs], "part_us": {}}
        for name, part in parts.items():
            part_seconds, _ = _median_timing(part, repeats)
            result["part_us"][name] = 1e6 * part_seconds / reps
        return result
    finally:
        env.close()


def _measure_vector_field(state: bytes, repeats: int) -> dict[str, Any]:
    """(b) seconds to render the mouse on every open square of one maze and run the policy on them."""
    import numpy as np
    import torch

    from shardlab.envs import maze_state, maze_views
    from shardlab.models.impala import ImpalaPolicy, preprocess

    where = maze_state.layout(state)
    inner = maze_state.inner_grid(state, where)
    cheese = maze_state.cheese_square(state, where)
    squares = [(int(x), int(y)) for y, x in np.argwhere(inner != maze_state.WALL) if (x, y) != cheese]
    states: list[bytes] = []

    def edit() -> None:
        states[:] = [maze_state.with_mouse_at(state, square, where) for square in squares]

    images: list[Any] = []

    def render() -> None:
        images[:] = [maze_views.render_rgb(states)]

    timings = {"edit": _median_timing(edit, repeats), "render_rgb": _median_timing(render, repeats)}
    obs = torch.from_numpy(images[0])
    for scale in MAZE_FORWARD_SCALES:
        policy = ImpalaPolicy(scale=scale).eval()

        def forward() -> None:
            with torch.inference_mode():
                logits, _ = policy(preprocess(obs))
                logits.softmax(-1)

        timings[f"forward_scale{scale}"] = _median_timing(forward, repeats)
    return {"maze_dim": where.maze_dim, "squares": len(squares),
            "seconds": {name: median for name, (median, _) in timings.items()},
            "seconds_runs": {name: runs for name, (_, runs) in timings.items()}}


def _measure_env_steps(num_envs: int, steps: int, repeats: int, seed: int) -> dict[str, Any]:
    """(c) env steps/s of MazeEnv with grid vs rgb observations, random actions, alternating order."""
    import torch

    from shardlab.envs.maze import MazeEnv, MazeEnvConfig

    envs = {obs: MazeEnv(MazeEnvConfig(num_envs=num_envs, obs=obs, seed=seed)) for obs in ("grid", "rgb")}
    rates: dict[str, list[float]] = {obs: [] for obs in envs}
    generator = torch.Generator().manual_seed(seed)
    actions = torch.randint(0, 15, (steps, num_envs), generator=generator)
    try:
        for env in envs.values():
            env.reset()
            for t in range(min(20, steps)):  # warm-up
                env.step(actions[t])
        for repeat in range(repeats):
            # alternate the order so a drift of the machine does not always hit the same one
            for obs in (("grid", "rgb") if repeat % 2 == 0 else ("rgb", "grid")):
                env = envs[obs]
                start = time.perf_counter()
                for t in range(steps):
                    env.step(actions[t])
                rates[obs].append(num_envs * steps / (time.perf_counter() - start))
    finally:
        for env in envs.values():
            env.close()
    median = {obs: statistics.median(r) for obs, r in rates.items()}
    return {"num_envs": num_envs, "steps": steps, "env_steps_per_sec": median,
            "env_steps_per_sec_runs": rates, "grid_over_rgb": median["grid"] / median["rgb"]}


def format_maze_table(report: dict[str, Any]) -> str:
    """The human-readable report of ``benchmark.py maze``."""
    edits, field, steps = report["state_edits"], report["vector_field"], report["env_steps"]
    s = field["seconds"]
    lines = [
        f"maze toolkit: hard mode, torch threads {report['threads']} ({report['cpu_count']} CPUs), "
        f"median of {report['repeats']} repeat(s); load average {report['load_average']['before']:.2f} "
        f"before, {report['load_average']['after']:.2f} after",
        "",
        f"  {'measurement':<52}{'value':>12}  unit",
        f"  {'(a) layout + with_cheese_at + set_state, one env':<52}{edits['edits_per_sec']:>12,.0f}  edits/s",
    ]
    lines += [f"  {'      ' + name:<52}{us:>12.1f}  µs each" for name, us in edits["part_us"].items()]
    lines.append(f"  {'(b) vector field, ' + str(field['maze_dim']) + '×' + str(field['maze_dim']) + ' maze, ' + str(field['squares']) + ' mouse squares':<52}")
    lines.append(f"  {'      with_mouse_at on every square':<52}{s['edit']:>12.3f}  s")
    lines.append(f"  {'      render_rgb (one batch)':<52}{s['render_rgb']:>12.3f}  s")
    for scale in MAZE_FORWARD_SCALES:
        lines.append(f"  {f'      ImpalaPolicy(scale={scale}) forward (one batch)':<52}"
                     f"{s[f'forward_scale{scale}']:>12.3f}  s")
    for scale in MAZE_FORWARD_SCALES:
        total = s["edit"] + s["render_rgb"] + s[f"forward_scale{scale}"]
        lines.append(f"  {f'      whole field, scale {scale}':<52}{total:>12.3f}  s")
    rate = steps["env_steps_per_sec"]
    lines.append(f"  {'(c) MazeEnv, ' + str(steps['num_envs']) + ' envs, random actions: grid obs':<52}"
                 f"{rate['grid']:>12,.0f}  env steps/s")
    lines.append(f"  {'      rgb obs':<52}{rate['rgb']:>12,.0f}  env steps/s")
    lines.append(f"  {'      grid / rgb':<52}{steps['grid_over_rgb']:>12.2f}  ×")
    if report["repeats"] > 1:
        lines += ["", "  per repeat: edits/s " + ", ".join(f"{r:,.0f}" for r in edits["edits_per_sec_runs"])
                  + "; grid " + ", ".join(f"{r:,.0f}" for r in steps["env_steps_per_sec_runs"]["grid"])
                  + "; rgb " + ", ".join(f"{r:,.0f}" for r in steps["env_steps_per_sec_runs"]["rgb"])]
    return "\n".join(line.rstrip() for line in lines)


def add_maze_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``benchmark.py maze``."""
    parser.add_argument("--reps", type=int, default=2000, help="state edits per timing of (a) (default 2000)")
    parser.add_argument("--steps", type=int, default=200, help="env steps per timing of (c) (default 200)")
    parser.add_argument("--num-envs", type=int, default=64, help="envs of (c) (default 64)")
    parser.add_argument("--maze-size", type=int, default=25, help="odd maze side for (a) and (b) (default 25)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per measurement; medians reported (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the maze and the env (default 0)")
    parser.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")


@subcommand("maze", help="maze toolkit: state edits/s, vector-field render + forward time, grid vs rgb env steps/s",
            add_arguments=add_maze_arguments)
def run_maze(args: argparse.Namespace) -> int:
    """Time state editing, one vector field (render + forward) and grid vs rgb env stepping."""
    import torch

    from shardlab.envs.eval_mazes import eval_mazes
    from shardlab.trainers.config import ConfigError

    if min(args.reps, args.steps, args.num_envs, args.repeats) < 1:
        raise ConfigError("--reps, --steps, --num-envs and --repeats must be >= 1")
    if args.maze_size % 2 == 0 or not 3 <= args.maze_size <= 25:
        raise ConfigError(f"--maze-size must be odd, 3 to 25; got {args.maze_size}")
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        progress(f"warning: load average is {load_before:.2f}; another process may be using the CPU")
    state = eval_mazes(1, args.seed, min_size=args.maze_size, max_size=args.maze_size)[0].state
    progress(f"(a) state edits: {args.repeats} × {args.reps}")
    edits = _measure_state_edits(state, args.reps, args.repeats)
    progress("(b) vector field")
    field = _measure_vector_field(state, args.repeats)
    progress(f"(c) env steps: {args.repeats} × {args.steps} steps of {args.num_envs} envs, grid and rgb")
    steps = _measure_env_steps(args.num_envs, args.steps, args.repeats, args.seed)
    report = {"benchmark": "maze", "repeats": args.repeats, "seed": args.seed,
              "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
              "state_edits": edits, "vector_field": field, "env_steps": steps,
              "load_average": {"before": load_before, "after": os.getloadavg()[0]}}
    print(format_maze_table(report))
    if args.json:
        write_json_report(args.json, report)
    return EXIT_OK


import bench_evals  # noqa: E402  (scripts/ is on sys.path when this file runs)


@subcommand("evals", help="goal_misgeneralization eval episodes/s vs a bare batched rollout (target ratio >= 0.8)",
            add_arguments=bench_evals.add_arguments)
def run_evals(args: argparse.Namespace) -> int:
    """Time the eval against the bare rollout, interleaved."""
    from shardlab.trainers.config import ConfigError

    if args.mazes < 2 or args.repeats < 1:
        raise ConfigError("--mazes must be >= 2 and --repeats >= 1")
    progress(f"goal_misgeneralization eval vs bare rollout: {args.repeats} interleaved repeats")
    report = bench_evals.measure(args)
    print(bench_evals.format_report(report))
    if args.json:
        write_json_report(args.json, report)
    return EXIT_OK


import bench_demo  # noqa: E402


@subcommand("demo", help="wall time per stage of `make demo` (install with --install, train, evaluate, report)",
            add_arguments=bench_demo.add_arguments)
def run_demo(args: argparse.Namespace) -> int:
    """Run the demo in a fresh run directory and print its stage times."""
    report = bench_demo.measure(args, REPO)
    print(bench_demo.format_report(report))
    if args.json:
        write_json_report(args.json, report)
    return EXIT_OK


import bench_dt  # noqa: E402


@subcommand("dt", help="decision-transformer training tokens/s: Lightning DTModule vs a plain PyTorch loop "
            "(target ratio >= 0.9)", add_arguments=bench_dt.add_arguments)
def run_dt(args: argparse.Namespace) -> int:
    """Time the DT trainer against the plain loop, interleaved."""
    report = bench_dt.measure(args)
    print(bench_dt.format_report(report))
    if args.json:
        write_json_report(args.json, report)
    return EXIT_OK


import bench_interp  # noqa: E402


@subcommand("interp", help="ImpalaPolicy forward passes/s with activation hooks vs without, and the HookPoints' "
            "own cost (target hook overhead <= 10%%)", add_arguments=bench_interp.add_arguments)
def run_interp(args: argparse.Namespace) -> int:
    """Time hooked against unhooked forward passes, interleaved."""
    report = bench_interp.measure(args)
    print(bench_interp.format_report(report))
    if args.json:
        write_json_report(args.json, report)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per registered subcommand."""
    parser = argparse.ArgumentParser(prog="benchmark.py", description="Throughput benchmarks for shardlab.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for name, command in SUBCOMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, dispatch to the subcommand, and turn config errors into exit code 2."""
    parser = build_parser()
    # overrides may sit between options (``ppo a=1 --iterations 1 b=2``), which plain argparse
    # refuses for a nargs="*" positional; collect the stragglers that look like overrides
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        if not hasattr(args, "overrides"):
            parser.error(f"{args.command} takes no overrides: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    from shardlab.trainers.allocator import keep_freed_memory
    # the trainer does this at start-up; doing it here gives all measurements the same allocator
    keep_freed_memory()
    try:
        return SUBCOMMANDS[args.command].run(args)
    except Exception as exc:
        from shardlab.trainers.config import ConfigError
        if isinstance(exc, ConfigError):
            print(f"benchmark {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise


if __name__ == "__main__":
    sys.exit(main())
