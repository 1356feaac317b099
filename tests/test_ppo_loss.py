"""PPO loss on a tiny case: PPOModule's torchrl ClipPPOLoss against a plain-torch computation, and
the GAE that PPOModule._collect computes against a hand-written backward recursion.

How torchrl 0.14 normalises advantages (torchrl/_utils.py ``_standardize``, reached from
``PPOLoss._standardize_advantage`` when the batch has no "shifted_valid" mask):
``(A - A.mean()) / A.std().clamp_min(torch.finfo(torch.float).resolution)`` — the *unbiased*
std (Bessel's correction), eps 1e-6 as a floor on the std rather than added to it. The ratio clip
is done on the log-ratio with bounds log1p(-eps), log1p(eps), which equals clamping the ratio
to [1 - eps, 1 + eps].
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torch.distributions import Categorical
from torchrl.objectives.value.functional import vec_generalized_advantage_estimate

from shardlab.envs.maze import Episode
from shardlab.models.impala import preprocess
from shardlab.trainers.config import build_config, to_dict
from shardlab.trainers.ppo import PPOModule

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"env": {"num_envs": 3, "rand_region": 5}, "model": {"scale": 1, "channels_last": False},
        "ppo": {"num_steps": 8, "minibatch_size": 6, "epochs": 2, "clip_eps": 0.15, "value_coef": 0.7,
                "entropy_coef": 0.05, "gamma": 0.9, "gae_lambda": 0.8},
        "trainer": {"total_steps": 48}}


def tiny_module(**ppo) -> PPOModule:
    recipe = {k: dict(v) for k, v in TINY.items()}
    recipe["ppo"].update(ppo)
    torch.manual_seed(0)
    return PPOModule(to_dict(build_config(recipe)))


def tiny_batch(module: PPOModule, size: int = 12, seed: int = 1) -> TensorDict:
    """Old log-probs perturbed from the current policy so some ratios leave [1-eps, 1+eps];
    new values perturbed from the old ones so some value deltas leave [-eps, eps]."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(size, 256, generator=g).relu() * 3
    with torch.no_grad():
        logits = module.policy.fc_policy(hidden)
        value = module.policy.fc_value(hidden)
    action = torch.randint(0, 15, (size,), generator=g)
    current = Categorical(logits=logits).log_prob(action)
    old_log_prob = current + 0.4 * torch.randn(size, generator=g)
    old_value = value + 0.3 * torch.randn(size, 1, generator=g)
    return TensorDict({
        "hidden": hidden, "action": action, module.log_prob_key: old_log_prob,
        "state_value": old_value,
        "advantage": 2.0 * torch.randn(size, 1, generator=g) + 0.5,
        "value_target": old_value + torch.randn(size, 1, generator=g),
    }, batch_size=[size])


def reference_losses(module: PPOModule, td: TensorDict) -> dict[str, torch.Tensor]:
    ppo = module.cfg.ppo
    eps = ppo.clip_eps
    policy = module.policy
    logits = policy.fc_policy(td["hidden"])
    dist = Categorical(logits=logits)
    log_prob = dist.log_prob(td["action"])
    ratio = torch.exp(log_prob - td[module.log_prob_key])
    adv = td["advantage"].squeeze(-1)
    if ppo.normalize_advantage:
        adv = (adv - adv.mean()) / adv.std(unbiased=True).clamp_min(torch.finfo(torch.float).resolution)
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    value = policy.fc_value(td["hidden"]).squeeze(-1)
    old_value, target = td["state_value"].squeeze(-1), td["value_target"].squeeze(-1)
    value_loss = (value - target) ** 2
    if ppo.clip_value:
        clipped = old_value + (value - old_value).clamp(-eps, eps)
        value_loss = torch.max(value_loss, (clipped - target) ** 2)
    return {
        "loss_objective": -surrogate.mean(),
        "loss_critic": 0.5 * ppo.value_coef * value_loss.mean(),
        "loss_entropy": -ppo.entropy_coef * dist.entropy().mean(),
        "entropy": dist.entropy().mean(),
        "clip_fraction": ((ratio < 1 - eps) | (ratio > 1 + eps)).float().mean(),
    }


@pytest.mark.parametrize("normalize_advantage,clip_value", [(True, True), (False, True), (True, False)])
def test_clip_ppo_loss_matches_plain_torch(normalize_advantage, clip_value):
    module = tiny_module(normalize_advantage=normalize_advantage, clip_value=clip_value)
    td = tiny_batch(module)
    want = reference_losses(module, td)
    got = module.loss(td.clone())
    # the tiny case exercises both sides of both clips
    assert 0 < float(want["clip_fraction"]) < 1
    for key in ("loss_objective", "loss_critic", "loss_entropy", "entropy"):
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-5, msg=key)
    torch.testing.assert_close(got["clip_fraction"], want["clip_fraction"], rtol=0, atol=1e-6)
    if clip_value:
        old, new = td["state_value"], module.policy.fc_value(td["hidden"])
        frac = ((new - old).abs() > module.cfg.ppo.clip_eps).float().mean()
        assert 0 < float(frac) < 1
        torch.testing.assert_close(got["value_clip_fraction"], frac, rtol=0, atol=1e-6)


def test_loss_gradients_reach_the_policy_heads():
    module = tiny_module()
    td = tiny_batch(module, seed=5)
    params = [module.policy.fc_policy.weight, module.policy.fc_value.weight, module.policy.fc_value.bias]
    got = module.loss(td.clone())
    total = got["loss_objective"] + got["loss_critic"] + got["loss_entropy"]
    grads = torch.autograd.grad(total, params)
    want = reference_losses(module, td)
    ref_grads = torch.autograd.grad(want["loss_objective"] + want["loss_critic"] + want["loss_entropy"], params)
    for g, r in zip(grads, ref_grads):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_advantage_normalisation_uses_unbiased_std():
    """Pin the torchrl detail the reference copies: with a biased std the loss would differ."""
    module = tiny_module(entropy_coef=0.0)
    td = tiny_batch(module, size=4, seed=9)
    got = module.loss(td.clone())["loss_objective"].detach()
    adv = td["advantage"].squeeze(-1)
    biased = (adv - adv.mean()) / adv.std(unbiased=False)
    logits = module.policy.fc_policy(td["hidden"])
    ratio = torch.exp(Categorical(logits=logits).log_prob(td["action"]) - td[module.log_prob_key])
    eps = module.cfg.ppo.clip_eps
    with_biased = -torch.min(ratio * biased, ratio.clamp(1 - eps, 1 + eps) * biased).mean()
    assert abs(float(got) - float(with_biased.detach())) > 1e-3
    torch.testing.assert_close(got, reference_losses(module, td)["loss_objective"].detach(), rtol=0, atol=1e-5)


def test_loss_coefficients_come_from_the_config():
    module = tiny_module()
    loss = module.loss
    assert float(loss.clip_epsilon) == pytest.approx(0.15)
    assert float(loss.entropy_coeff) == pytest.approx(0.05)
    assert float(loss.critic_coeff) == pytest.approx(0.5 * 0.7)
    assert float(loss.clip_value) == pytest.approx(0.15)
    assert loss.loss_critic_type == "l2" and loss.normalize_advantage


# -- GAE ------------------------------------------------------------------------------------------------

def gae_reference(reward, value, done, gamma, lam):
    """Backward recursion over (T, N) tensors; value has T + 1 rows (the bootstrap last)."""
    T = reward.shape[0]
    advantage = torch.zeros_like(reward)
    last = torch.zeros_like(reward[0])
    for t in reversed(range(T)):
        not_done = 1.0 - done[t].float()
        delta = reward[t] + gamma * value[t + 1] * not_done - value[t]
        last = delta + gamma * lam * not_done * last
        advantage[t] = last
    return advantage, advantage + value[:-1]


def test_vec_gae_as_called_in_collect_matches_recursion():
    g = torch.Generator().manual_seed(3)
    T, N, gamma, lam = 7, 4, 0.9, 0.8
    reward = torch.randn(T, N, generator=g)
    value = torch.randn(T + 1, N, generator=g)
    done = torch.rand(T, N, generator=g) < 0.3
    done[-1, 0] = True
    done[0, 1] = True
    as_btf = lambda x: x.transpose(0, 1).unsqueeze(-1)  # noqa: E731 (as in PPOModule._collect)
    d = as_btf(done)
    advantage, target = vec_generalized_advantage_estimate(
        gamma, lam, as_btf(value[:-1]), as_btf(value[1:]), as_btf(reward), d, d)
    want_adv, want_target = gae_reference(reward, value, done, gamma, lam)
    torch.testing.assert_close(advantage.squeeze(-1).transpose(0, 1), want_adv, rtol=0, atol=1e-5)
    torch.testing.assert_close(target.squeeze(-1).transpose(0, 1), want_target, rtol=0, atol=1e-5)


class ScriptedEnv:
    """Stands in for MazeEnv in PPOModule._collect: fixed rewards and dones, random frames."""

    def __init__(self, rewards: torch.Tensor, dones: torch.Tensor):
        self.rewards, self.dones, self.t = rewards, dones, 0
        self.generator = torch.Generator().manual_seed(4)
        self.num_envs = rewards.shape[1]  # the BatchedEnv protocol the training rollout plays

    def frame(self) -> torch.Tensor:
        n = self.rewards.shape[1]
        return torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8, generator=self.generator)

    def step(self, actions):
        assert actions.shape == (self.rewards.shape[1],)
        t, self.t = self.t, self.t + 1
        finished = [Episode(1.0, 3, True, False, 5)] * int(self.dones[t].sum())
        return self.frame(), self.rewards[t].clone(), self.dones[t].clone(), finished


def test_collect_buffers_and_gae_match_recursion():
    module = tiny_module(normalize_reward=False)
    ppo = module.cfg.ppo
    T, N = ppo.num_steps, module.cfg.env.num_envs
    g = torch.Generator().manual_seed(6)
    rewards = torch.where(torch.rand(T, N, generator=g) < 0.3, 10.0, 0.0)
    dones = (rewards > 0) | (torch.rand(T, N, generator=g) < 0.1)
    env = ScriptedEnv(rewards, dones)
    module.env = env
    module._obs = env.frame()
    module._collect()
    buf = module._buffer
    assert env.t == T
    torch.testing.assert_close(buf["reward"], rewards, rtol=0, atol=0)
    assert torch.equal(buf["done"], dones)
    assert len(module._episodes) == int(dones.sum())
    want_adv, want_target = gae_reference(buf["reward"], buf["value"], buf["done"], ppo.gamma, ppo.gae_lambda)
    # buffers are flattened time-major: row t * N + n
    torch.testing.assert_close(buf["advantage"], want_adv.reshape(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(buf["value_target"], want_target.reshape(-1), rtol=0, atol=1e-5)
    # the stored values and log-probs are the policy's on the stored frames
    with torch.no_grad():
        logits, value = module.policy(preprocess(buf["obs"][2], False))
    torch.testing.assert_close(buf["value"][2], value, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(buf["log_prob"][2], Categorical(logits=logits).log_prob(buf["action"][2]),
                               rtol=1e-5, atol=1e-5)
    # one permutation of the whole rollout per epoch
    assert len(module._perms) == ppo.epochs
    for perm in module._perms:
        assert torch.equal(perm.sort().values, torch.arange(T * N))

    # every minibatch of an iteration lines up rows of the same (t, n) and feeds the loss
    seen = []
    for update in range(module.schedule.updates_per_iteration):
        td = module._minibatch(update)
        mb = ppo.minibatch_size
        assert td.batch_size == torch.Size([mb])
        assert td["obs"].shape == (mb, 3, 64, 64)
        for key in ("state_value", "advantage", "value_target"):
            assert td[key].shape == (mb, 1), key
        assert td[module.log_prob_key].shape == (mb,) and td["action"].shape == (mb,)
        epoch, index = divmod(update, module.schedule.minibatches)
        idx = module._perms[epoch][index * mb:(index + 1) * mb]
        torch.testing.assert_close(td["advantage"].squeeze(-1), want_adv.reshape(-1)[idx], rtol=0, atol=1e-5)
        torch.testing.assert_close(td["state_value"].squeeze(-1), buf["value"][:-1].reshape(-1)[idx], rtol=0, atol=0)
        t, n = idx // N, idx % N
        assert torch.equal(td["action"], buf["action"][t, n])
        torch.testing.assert_close(td["obs"], preprocess(buf["obs"][t, n], False), rtol=0, atol=0)
        seen.append(idx)
        td["hidden"] = module.policy.embedder(td["obs"])
        losses = module.loss(td)
        # before any update the policy is the behaviour policy: every ratio is 1
        assert float(losses["clip_fraction"]) == 0.0
        assert abs(float(losses["kl_approx"])) < 1e-5
    per_epoch = torch.cat(seen).reshape(ppo.epochs, -1)
    for epoch_rows in per_epoch:
        assert torch.equal(epoch_rows.sort().values, torch.arange(T * N))
