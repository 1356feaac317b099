"""PPO on the procgen maze as a LightningModule.

One ``training_step`` is one PPO minibatch update. The first minibatch of every iteration
collects a rollout of ``num_envs × num_steps`` (inference mode), computes GAE with torchrl,
and shuffles; the rest of the iteration's ``epochs × minibatches`` steps read from that buffer.
Lightning does the backward pass, DDP all-reduce, grad-norm clipping, Adam step and LR schedule,
so every rank runs the same number of optimizer steps by construction. The schema (``algo: ppo``)
and its checks are in trainers/ppo_config.py.
"""

from __future__ import annotations

import json
import math
import random
import time
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch.distributions import Categorical
from torch.utils.data import DataLoader

from shardlab.envs.procgen_import import gym_notice_silenced

with gym_notice_silenced():  # torchrl imports the unmaintained gym, which prints a notice on first import
    from torchrl.modules import ProbabilisticActor, ValueOperator
    from torchrl.objectives import ClipPPOLoss
    from torchrl.objectives.value.functional import vec_generalized_advantage_estimate

from shardlab.envs.batched import BatchedEnv
from shardlab.envs.maze import Episode, observation_shape
from shardlab.models.impala import preprocess
from shardlab.models.sparse import l1_penalty
from shardlab.trainers.base import ShardlabModule, tick_loader
from shardlab.trainers.config import build_config
from shardlab.trainers.kinds import get_kind
from shardlab.trainers.reward_norm import RewardNormalizer
from shardlab.envs.rollout import rollout
from shardlab.trainers.stopping import raise_if_stop_requested, stop_requested

LOSS_STATS = ("loss_objective", "loss_critic", "loss_entropy", "entropy", "kl_approx",
              "clip_fraction", "value_clip_fraction", "explained_variance")


class Schedule:
    """How env steps, iterations and optimizer steps relate for one config and world size."""

    def __init__(self, cfg: DictConfig, world_size: int):
        self.world_size = world_size
        self.batch = cfg.env.num_envs * cfg.ppo.num_steps  # per rank
        self.minibatches = self.batch // cfg.ppo.minibatch_size
        self.updates_per_iteration = cfg.ppo.epochs * self.minibatches
        self.steps_per_iteration = self.batch * world_size  # env steps over all ranks
        self.iterations = max(1, math.ceil(cfg.trainer.total_steps / self.steps_per_iteration))
        self.max_optimizer_steps = self.iterations * self.updates_per_iteration
        self.checkpoint_every = max(1, cfg.trainer.checkpoint_every // self.steps_per_iteration)

    def iteration(self, optimizer_step: int) -> int:
        """Iterations completed after ``optimizer_step`` optimizer steps."""
        return optimizer_step // self.updates_per_iteration

    def env_steps(self, optimizer_step: int) -> int:
        """Env steps over all ranks completed after ``optimizer_step`` optimizer steps."""
        return self.iteration(optimizer_step) * self.steps_per_iteration


class PPOModule(ShardlabModule):
    """PPO with torchrl's GAE and ClipPPOLoss on an IMPALA policy."""

    kind, progress_unit = "ppo", "step"
    # env.backend: the checkpoint's maze RNG state is the backend's own (numpy's or a torch generator's)
    resume_fixed_keys = ("model", "env.num_envs", "env.backend", "ppo.num_steps", "ppo.minibatch_size", "ppo.epochs")
    # the episode/<metric> rates beside return and length: metric → the Episode's boolean field
    episode_rates = {"cheese_rate": "reached_cheese", "corner_rate": "reached_corner"}

    def __init__(self, config: dict, world_size: int = 1):
        super().__init__()
        self.save_hyperparameters({"config": config, "world_size": world_size})
        self.cfg = build_config(config, source="checkpoint config")
        self.schedule = Schedule(self.cfg, world_size)
        self.policy = self.build_model(self.cfg)
        ppo = self.cfg.ppo
        actor = ProbabilisticActor(
            TensorDictModule(self.policy.fc_policy, in_keys=["hidden"], out_keys=["logits"]),
            in_keys=["logits"], distribution_class=Categorical, return_log_prob=True)
        critic = ValueOperator(self.policy.fc_value, in_keys=["hidden"])
        # torchrl's l2 is (V − R)²; the published loss is value_coef · 0.5 · (V − R)²
        self.loss = ClipPPOLoss(actor, critic, clip_epsilon=ppo.clip_eps, entropy_coeff=ppo.entropy_coef,
                                critic_coeff=0.5 * ppo.value_coef, loss_critic_type="l2",
                                normalize_advantage=ppo.normalize_advantage,
                                clip_value=ppo.clip_eps if ppo.clip_value else None, functional=False)
        self.log_prob_key = self.loss.tensor_keys.sample_log_prob
        self.env: BatchedEnv | None = None
        self.reward_norm = RewardNormalizer(self.cfg.env.num_envs, ppo.gamma, ppo.reward_clip)
        self._restored: dict[str, Any] | None = None
        self._buffer: dict[str, torch.Tensor] = {}
        self._perms: list[torch.Tensor] = []
        self._episodes: list[Episode] = []
        self._stats: list[torch.Tensor] = []
        self._iteration_start = 0.0
        self._iteration_lr = 0.0
        self._logged_step = -1
        self.last_metrics: dict[str, float] = {}
        self._rollout_seconds = 0.0
        self.metrics_path: str | None = None

    # -- data -------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        """Dummy items; the rollout buffer is the data (num_workers=0: workers would go stale)."""
        return tick_loader()

    def on_train_start(self) -> None:
        """Build this rank's envs (seeds differ per rank and per resume point) and restore RNGs."""
        start_iteration = self.schedule.iteration(self.global_step)
        self.env = self.make_env(seed_offset=7919 * start_iteration)
        if self._restored is not None:
            self._restore_rngs(self._restored)
            self._restored = None
        self._obs = self.env.reset()

    def make_env(self, seed_offset: int) -> BatchedEnv:
        """This rank's batched env (env.backend's, on the CPU) with its seed shifted by ``seed_offset``."""
        return get_kind(self.kind).build_env(self.cfg, rank=self.global_rank, seed=self.cfg.env.seed + seed_offset)

    def observation_shape(self) -> tuple[int, ...]:
        """Shape of one uint8 observation from the env."""
        return observation_shape(self.cfg.env)

    def preprocess(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 env observations → the network's input."""
        return preprocess(obs, self.cfg.model.channels_last)

    def on_train_end(self) -> None:
        """Close the envs."""
        if self.env is not None:
            self.env.close()
            self.env = None

    # -- rollout ----------------------------------------------------------------------------
    def _collect(self) -> None:
        cfg, device = self.cfg, self.device
        T, N = cfg.ppo.num_steps, cfg.env.num_envs
        start = time.perf_counter()
        if not self._buffer:
            self._buffer = {
                "obs": torch.empty((T, N, *self.observation_shape()), dtype=torch.uint8, device=device),
                "action": torch.empty((T, N), dtype=torch.long, device=device),
                "log_prob": torch.empty((T, N), device=device),
                "value": torch.empty((T + 1, N), device=device),
                "reward": torch.empty((T, N), device=device),
                "done": torch.empty((T, N), dtype=torch.bool, device=device),
            }
        buf = self._buffer
        was_training = self.policy.training
        self.policy.eval()
        chosen: dict[str, torch.Tensor] = {}

        def act(obs: torch.Tensor) -> torch.Tensor:
            chosen["obs"] = obs.to(device, non_blocking=True)  # copied to the device once per step
            logits, chosen["value"] = self.policy(self.preprocess(chosen["obs"]))
            dist = Categorical(logits=logits)
            action = dist.sample()
            chosen["log_prob"] = dist.log_prob(action)
            return action

        def record(t: int, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, done: torch.Tensor,
                   finished: list) -> None:
            buf["obs"][t], buf["action"][t] = chosen["obs"], action
            buf["log_prob"][t], buf["value"][t] = chosen["log_prob"], chosen["value"]
            self._episodes.extend(finished)
            if cfg.ppo.normalize_reward:
                reward = self.reward_norm(reward, done)
            buf["reward"][t], buf["done"][t] = reward.to(device), done.to(device)

        def bootstrap(obs: torch.Tensor) -> None:
            self._obs = obs  # the next iteration starts here
            buf["value"][T] = self.policy(self.preprocess(obs.to(device)))[1]

        with torch.inference_mode():
            # SIGINT/SIGTERM ends the rollout after the env step in flight; the iteration is then
            # abandoned (nothing trains on or checkpoints a partial buffer)
            rollout(self.env, act, obs=self._obs, steps=T, until="steps", on_step=record, on_end=bootstrap,
                    stop=stop_requested)
        self.policy.train(was_training)
        raise_if_stop_requested()
        # torchrl's GAE wants (batch, time, 1); procgen has no separate truncation flag
        as_btf = lambda x: x.transpose(0, 1).unsqueeze(-1)
        done = as_btf(buf["done"])
        advantage, value_target = vec_generalized_advantage_estimate(
            cfg.ppo.gamma, cfg.ppo.gae_lambda, as_btf(buf["value"][:-1]), as_btf(buf["value"][1:]),
            as_btf(buf["reward"]), done, done)
        buf["advantage"] = advantage.squeeze(-1).transpose(0, 1).reshape(-1).clone()
        buf["value_target"] = value_target.squeeze(-1).transpose(0, 1).reshape(-1).clone()
        generator = torch.Generator().manual_seed(cfg.trainer.seed * 100_003 + self.global_step + self.global_rank)
        self._perms = [torch.randperm(T * N, generator=generator).to(device) for _ in range(cfg.ppo.epochs)]
        self._rollout_seconds = time.perf_counter() - start

    def _minibatch(self, update: int) -> TensorDict:
        mb, buf = self.cfg.ppo.minibatch_size, self._buffer
        epoch, index = divmod(update, self.schedule.minibatches)
        idx = self._perms[epoch][index * mb:(index + 1) * mb]
        flat = lambda x: x.reshape(-1, *x.shape[2:])[idx]
        obs = self.preprocess(flat(buf["obs"]))
        return TensorDict({
            "obs": obs, "action": flat(buf["action"]), self.log_prob_key: flat(buf["log_prob"]),
            "state_value": flat(buf["value"][:-1]).unsqueeze(-1),
            "advantage": buf["advantage"][idx].unsqueeze(-1),
            "value_target": buf["value_target"][idx].unsqueeze(-1)}, batch_size=[len(idx)])

    # -- optimisation -----------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """One minibatch update; the first of each iteration also collects the rollout."""
        update = self.global_step % self.schedule.updates_per_iteration
        if update == 0:
            self._iteration_start = time.perf_counter()
            self._iteration_lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            self._collect()
        td = self._minibatch(update)
        # the trunk runs once; torchrl's loss only applies the two heads to its output
        td["hidden"] = self.policy.embedder(td["obs"])
        losses = self.loss(td)
        # kept on the device and read once per iteration: a .item() per step would sync a GPU
        nan = torch.tensor(float("nan"), device=self.device)
        self._stats.append(torch.stack([losses[k].detach().float().mean() if k in losses.keys() else nan
                                        for k in LOSS_STATS]))
        loss = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
        if self.cfg.model.l1_coef:  # activation=l1: penalty recorded by the embedder pass above
            loss = loss + self.cfg.model.l1_coef * l1_penalty(self.policy)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After an iteration's last optimizer step: log it (the clock includes that step)."""
        self.iteration_metrics()

    def configure_optimizers(self) -> dict:
        """Adam with linear (or constant) LR decay per iteration."""
        optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.cfg.ppo.lr, eps=self.cfg.ppo.adam_eps)
        iterations, per_iteration = self.schedule.iterations, self.schedule.updates_per_iteration
        if self.cfg.ppo.lr_schedule == "linear":
            factor = lambda step: max(0.0, 1.0 - (step // per_iteration) / iterations)
        else:
            factor = lambda step: 1.0
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- logging ----------------------------------------------------------------------------
    def iteration_metrics(self) -> dict[str, float]:
        """The metrics of the iteration that just ended, logged once; callbacks may ask first."""
        if self.global_step % self.schedule.updates_per_iteration == 0 and self._logged_step != self.global_step:
            self._logged_step = self.global_step
            self._end_iteration()
        return self.last_metrics

    def _end_iteration(self) -> None:
        elapsed = time.perf_counter() - self._iteration_start
        episodes = self._episode_totals()
        env_steps = self.schedule.env_steps(self.global_step)
        row: dict[str, float] = {"env_steps": env_steps, "iteration": self.schedule.iteration(self.global_step)}
        row.update(self.episode_metrics(episodes))
        means = torch.stack(self._stats).mean(0).tolist()
        row.update({f"train/{k}": v for k, v in zip(LOSS_STATS, means) if not math.isnan(v)})
        row["train/lr"] = self._iteration_lr
        row["perf/env_steps_per_sec"] = self.schedule.steps_per_iteration / elapsed
        row["perf/rollout_fraction"] = self._rollout_seconds / elapsed
        self._stats.clear()
        self.last_metrics = row
        self.log_row(row)

    def episode_sums(self, episodes: list) -> list[float]:
        """[return sum, length sum, one count per :attr:`episode_rates`, episodes] of this rank's episodes."""
        return [sum(e.ret for e in episodes), sum(e.length for e in episodes),
                *(sum(getattr(e, flag) for e in episodes) for flag in self.episode_rates.values()), len(episodes)]

    def episode_metrics(self, sums: list[float]) -> dict[str, float]:
        """The ``episode/*`` metrics from :meth:`episode_sums` summed over ranks (none if no episode ended)."""
        *totals, count = sums
        if count == 0:
            return {}
        names = ["return", "length", *self.episode_rates]
        return {**{f"episode/{name}": total / count for name, total in zip(names, totals)}, "episode/count": count}

    def _episode_totals(self) -> list[float]:
        """:meth:`episode_sums` of the iteration's finished episodes, summed over all ranks."""
        eps, self._episodes = self._episodes, []
        totals = torch.tensor(self.episode_sums(eps), dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        return totals.tolist()

    # -- the shared run loop's interface (trainers/base.py) -----------------------------------
    def max_optimizer_steps(self) -> int:
        """Iterations × minibatch updates per iteration."""
        return self.schedule.max_optimizer_steps

    def gradient_clip_val(self) -> float:
        """ppo.max_grad_norm."""
        return self.cfg.ppo.max_grad_norm

    def progress(self, optimizer_step: int) -> int:
        """Env steps over all ranks."""
        return self.schedule.env_steps(optimizer_step)

    def progress_total(self) -> int:
        """Env steps of the whole run (whole iterations)."""
        return self.schedule.iterations * self.schedule.steps_per_iteration

    def at_boundary(self, optimizer_step: int) -> bool:
        """Iteration ends: no rollout is in flight."""
        return optimizer_step % self.schedule.updates_per_iteration == 0

    def checkpoint_due(self, optimizer_step: int) -> bool:
        """Every trainer.checkpoint_every env steps (rounded to iterations)."""
        return self.schedule.iteration(optimizer_step) % self.schedule.checkpoint_every == 0

    def postfix(self) -> dict[str, str]:
        """Return and cheese rate of the iteration's finished episodes."""
        row = self.iteration_metrics()
        if "episode/return" not in row:
            return {}
        return {"return": f"{row['episode/return']:.2f}", "cheese": f"{row['episode/cheese_rate']:.0%}"}

    # -- checkpoints ------------------------------------------------------------------------
    def shardlab_state(self) -> dict[str, Any]:
        """Counters, reward-normaliser statistics and RNG states (all weights_only-safe)."""
        return {
            "iteration": self.schedule.iteration(self.global_step),
            "reward_norm": self.reward_norm.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": json.dumps(random.getstate()),
                    "numpy": _numpy_state_json(),
                    "placement": json.dumps(self.env.rng_state() if self.env else None)},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the normaliser now and the RNGs once the envs exist."""
        extra = checkpoint.get("shardlab", {})
        if "reward_norm" in extra:
            self.reward_norm.load_state_dict(extra["reward_norm"])
        self._restored = extra.get("rng")

    def _restore_rngs(self, rng: dict) -> None:
        torch.set_rng_state(rng["torch"])
        state = json.loads(rng["python"])
        random.setstate((state[0], tuple(state[1]), state[2]))
        keys, pos, has_gauss, cached = json.loads(rng["numpy"])
        np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        placement = json.loads(rng["placement"])
        if placement is not None and self.global_rank == 0:
            self.env.set_rng_state(placement)


def _numpy_state_json() -> str:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return json.dumps([keys.tolist(), int(pos), int(has_gauss), float(cached)])
