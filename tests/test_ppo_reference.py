"""scripts/ppo_reference.py, the plain PyTorch PPO, against the Lightning PPOModule on one rollout.

PPOModule.training_step collects a rollout of the CPU maze recipe (4 envs × 16 steps, scale 1,
grid observations) and computes its loss; the reference gets the same rollout (obs, actions, old
log-probs, values, rewards, dones) and must give the same GAE advantages and value targets, and
the same policy loss, value loss, entropy, total loss and gradients on the same minibatch. The
loss is compared on the iteration's second minibatch after the policy has moved (changes to its
heads stand in for an optimizer step), so that some ratios and value changes are clipped and
some are not; the rollout's env adds seeded rewards and episode ends so that GAE sees both. The
PPO coefficients are set away from their defaults, and the test also shows that a reference with
the default clip or lambda, or one that ignored dones, would miss the tolerance by far.
"""

from __future__ import annotations

import contextlib
import os
import sys
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from shardlab.models.impala import preprocess
from shardlab.trainers.config import load_config, to_dict
from shardlab.trainers.ppo import LOSS_STATS, PPOModule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import ppo_reference  # noqa: E402  (scripts/ is not a package)

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = os.path.join(ROOT, "configs", "train", "maze_ppo_cpu.yaml")
TINY = ["env.num_envs=4", "ppo.num_steps=16", "ppo.minibatch_size=32", "ppo.epochs=2", "model.scale=1",
        "trainer.progress_bar=false",
        # away from the recipe's values (gamma 0.99, gae_lambda 0.95, clip_eps 0.2, value_coef 0.5,
        # entropy_coef 0.01), so that a constant written into either side instead of the config shows
        "ppo.gamma=0.9", "ppo.gae_lambda=0.8", "ppo.clip_eps=0.15", "ppo.value_coef=0.7",
        "ppo.entropy_coef=0.05"]
ATOL = 1e-5


class ScriptedEnds:
    """The module's MazeEnv plus seeded rewards (10, like the cheese) and episode ends: a random
    policy rarely finishes a maze in 16 steps, and GAE should see rewards and dones."""

    def __init__(self, env, seed: int = 11):
        self.env, self.generator = env, torch.Generator().manual_seed(seed)
        self.num_envs = env.num_envs  # the BatchedEnv protocol the training rollout plays

    def step(self, action):
        obs, reward, done, finished = self.env.step(action)
        bonus = torch.rand(reward.shape, generator=self.generator) < 0.2
        ended = torch.rand(done.shape, generator=self.generator) < 0.15
        return obs, reward + 10.0 * bonus, done | ended, finished

    def close(self):
        self.env.close()


def with_changes(ppo, **changes) -> SimpleNamespace:
    """A copy of the config's ppo section with some values changed, for the reference."""
    return SimpleNamespace(**{**OmegaConf.to_container(ppo), **changes})


def module_rollout(overrides: list[str]):
    """A PPOModule after the first training_step of an iteration: the rollout is collected and
    the first minibatch's loss computed. A stub stands in for the pl.Trainer (step counter, rank,
    optimizer), so the test calls the module's own training_step."""
    cfg = load_config(RECIPE, TINY + overrides)
    torch.manual_seed(0)
    module = PPOModule(to_dict(cfg), world_size=1)
    optimizer = module.configure_optimizers()["optimizer"]
    trainer = SimpleNamespace(global_step=0, global_rank=0, local_rank=0, world_size=1, optimizers=[optimizer])
    module.trainer = trainer
    module.on_train_start()
    module.env = ScriptedEnds(module.env)
    first_loss = module.training_step(None, 0)
    module.on_train_end()
    return cfg, module, trainer, first_loss


def reference_minibatch(cfg, module, update: int, advantages, value_targets):
    """The reference's inputs for the module's minibatch ``update``, from the module's rollout."""
    buf, mb = module._buffer, cfg.ppo.minibatch_size
    epoch, index = divmod(update, module.schedule.minibatches)
    idx = module._perms[epoch][index * mb:(index + 1) * mb]
    flat = lambda x: x.reshape(-1, *x.shape[2:])[idx]  # noqa: E731  (rows are t * num_envs + n)
    obs = preprocess(flat(buf["obs"]), cfg.model.channels_last)
    return (obs, flat(buf["action"]), flat(buf["log_prob"]), flat(buf["value"][:-1]),
            advantages.reshape(-1)[idx], value_targets.reshape(-1)[idx])


def move_policy(module, obs: torch.Tensor, clip_eps: float, seed: int = 5) -> None:
    """In place of an optimizer step: noise on the policy head, and a random direction added to
    the value head, scaled so that the median value change on ``obs`` is 1.1 × ``clip_eps`` (the
    observations of these small mazes are much alike, so plain noise would move every value by
    about the same amount; some observations repeat, hence not exactly ``clip_eps``)."""
    g = torch.Generator().manual_seed(seed)
    head = module.policy.fc_value
    with torch.no_grad():
        for parameter in module.policy.fc_policy.parameters():
            parameter.add_(0.005 * torch.randn(parameter.shape, generator=g))
        direction = torch.randn(head.weight.shape, generator=g)
        change = module.policy.embedder(obs) @ direction.T
        head.weight.add_(direction * 1.1 * clip_eps / change.abs().median())


def module_stats(module) -> dict[str, float]:
    """The loss parts the module recorded for its last training_step."""
    return dict(zip(LOSS_STATS, module._stats[-1].tolist()))


@pytest.mark.parametrize("normalize_advantage,clip_value", [(True, True), (False, False)])
def test_reference_matches_ppo_module_on_one_rollout(normalize_advantage, clip_value):
    flags = [f"ppo.normalize_advantage={normalize_advantage}", f"ppo.clip_value={clip_value}"]
    cfg, module, trainer, first_loss = module_rollout(flags)
    ppo, buf = cfg.ppo, module._buffer
    assert buf["done"].any() and not buf["done"].all() and (buf["reward"] != 0).any()

    # GAE: the same advantages and value targets from the same rewards, values and dones
    advantages, value_targets = ppo_reference.gae(buf["reward"], buf["value"], buf["done"], ppo.gamma, ppo.gae_lambda)
    torch.testing.assert_close(advantages.reshape(-1), buf["advantage"], rtol=0, atol=ATOL)
    torch.testing.assert_close(value_targets.reshape(-1), buf["value_target"], rtol=0, atol=ATOL)
    # ...which a wrong lambda or ignoring the dones would miss by far
    for wrong in (ppo_reference.gae(buf["reward"], buf["value"], buf["done"], ppo.gamma, 0.95)[0],
                  ppo_reference.gae(buf["reward"], buf["value"], torch.zeros_like(buf["done"]), ppo.gamma,
                                    ppo.gae_lambda)[0]):
        assert (wrong.reshape(-1) - buf["advantage"]).abs().max() > 100 * ATOL

    # first minibatch, policy unchanged since the rollout: every ratio is 1
    with torch.no_grad():
        ref = ppo_reference.ppo_loss(module.policy, *reference_minibatch(cfg, module, 0, advantages, value_targets), ppo)
    torch.testing.assert_close(ref.total, first_loss.detach(), rtol=0, atol=ATOL)
    assert module_stats(module)["clip_fraction"] == 0.0

    # the policy moves, then the module computes the loss of the iteration's second minibatch
    batch = reference_minibatch(cfg, module, 1, advantages, value_targets)
    move_policy(module, batch[0], ppo.clip_eps)
    trainer.global_step = 1
    loss = module.training_step(None, 1)
    got = module_stats(module)
    ref = ppo_reference.ppo_loss(module.policy, *batch, ppo)
    # the loss parts as the module weighs them: (module, reference)
    parts = {"policy": (got["loss_objective"], ref.policy.item()),
             "value": (got["loss_critic"], ppo.value_coef * ref.value.item()),
             "entropy bonus": (got["loss_entropy"], -ppo.entropy_coef * ref.entropy.item()),
             "entropy": (got["entropy"], ref.entropy.item()),
             "total": (loss.item(), ref.total.item())}
    print("\nmodule vs reference:", ", ".join(f"{k} {a:.7f} vs {b:.7f}" for k, (a, b) in parts.items()),
          f"(clip fraction {got['clip_fraction']:.2f}, value clip fraction {got['value_clip_fraction']:.2f})")
    # the minibatch clips some ratios (and value changes) and leaves others
    assert 0.1 < got["clip_fraction"] < 0.9
    if clip_value:
        assert 0.1 < got["value_clip_fraction"] < 0.9
    for name, (have, want) in parts.items():
        assert have == pytest.approx(want, abs=ATOL), name
    # the same loss gives the same gradients, so the same optimizer step
    params = list(module.policy.parameters())
    for want, have in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref.total, params)):
        torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-6)
    # a reference with the default clip would miss
    with torch.no_grad():
        default_clip = ppo_reference.ppo_loss(module.policy, *batch, with_changes(ppo, clip_eps=0.2)).total
    assert abs(default_clip.item() - loss.item()) > 100 * ATOL


def test_reference_builds_the_trainers_network():
    """make_policy builds the network PPOModule.build_model builds: same weights from the same seed."""
    cfg = load_config(RECIPE, TINY)
    torch.manual_seed(3)
    want = PPOModule.build_model(cfg).state_dict()
    torch.manual_seed(3)
    have = ppo_reference.make_policy(cfg, torch.device("cpu")).state_dict()
    assert list(have) == list(want)
    for key in want:
        assert torch.equal(have[key], want[key]), key


def test_reference_loop_trains():
    """One iteration of the reference loop: rollout, GAE and every minibatch update, with the hooks
    the benchmark times it by."""
    cfg = load_config(RECIPE, TINY)
    phases, ends = [], []

    def timed(name: str) -> contextlib.nullcontext:
        phases.append(name)
        return contextlib.nullcontext()

    ppo_reference.seed_everything(cfg.trainer.seed)  # as train() does: the initial weights
    before = ppo_reference.make_policy(cfg, torch.device("cpu")).state_dict()
    policy = ppo_reference.train(cfg, torch.device("cpu"), 1, phase=timed, on_start=lambda: ends.append("start"),
                                 on_iteration_end=ends.append)
    assert ends == ["start", 0]
    assert phases.count("env") == cfg.ppo.num_steps and {"rollout", "gae", "update"} <= set(phases)
    after = policy.state_dict()
    assert all(torch.isfinite(value).all() for value in after.values())
    assert any(not torch.equal(before[key], after[key]) for key in before)
