"""PPO on the procgen maze in plain PyTorch, top to bottom: no Lightning, no torchrl.

This is the reference the Lightning ``PPOModule`` (trainers/ppo.py) is checked against
(tests/test_ppo_reference.py) and the "plain" loop that ``scripts/benchmark.py ppo`` times against
the trainer. It uses the same ``MazeEnv``, ``ImpalaPolicy`` and reward normaliser and reads the
same config (``configs/train/*.yaml``); read it in order:

1. setup — seeds, precision, the batched env
2. network — the actor-critic ImpalaPolicy, Adam and the per-optimizer-step LR schedule
3. rollout — ``num_steps`` steps of ``num_envs`` envs under inference mode, normalised rewards
4. GAE — the backward recursion in plain torch
5. loss — clipped policy objective, clipped value loss, entropy bonus
6. update — ``epochs`` × shuffled minibatches: backward, grad-norm clip, Adam step, LR step
7. the training loop

The same numbers as PPOModule, pinned by the test on one rollout of PPOModule's (same obs,
actions, old log-probs, values, rewards and dones): the GAE advantages and value targets, and the
policy loss, value loss, entropy, total loss and its gradients on a minibatch, to 1e-5. With the
same config nothing had to be reconciled; these are the details that make it so, copied from how
PPOModule calls torchrl 0.14 (GAE, ``ClipPPOLoss``):

* ``dones[t]`` means obs ``t+1`` starts a new episode (procgen resets by itself); a done cuts the
  bootstrap and the recursion. Procgen has no separate truncation flag, so PPOModule passes done
  as both done and terminated: a timeout is a termination here too.
* Advantages are normalised per minibatch (``ppo.normalize_advantage``) with the *unbiased* std,
  floored (not offset) at 1e-6, ``torch.finfo(torch.float).resolution``.
* torchrl clips the log-ratio to [log1p(-eps), log1p(eps)]; clamping the ratio to [1-eps, 1+eps]
  is the same up to rounding.
* torchrl's "l2" value loss is (V - R)² without the ½; PPOModule passes ``critic_coeff =
  0.5 · value_coef``, so both weigh the value loss as value_coef · ½(V - R)², the published form.
  With ``ppo.clip_value`` the value is clipped around the old value by the same ``clip_eps`` as the
  ratio and the larger (pessimistic) of the clipped and unclipped errors is kept.
* The entropy bonus is the analytic entropy of the categorical policy, mean over the minibatch.

Different by design (the test does not compare these):

* Actions are sampled with ``torch.multinomial`` instead of ``Categorical.sample``, so the same
  seed plays different actions: the same algorithm, not bit-identical runs.
* Minibatches come from one generator seeded with ``trainer.seed`` (one permutation per epoch);
  PPOModule reseeds its generator every iteration from the seed, the global step and the rank.
* PPOModule runs the IMPALA trunk once and lets torchrl apply the two heads; here ``policy(obs)``
  does both. Same numbers.
* Not here: the L1 activation penalty (``model.l1_coef``, for ``model.activation=l1``), DDP, episode
  metrics and logging, checkpoints and resuming.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass
from typing import Callable, ContextManager, NamedTuple, Optional

import numpy as np
import torch
from omegaconf import DictConfig

from shardlab.envs.maze import MazeEnv, observation_shape
from shardlab.models.impala import ImpalaPolicy, preprocess
from shardlab.trainers.config import ConfigError
from shardlab.trainers.kinds import get_kind
from shardlab.trainers.reward_norm import RewardNormalizer

Phase = Callable[[str], ContextManager]  # times a named part of an iteration (benchmark.py ppo)


def no_timing(phase: str) -> ContextManager:
    """The default :data:`Phase`: time nothing."""
    return contextlib.nullcontext()


# -- 1. setup -------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch as pl.seed_everything does, so runs start alike."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_for(cfg: DictConfig, device: torch.device) -> Callable[[], ContextManager]:
    """A context factory giving the precision Lightning uses for ``trainer.precision``."""
    from shardlab.trainers.precision import device_precision

    precision = device_precision(str(cfg.trainer.precision), device.type)
    if precision in ("32-true", "32"):
        return contextlib.nullcontext
    if precision == "bf16-mixed":  # Lightning autocasts training_step (rollout included); no scaler
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    raise ConfigError(f"the benchmark supports trainer.precision 32-true or bf16-mixed, not {precision}")


# -- 2. network -----------------------------------------------------------------------------------
def make_policy(cfg: DictConfig, device: torch.device) -> ImpalaPolicy:
    """The actor-critic IMPALA network of ``cfg.model`` on ``device``, built as the trainer builds it
    (the ppo kind's network builder, models.impala.build_policy)."""
    return get_kind("ppo").build_network(cfg).to(device)


def make_optimizer(cfg: DictConfig, policy: torch.nn.Module
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam, and an LR that decays linearly per iteration to 0 at ``trainer.total_steps`` env steps
    (``ppo.lr_schedule=linear``) or stays constant; stepped after every optimizer step."""
    ppo = cfg.ppo
    batch = cfg.env.num_envs * ppo.num_steps
    updates_per_iteration = ppo.epochs * (batch // ppo.minibatch_size)
    iterations = max(1, math.ceil(cfg.trainer.total_steps / batch))
    optimizer = torch.optim.Adam(policy.parameters(), lr=ppo.lr, eps=ppo.adam_eps)
    if ppo.lr_schedule == "linear":
        factor = lambda step: max(0.0, 1.0 - (step // updates_per_iteration) / iterations)  # noqa: E731
    else:
        factor = lambda step: 1.0  # noqa: E731
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# -- 3. rollout -----------------------------------------------------------------------------------
@dataclass
class Rollout:
    """One iteration's experience, (time, env) first; written in place every iteration."""

    obs: torch.Tensor  # (T, N, H, W, C) uint8, the observation each action was chosen on
    actions: torch.Tensor  # (T, N)
    log_probs: torch.Tensor  # (T, N) log π_old(action | obs)
    values: torch.Tensor  # (T + 1, N) V_old(obs); the last row is the bootstrap value
    rewards: torch.Tensor  # (T, N), normalised if ppo.normalize_reward
    dones: torch.Tensor  # (T, N) 1.0 where the step ended an episode

    @classmethod
    def empty(cls, cfg: DictConfig, device: torch.device) -> "Rollout":
        T, N = cfg.ppo.num_steps, cfg.env.num_envs
        return cls(obs=torch.empty((T, N, *observation_shape(cfg.env)), dtype=torch.uint8, device=device),
                   actions=torch.empty((T, N), dtype=torch.long, device=device),
                   log_probs=torch.empty((T, N), device=device), values=torch.empty((T + 1, N), device=device),
                   rewards=torch.empty((T, N), device=device), dones=torch.empty((T, N), device=device))


def collect(cfg: DictConfig, policy: ImpalaPolicy, env: MazeEnv, reward_norm: RewardNormalizer,
            obs: torch.Tensor, rollout: Rollout, autocast: Callable[[], ContextManager],
            phase: Phase = no_timing) -> torch.Tensor:
    """Play ``ppo.num_steps`` steps of every env with the current policy into ``rollout``;
    returns the observation to continue from."""
    ppo, channels_last = cfg.ppo, cfg.model.channels_last
    policy.eval()
    with torch.inference_mode(), autocast():
        for t in range(ppo.num_steps):
            rollout.obs[t].copy_(obs, non_blocking=True)
            logits, value = policy(preprocess(rollout.obs[t], channels_last))
            log_probs = logits.float().log_softmax(-1)
            action = torch.multinomial(log_probs.exp(), 1).squeeze(1)
            rollout.actions[t] = action
            rollout.log_probs[t] = log_probs.gather(1, action.unsqueeze(1)).squeeze(1)
            rollout.values[t] = value
            with phase("env"):
                obs, reward, done, _ = env.step(action)
            if ppo.normalize_reward:
                reward = reward_norm(reward, done)
            rollout.rewards[t].copy_(reward, non_blocking=True)
            rollout.dones[t].copy_(done, non_blocking=True)
        next_obs = obs.to(rollout.values.device, non_blocking=True)
        rollout.values[ppo.num_steps] = policy(preprocess(next_obs, channels_last))[1]
    policy.train()
    return obs


# -- 4. GAE ---------------------------------------------------------------------------------------
def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimates and value targets (advantage + value) of one rollout.

    ``rewards`` and ``dones`` are (T, N), ``values`` (T + 1, N) with the bootstrap value last;
    ``dones[t]`` means obs t+1 starts a new episode, so nothing flows back across it."""
    not_done = 1.0 - dones.float()
    advantages = torch.empty_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * values[t + 1] * not_done[t] - values[t]
        last = delta + gamma * lam * not_done[t] * last
        advantages[t] = last
    return advantages, advantages + values[:-1]


# -- 5. loss --------------------------------------------------------------------------------------
class Losses(NamedTuple):
    """The parts of the PPO loss of one minibatch; ``total`` is what is minimised."""

    policy: torch.Tensor  # −mean(min(ratio · A, clip(ratio, 1 ± eps) · A))
    value: torch.Tensor  # mean(½ (V − R)²), the larger of clipped and unclipped with ppo.clip_value
    entropy: torch.Tensor  # mean entropy of the current policy
    total: torch.Tensor  # policy + value_coef · value − entropy_coef · entropy


def ppo_loss(policy: ImpalaPolicy, obs: torch.Tensor, action: torch.Tensor, old_log_prob: torch.Tensor,
             old_value: torch.Tensor, advantage: torch.Tensor, value_target: torch.Tensor, ppo: DictConfig
             ) -> Losses:
    """The clipped PPO loss of one minibatch (``obs`` preprocessed, the rest flat); ``ppo`` is the
    config's ppo section."""
    eps = ppo.clip_eps
    logits, value = policy(obs)
    log_probs = logits.log_softmax(-1)
    log_prob = log_probs.gather(1, action.unsqueeze(1)).squeeze(1)
    entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
    if ppo.normalize_advantage:  # per minibatch, unbiased std floored at 1e-6, as torchrl does
        advantage = (advantage - advantage.mean()) / advantage.std().clamp_min(1e-6)
    ratio = (log_prob - old_log_prob).exp()
    policy_loss = -torch.min(ratio * advantage, ratio.clamp(1 - eps, 1 + eps) * advantage).mean()
    value_error = (value - value_target).pow(2)
    if ppo.clip_value:
        clipped = old_value + (value - old_value).clamp(-eps, eps)
        value_error = torch.max(value_error, (clipped - value_target).pow(2))
    value_loss = 0.5 * value_error.mean()
    total = policy_loss + ppo.value_coef * value_loss - ppo.entropy_coef * entropy
    return Losses(policy_loss, value_loss, entropy, total)


# -- 6. update ------------------------------------------------------------------------------------
def update(cfg: DictConfig, policy: ImpalaPolicy, optimizer: torch.optim.Optimizer,
           scheduler: torch.optim.lr_scheduler.LRScheduler, obs: torch.Tensor, batch: list[torch.Tensor],
           generator: torch.Generator, autocast: Callable[[], ContextManager], device: torch.device) -> None:
    """``ppo.epochs`` passes over the rollout in shuffled minibatches, one optimizer step each.

    ``obs`` is the flat (T·N, H, W, C) uint8 rollout; ``batch`` the flat action, old log-prob, old
    value, advantage and value target, in that order."""
    ppo = cfg.ppo
    total, size = obs.shape[0], ppo.minibatch_size
    for _ in range(ppo.epochs):
        perm = torch.randperm(total, generator=generator).to(device)
        for start in range(0, total, size):
            idx = perm[start:start + size]
            with autocast():
                loss = ppo_loss(policy, preprocess(obs[idx], cfg.model.channels_last),
                                *(x[idx] for x in batch), ppo).total
            # what Lightning does around training_step: backward, clip, Adam, LR schedule
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), ppo.max_grad_norm)
            optimizer.step()
            scheduler.step()


# -- 7. the training loop -------------------------------------------------------------------------
def train(cfg: DictConfig, device: torch.device, iterations: int, phase: Phase = no_timing,
          on_start: Optional[Callable[[], None]] = None,
          on_iteration_end: Optional[Callable[[int], None]] = None) -> ImpalaPolicy:
    """Run ``iterations`` PPO iterations (rollout, GAE, update) of ``cfg``; returns the policy.

    ``phase`` times the rollout (and the env steps inside it), GAE and update; ``on_start`` runs
    once the envs are reset, ``on_iteration_end(i)`` after iteration ``i``'s last optimizer step."""
    ppo, T, N = cfg.ppo, cfg.ppo.num_steps, cfg.env.num_envs
    seed_everything(cfg.trainer.seed)
    policy = make_policy(cfg, device)
    optimizer, scheduler = make_optimizer(cfg, policy)
    autocast = autocast_for(cfg, device)
    env = get_kind("ppo").build_env(cfg)  # env.num_envs mazes seeded with env.seed, as the trainer's rank 0
    reward_norm = RewardNormalizer(N, ppo.gamma, ppo.reward_clip)
    rollout = Rollout.empty(cfg, device)
    generator = torch.Generator().manual_seed(cfg.trainer.seed)  # minibatch shuffling
    try:
        obs = env.reset()
        if on_start:
            on_start()
        for iteration in range(iterations):
            with phase("rollout"):
                obs = collect(cfg, policy, env, reward_norm, obs, rollout, autocast, phase)
            with phase("gae"), torch.no_grad():
                advantages, value_targets = gae(rollout.rewards, rollout.values, rollout.dones,
                                                ppo.gamma, ppo.gae_lambda)
            with phase("update"):
                flat = [x.reshape(T * N) for x in (rollout.actions, rollout.log_probs, rollout.values[:-1],
                                                   advantages, value_targets)]
                update(cfg, policy, optimizer, scheduler, rollout.obs.view(T * N, *rollout.obs.shape[2:]),
                       flat, generator, autocast, device)
            if on_iteration_end:
                on_iteration_end(iteration)
    finally:
        env.close()
    return policy
