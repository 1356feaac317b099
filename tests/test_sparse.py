"""Sparse activations (models/sparse.py) and their use in the IMPALA policy and PPO: k-WTA winners,
boosting and duty cycles, top-k, the L1 penalty, the dense default left bit-for-bit unchanged,
per-layer selection by config, strict checkpoint loading and the L1 term in the PPO loss."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from shardlab.models.hooks import hook_names, hooked
from shardlab.models.impala import ImpalaPolicy
from shardlab.models.impala_config import RELU_SITES, sparse_sites
from shardlab.models.sparse import KWinners, L1ReLU, TopK, l1_penalty, make_activation, winners_count
from shardlab.models.weights import WeightsError, load_policy_weights
from shardlab.trainers.config import ConfigError, build_config, to_dict
from tests.test_model import published_keys

pytestmark = pytest.mark.usefixtures("one_thread")


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- activations ------------------------------------------------------------------------------------

def test_kwta_keeps_the_k_largest_per_sample_unboosted_values():
    x = randn(6, 40)
    out = make_activation("kwta", units=40, percent_on=0.1, boost_strength=0.0)(x)
    assert ((out != 0).sum(1) == 4).all()  # k = round(40 · 0.1)
    top = x.topk(4, dim=1).indices
    assert torch.equal(out.gather(1, top), x.gather(1, top))


def test_kwta_conv_global_and_local():
    x = randn(3, 8, 5, 5)
    global_out = make_activation("kwta", units=8, percent_on=0.25, boost_strength=0.0)(x)
    assert ((global_out != 0).flatten(1).sum(1) == 50).all()  # round(8·5·5 · 0.25) over C·H·W
    local_out = make_activation("kwta", units=8, percent_on=0.25, boost_strength=0.0, local=True)(x)
    assert ((local_out != 0).sum(1) == 2).all()  # 2 of 8 channels at every location
    assert torch.equal(local_out.max(1).values, x.max(1).values)


def test_transformer_shaped_input_competes_over_the_last_dim():
    out = make_activation("topk", percent_on=0.25)(randn(2, 5, 16))
    assert ((out != 0).sum(-1) == 4).all()


def test_gradients_reach_only_the_winners():
    x = randn(4, 20).requires_grad_()
    TopK(percent_on=0.2)(x).sum().backward()
    assert torch.equal(x.grad, (x.detach() >= x.detach().topk(4, dim=1).values[:, -1:]).float())


def test_boosting_lets_a_rarely_active_unit_win():
    kwta = KWinners(units=2, percent_on=0.5, boost_strength=2.0)
    kwta.duty_cycle.copy_(torch.tensor([0.0, 1.0]))  # unit 0 never wins, unit 1 always does
    x = torch.tensor([[0.8, 1.0]])
    # scores: 0.8·e^(0.5·2) = 2.17 beats 1.0·e^(−0.5·2) = 0.37; the winner passes its raw value
    assert torch.equal(kwta.eval()(x), torch.tensor([[0.8, 0.0]]))
    assert torch.allclose(kwta.boost_factors(), torch.exp(torch.tensor([1.0, -1.0])))


def test_duty_cycle_is_a_running_mean_updated_only_in_training():
    kwta = KWinners(units=4, percent_on=0.25, boost_strength=0.0, duty_cycle_period=8)
    x = torch.tensor([[4.0, 3, 2, 1]]).repeat(4, 1)  # unit 0 always wins
    kwta.eval()(x)
    assert kwta.duty_cycle.sum() == 0 and kwta.learning_iterations == 0
    kwta.train()(x)
    assert torch.allclose(kwta.duty_cycle, torch.tensor([1.0, 0, 0, 0]))
    kwta(torch.tensor([[1.0, 4, 3, 2]]).repeat(4, 1))  # unit 1 wins: period 8, half the samples
    assert torch.allclose(kwta.duty_cycle, torch.tensor([0.5, 0.5, 0, 0]))
    kwta(torch.tensor([[1.0, 4, 3, 2]]).repeat(8, 1))  # period capped at 8: (0.5·0 + 0)/8 ...
    assert torch.allclose(kwta.duty_cycle, torch.tensor([0.0, 1.0, 0, 0]))
    assert kwta.learning_iterations == 16


def test_k_inference_factor_adds_winners_only_in_eval_mode():
    x = torch.randn(6, 100)
    kwta = KWinners(100, percent_on=0.1, boost_strength=0.0, k_inference_factor=1.5)
    assert ((kwta.train()(x) != 0).sum(1) == 10).all()
    assert ((kwta.eval()(x) != 0).sum(1) == 15).all()
    # the eval-mode winners are the 15 largest, which include the 10 training-mode winners
    assert torch.equal(kwta.eval()(x), TopK(0.15)(x))
    assert ((kwta.train()(x) != 0) <= (kwta.eval()(x) != 0)).all()
    for factor, percent_on in ((0.5, 0.1), (2.0, 0.6)):
        with pytest.raises(ValueError, match="k_inference_factor"):
            KWinners(10, percent_on=percent_on, k_inference_factor=factor)


@pytest.mark.parametrize("units, percent_on, factor, winners", [
    (50, 0.1, 1.5, 7),  # k = round(5.0) = 5; int(5 · 1.5) = int(7.5) = 7, not round(7.5) = 8
    (1024, 0.1, 1.4, 142),  # k = round(102.4) = 102; int(142.8) = 142, not round(143.36) = 143
    (1024, 0.1, 1.5, 153),  # int(102 · 1.5) = 153, not round(153.6) = 154
    (100, 0.1, 1.5, 15),  # 10 · 1.5 = 15 either way
])
def test_k_inference_winners_follow_nupic_torch(units, percent_on, factor, winners):
    # nupic.torch's KWinners: k = int(round(n · percent_on)), k_inference = int(k · k_inference_factor)
    assert winners_count(units, percent_on, factor) == winners
    kwta = KWinners(units, percent_on=percent_on, boost_strength=0.0, k_inference_factor=factor).eval()
    assert ((kwta(randn(3, units)) != 0).sum(1) == winners).all()


def test_k_inference_winners_of_conv_maps():
    # global over C·H·W = 4·3·3 = 36: k = round(3.6) = 4, int(4 · 1.5) = 6 (not round(5.4) = 5)
    kwta = KWinners(units=4, percent_on=0.1, boost_strength=0.0, k_inference_factor=1.5).eval()
    assert ((kwta(randn(2, 4, 3, 3)) != 0).flatten(1).sum(1) == 6).all()
    # per location over 10 channels: k = round(1.5) = 2, int(2 · 1.5) = 3 (not round(2.25) = 2)
    local = KWinners(units=10, percent_on=0.15, boost_strength=0.0, local=True, k_inference_factor=1.5).eval()
    assert ((local(randn(2, 10, 2, 2)) != 0).sum(1) == 3).all()


def test_conv_duty_cycle_is_per_channel():
    kwta = KWinners(units=2, percent_on=0.5, boost_strength=0.0).train()
    x = torch.stack([torch.ones(3, 3), torch.zeros(3, 3)])[None]  # channel 0 wins everywhere
    kwta(x)
    assert torch.allclose(kwta.duty_cycle, torch.tensor([1.0, 0.0]))


def test_lazy_units_and_state_dict_round_trip():
    trained = KWinners(units=6, percent_on=0.5).train()
    trained(randn(5, 6))
    lazy = KWinners(percent_on=0.5)
    lazy.load_state_dict(trained.state_dict())
    assert torch.equal(lazy.duty_cycle, trained.duty_cycle)
    assert torch.equal(lazy.eval()(randn(2, 6)), trained.eval()(randn(2, 6)))
    with pytest.raises(ValueError, match="built for 6 units"):
        trained(randn(2, 7))


def test_l1_relu_records_its_penalty_and_survives_deepcopy():
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), make_activation("l1"), torch.nn.Linear(5, 5), L1ReLU())
    assert l1_penalty(net) == 0
    x = randn(4, 3)
    net(x)
    first = F.relu(net[0](x))
    expected = first.abs().mean() + F.relu(net[2](first)).abs().mean()
    assert torch.allclose(l1_penalty(net), expected)
    l1_penalty(net).backward()
    assert net[0].weight.grad is not None
    copy.deepcopy(net)  # the recorded graph is not copied


def test_make_activation_kinds_and_errors():
    assert isinstance(make_activation(), torch.nn.ReLU)
    assert isinstance(make_activation("gelu"), torch.nn.GELU)
    # a config may carry every sparse option; each kind takes the ones it uses
    assert isinstance(make_activation("relu", percent_on=0.2, boost_strength=1.0), torch.nn.ReLU)
    assert make_activation("topk", percent_on=0.3, boost_strength=1.0).percent_on == 0.3
    with pytest.raises(ValueError, match="unknown activation 'kwinners'"):
        make_activation("kwinners")
    with pytest.raises(ValueError, match="unknown activation option sparsity"):
        make_activation("kwta", sparsity=0.1)
    with pytest.raises(ValueError, match="percent_on must be in"):
        make_activation("kwta", percent_on=0.0)


# -- IMPALA -----------------------------------------------------------------------------------------

def reference_forward(policy: ImpalaPolicy, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The published network's computation written out with F.relu, from the policy's weights."""
    e = policy.embedder
    for block in (e.block1, e.block2, e.block3):
        x = F.max_pool2d(block.conv(x), kernel_size=3, stride=2, padding=1)
        for res in (block.res1, block.res2):
            x = res.conv2(F.relu(res.conv1(F.relu(x)))) + x
    hidden = F.relu(e.fc(torch.flatten(F.relu(x), 1)))
    return policy.fc_policy(hidden), policy.fc_value(hidden).squeeze(-1)


def test_dense_default_is_the_published_network_bit_for_bit():
    torch.manual_seed(0)
    policy = ImpalaPolicy(scale=1, image_size=32).eval()
    assert set(policy.state_dict()) == published_keys()
    assert not any(name.endswith(("act1", "act2", "act3", "actfc")) for name in hook_names(policy))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    logits, value = policy(x)
    ref_logits, ref_value = reference_forward(policy, x)
    assert torch.equal(logits, ref_logits) and torch.equal(value, ref_value)


def test_sparse_layers_select_sites_by_pattern():
    assert sparse_sites(["*"]) == list(RELU_SITES) and len(RELU_SITES) == 14
    assert sparse_sites(["*relufc_out"]) == ["embedder.relufc_out"]
    assert sparse_sites(["embedder.block3.*"]) == [f"embedder.block3.res{r}.relu{i}_out" for r in (1, 2) for i in (1, 2)]
    assert sparse_sites(["nothing"]) == []


def test_sparse_policy_hook_points_see_the_sparse_output():
    torch.manual_seed(0)
    policy = ImpalaPolicy(scale=1, image_size=32, activation="kwta", sparse_layers=["*relu2_out", "*relufc_out"],
                          activation_options={"percent_on": 0.1}).eval()
    keys = set(policy.state_dict())
    sparse_modules = {f"{site.rsplit('.', 1)[0]}.{'actfc' if site.endswith('relufc_out') else 'act2'}"
                      for site in sparse_sites(["*relu2_out", "*relufc_out"])}
    assert keys - published_keys() == {f"{m}.{b}" for m in sparse_modules for b in ("duty_cycle", "learning_iterations")}
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with hooked(policy, cache=["embedder.block2.res1.relu2_out", "embedder.relufc_out", "embedder.block2.res1.relu1_out"]) as acts:
        policy(x)
    assert (acts["embedder.block2.res1.relu2_out"] != 0).flatten(1).sum(1).eq(round(32 * 8 * 8 * 0.1)).all()
    assert (acts["embedder.relufc_out"] != 0).sum(1).eq(round(256 * 0.1)).all()
    dense_site = acts["embedder.block2.res1.relu1_out"]
    assert (dense_site >= 0).all() and (dense_site != 0).float().mean() > 0.2  # still a plain ReLU


def test_sparse_checkpoint_loads_strictly_and_dense_weights_do_not_fit(tmp_path):
    torch.manual_seed(0)
    options = {"percent_on": 0.2}
    policy = ImpalaPolicy(scale=1, image_size=16, activation="kwta", activation_options=options).train()
    policy(torch.rand(3, 3, 16, 16))  # moves the duty cycles off zero
    torch.save(policy.state_dict(), tmp_path / "sparse.pt")
    again = load_policy_weights(ImpalaPolicy(scale=1, image_size=16, activation="kwta", activation_options=options),
                                tmp_path / "sparse.pt")
    assert torch.equal(again.embedder.actfc.duty_cycle, policy.embedder.actfc.duty_cycle)
    torch.save(ImpalaPolicy(scale=1, image_size=16).state_dict(), tmp_path / "dense.pt")
    with pytest.raises(WeightsError, match="missing keys"):
        load_policy_weights(ImpalaPolicy(scale=1, image_size=16, activation="kwta"), tmp_path / "dense.pt")
    # topk and l1 carry no state: a dense file loads into them
    load_policy_weights(ImpalaPolicy(scale=1, image_size=16, activation="topk"), tmp_path / "dense.pt")


# -- config and PPO ---------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("model.activation=sparse", "model.activation must be one of"),
    ("model.sparse_layers=[relu9_out]", "match no ReLU of the policy"),
    ("model.percent_on=1.5", "model.percent_on must be in"),
    ("model.l1_coef=0.1", "only acts with model.activation=l1"),
    ("model.duty_cycle_period=0", "model.duty_cycle_period must be >= 1"),
    ("model.k_inference_factor=0.5", "model.k_inference_factor must be >= 1"),
])
def test_sparse_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"model": {"activation": "kwta"}} if "l1_coef" not in override else {}, [override])


class ZeroLoss(torch.nn.Module):
    """Stands in for ClipPPOLoss so that only the L1 term is left."""

    def forward(self, td) -> dict[str, torch.Tensor]:
        return {key: torch.zeros(()) for key in ("loss_objective", "loss_critic", "loss_entropy")}


def test_ppo_loss_adds_the_l1_penalty(monkeypatch):
    from shardlab.trainers.ppo import PPOModule

    recipe = {"env": {"num_envs": 2}, "model": {"channels_last": False, "activation": "l1", "l1_coef": 0.5},
              "ppo": {"num_steps": 4, "minibatch_size": 4, "epochs": 1}, "trainer": {"total_steps": 8}}
    torch.manual_seed(0)
    module = PPOModule(to_dict(build_config(recipe)))
    assert isinstance(module.policy.embedder.actfc, L1ReLU)
    size = module.policy.image_size
    obs = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(PPOModule, "global_step", property(lambda self: 1))  # not an iteration start
    monkeypatch.setattr(module, "_minibatch", lambda update: {"obs": obs})
    monkeypatch.setattr(module, "loss", ZeroLoss())
    loss = module.training_step(None, 0)
    module.policy.embedder(obs)
    assert loss > 0 and torch.allclose(loss, 0.5 * l1_penalty(module.policy))
