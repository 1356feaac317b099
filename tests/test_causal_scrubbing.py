"""Causal scrubbing: resampled inputs agree (and differ) in exactly the named features; scrubbing
from the input itself recovers the original loss (loss recovered 1); scrubbed logits match a
plain-torch forward with the activation swapped in; loss recovered and the cancellation numbers
of the channel-level default hypotheses match a plain-torch recomputation; the NLL targets the
folded move; the defaults scrub a tenth of the layer's channels, chosen on the checkpoint on mazes
apart from the inputs, whole layers only as controls; small-gap inputs are excluded and counted,
loss recovered's interval matches a hand-drawn bootstrap over mazes, and every row is an estimate
with an interval or a count/setting/data row."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from shardlab.envs import maze_state
from shardlab.envs.maze import MOVE_GROUPS
from shardlab.evals.maze.causal_scrubbing import (FEATURES, CausalScrubbing, MazePool, Scrub, add_loss_rows,
                                                  default_hypotheses, loss_estimates, loss_recovered, per_input_loss,
                                                  per_input_losses, resolve_channels, scrubbed_logits)
from shardlab.evals.maze.common import (TrainEnv, cheese_channel_scores, cheese_channel_states, choose_channels,
                                        policy_input)
from shardlab.evals.maze.inputs import action_kl, cached_activations, interp_mazes
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.results import Result
from shardlab.models.impala import ImpalaPolicy
from plain_impala import peaked_policy, plain_forward
from tiny_suites import assert_rows_have_intervals

pytestmark = pytest.mark.usefixtures("one_thread")
LAYER = "embedder.block2.res1.resadd_out"


@pytest.fixture(scope="module")
def model() -> ImpalaPolicy:
    return peaked_policy()


@pytest.fixture(scope="module")
def pool() -> MazePool:
    env = TrainEnv(obs="grid", mode="easy", max_size=9)
    return MazePool([m.state for m in interp_mazes(env, 24, 0, mouse="random", min_size=5)])


def _features(state: bytes) -> dict[str, object]:
    inner = maze_state.inner_grid(state)
    return {"cheese_location": maze_state.cheese_square(state), "mouse_location": maze_state.mouse_square(state),
            "maze_layout": (inner == maze_state.WALL).tobytes() + bytes([inner.shape[0]])}


@pytest.mark.parametrize("named", [["cheese_location"], ["mouse_location"], ["maze_layout"],
                                   ["maze_layout", "mouse_location"], list(FEATURES)])
def test_resampled_inputs_agree_or_differ_in_the_named_features(pool, named):
    rng = np.random.default_rng(0)
    drawn = 0
    for index, state in enumerate(pool.states):
        original = _features(state)
        agree = pool.resample(index, set(named), set(), rng)
        differ = pool.resample(index, set(), set(named), rng)
        for other in (agree, differ):
            if other is not None:
                assert maze_state.layout(other).maze_dim == maze_state.layout(state).maze_dim
                assert maze_state.cheese_square(other) != maze_state.mouse_square(other)
        if agree is None or differ is None:
            continue
        drawn += 1
        for feature in named:
            assert _features(agree)[feature] == original[feature], feature
            assert _features(differ)[feature] != original[feature], feature
    assert drawn >= len(pool.states) // 2


def test_agreeing_on_everything_gives_back_the_input(pool):
    rng = np.random.default_rng(1)
    for index, state in enumerate(pool.states):
        assert pool.resample(index, set(FEATURES), set(), rng) == state


def test_scrubbing_from_the_input_itself_recovers_the_original_loss(model, pool):
    x = policy_input(model, pool.states, "grid")
    original, _ = cached_activations(model, x, [])
    scrub = Scrub(LAYER, ["cheese_location"])
    same = scrubbed_logits(model, x, [(scrub, x)])
    assert torch.equal(same, original)
    assert torch.equal(scrubbed_logits(model, x, []), original)
    # every activation from the mirrored mazes (not a reordering of the inputs: with one folded
    # greedy move for all inputs, a reordering leaves the mean NLL unchanged and the ratio 0/0)
    other = scrubbed_logits(model, x, [(scrub, x.flip(-1))])
    for loss in ("kl", "nll"):
        base = per_input_loss(original, original, loss)
        assert loss_recovered(base, per_input_loss(original, same, loss), per_input_loss(original, other, loss)) == 1.0
    assert torch.all(per_input_loss(original, original, "kl") == 0)


def test_scrubbed_logits_match_a_plain_forward_with_the_activation_swapped(model, pool):
    x = policy_input(model, pool.states, "grid")
    source = x.roll(3, 0)
    scrubs = [(Scrub(LAYER, ["maze_layout"], channels=[1, 5], cells=[[0, 1], [2, 2]]), source),
              (Scrub("embedder.block1.maxpool_out", ["cheese_location"], channels=[0]), x.roll(1, 0))]
    with torch.no_grad():
        _, _, source_acts = plain_forward(model, source)
        _, _, other_acts = plain_forward(model, x.roll(1, 0))

        def swap_cells(activation):
            out = activation.clone()
            for channel in (1, 5):
                for row, col in ((0, 1), (2, 2)):
                    out[:, channel, row, col] = source_acts[LAYER][:, channel, row, col]
            return out

        def swap_channel(activation):
            out = activation.clone()
            out[:, 0] = other_acts["embedder.block1.maxpool_out"][:, 0]
            return out

        override = {LAYER: swap_cells, "embedder.block1.maxpool_out": swap_channel}
        expected, _, _ = plain_forward(model, x, override=override)
    torch.testing.assert_close(scrubbed_logits(model, x, scrubs), expected, rtol=1e-4, atol=1e-5)


def test_losses_and_cancellation_numbers():
    original = torch.tensor([[0.0, 1.0, 2.0]]).repeat(2, 1)
    other = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    kl = per_input_loss(original, other, "kl")
    torch.testing.assert_close(kl, action_kl(original, other))
    assert kl[1] == 0 and kl[0] > 0
    numbers = loss_estimates(np.array([1.0, 1.0]), np.array([0.0, 2.0]), np.array([3.0, 3.0]), np.array([0, 1]))
    assert (numbers["abs_mean_change"].value, numbers["mean_abs_change"].value) == (0.0, 1.0)
    assert loss_recovered(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([3.0])) == pytest.approx(0.5)
    assert np.isnan(loss_recovered(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([1.0])))
    with pytest.raises(ValueError, match="loss must be"):
        per_input_loss(original, other, "mse")


def test_nll_targets_the_most_likely_folded_move_not_the_raw_argmax():
    # 'right' has 3 × 0.2 = 0.6 over actions 6, 7, 8; 'up' has 0.3 on action 5, the raw argmax
    probs = np.full(15, 0.1 / 11)
    probs[[6, 7, 8]], probs[5] = 0.2, 0.3
    original = torch.tensor(np.log(probs))[None].repeat(2, 1)
    assert original[0].argmax() == 5
    other = torch.randn(2, 15, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    other_probs = other.softmax(-1)
    right = other_probs[:, list(MOVE_GROUPS[3])].sum(-1)
    torch.testing.assert_close(per_input_loss(original, other, "nll"), -right.log(), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(per_input_loss(original, other, "nll"), -other_probs[:, 5].log())  # the old target
    torch.testing.assert_close(per_input_loss(original, original, "nll"), torch.full((2,), -np.log(0.6),
                                                                                     dtype=torch.float64))


# -- the channel-level defaults against a plain-torch recomputation ------------------------------------
CHEESE = [1, 4, 9]


def _plain_metrics(original: np.ndarray, scrubbed: np.ndarray, random: np.ndarray) -> dict[str, float]:
    """The eval's numbers from logits, in numpy: KL over 15 actions, folded NLL, loss recovered, cancellation."""
    def log_probs(logits):
        shifted = logits - logits.max(-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))

    def folded(logits):
        return np.stack([np.exp(log_probs(logits))[:, list(group)].sum(-1) for group in MOVE_GROUPS], -1)

    target = folded(original).argmax(-1)
    rows = np.arange(len(original))
    losses = {"kl": lambda z: (np.exp(log_probs(original)) * (log_probs(original) - log_probs(z))).sum(-1),
              "nll": lambda z: -np.log(folded(z)[rows, target])}
    out = {}
    for name, loss in losses.items():
        base, scrub, rand = loss(original), loss(scrubbed), loss(random)
        change = scrub - base
        out.update({f"{name}/loss_recovered": (scrub.mean() - rand.mean()) / (base.mean() - rand.mean()),
                    f"{name}/original": base.mean(), f"{name}/scrubbed": scrub.mean(), f"{name}/random": rand.mean(),
                    f"{name}/abs_mean_change": abs(change.mean()), f"{name}/mean_abs_change": np.abs(change).mean(),
                    f"{name}/worst_increase": change.max()})
    return out


@pytest.mark.parametrize("hypothesis", ["cheese_channels", "other_channels", "cheese_and_other_channels"])
def test_default_hypothesis_metrics_match_a_plain_torch_recomputation(model, pool, hypothesis):
    model = copy.deepcopy(model).double()  # float64 on both sides
    x = policy_input(model, pool.states, "grid").double()
    scrubs = [resolve_channels(scrub, CHEESE, 32) for scrub in default_hypotheses(LAYER)[hypothesis]]
    agreeing = [x.roll(1 + k, 0) for k in range(len(scrubs))]  # stand-ins for the resampled inputs
    differing = [x.roll(5 + k, 0) for k in range(len(scrubs))]
    channel_sets = [CHEESE if s.channels == CHEESE else [c for c in range(32) if c not in CHEESE] for s in scrubs]

    def plain(sources):
        with torch.no_grad():
            source_acts = [plain_forward(model, source)[2][LAYER] for source in sources]

            def swap(activation):
                out = activation.clone()
                for channels, acts in zip(channel_sets, source_acts):
                    for channel in channels:
                        out[:, channel] = acts[:, channel]
                return out
            return plain_forward(model, x, override={LAYER: swap})[0].numpy()

    with torch.no_grad():
        original = plain_forward(model, x)[0].numpy()
    expected = _plain_metrics(original, plain(agreeing), plain(differing))
    original_logits, _ = cached_activations(model, x, [])
    losses = per_input_losses(original_logits, scrubbed_logits(model, x, list(zip(scrubs, agreeing))),
                              scrubbed_logits(model, x, list(zip(scrubs, differing))))
    got = {}
    for loss, (base, scrub, rand) in losses.items():
        estimates = loss_estimates(base, scrub, rand, np.arange(len(x)))  # each input its own maze
        got.update({f"{loss}/{key}": estimate.value for key, estimate in estimates.items()})
        got[f"{loss}/worst_increase"] = float((scrub - base).max())
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


@pytest.fixture(scope="module")
def ctx(model, tmp_path_factory) -> EvalContext:
    train_config = OmegaConf.create({"env": {"obs": "grid", "distribution_mode": "easy", "max_maze_size": 9}})
    return EvalContext(model, train_config, str(tmp_path_factory.mktemp("scrubbing")), seed=0, progress=False)


def test_default_hypotheses_scrub_the_cheese_channels_chosen_on_the_checkpoint(model, ctx):
    config = CausalScrubbing.Config(inputs=8, resamples=1, channel_mazes=8)
    assert config.channels == "auto" and config.layer == LAYER and config.top_channels is None
    result = Result()
    hypotheses = CausalScrubbing(config).hypotheses(ctx, result)
    states, _ = cheese_channel_states(TrainEnv("grid", "easy", 9), 8, 1)
    cheese = choose_channels(cheese_channel_scores(model, states, "grid", LAYER), 3, 1.0)
    # a tenth of the 32-channel layer (the old default chose 11)
    assert [m.value for m in result.metrics if "/" not in m.name.removeprefix("cheese_channel/")] == cheese
    rows = {m.name: m for m in result.metrics}
    assert rows["cheese_channels/count"].value == 3 and rows["cheese_channels/fraction"].value == 3 / 32
    others = [c for c in range(32) if c not in cheese]
    assert {name: [(s.features, s.channels) for s in scrubs] for name, scrubs in hypotheses.items()} == {
        "cheese_channels": [(["cheese_location"], cheese)],
        "cheese_channels_and_layout": [(["cheese_location", "maze_layout"], cheese)],
        "other_channels": [(["maze_layout", "mouse_location"], others)],
        "cheese_and_other_channels": [(["cheese_location"], cheese), (["maze_layout", "mouse_location"], others)],
        "control/whole_layer/all_features": [(list(FEATURES), None)],
        "control/whole_layer/cheese_location": [(["cheese_location"], None)]}
    assert all(s.layer == LAYER for scrubs in hypotheses.values() for s in scrubs)


@pytest.fixture(scope="module")
def default_run(ctx):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return CausalScrubbing(CausalScrubbing.Config(inputs=8, resamples=2, channel_mazes=8)).run(ctx)
    finally:
        torch.set_num_threads(threads)


def test_every_row_is_an_estimate_over_mazes_or_a_count_setting_or_data(default_run):
    assert_rows_have_intervals(default_run.metrics)
    rows = {m.name: m for m in default_run.metrics}
    assert rows["cheese_channels/count"].value == 3
    recovered = rows["cheese_channels/kl/loss_recovered"]
    assert recovered.unit == "mazes" and recovered.n <= 8 and recovered.method == "cluster bootstrap"
    used = rows["cheese_channels/kl/inputs_used"].value + rows["cheese_channels/kl/inputs_skipped_small_gap"].value
    assert used == rows["cheese_channels/inputs_resampled"].value
    assert rows["cheese_channels/inputs_resampled"].value + rows["cheese_channels/inputs_without_source"].value == 16
    assert rows["cheese_channels/nll/worst_increase"].kind == "data"


def test_channels_are_chosen_on_mazes_sharing_no_layout_with_the_inputs(model, ctx):
    env = TrainEnv("grid", "easy", 9)
    inputs = [m.state for m in interp_mazes(env, 8, 0, "random")]
    result = Result()
    CausalScrubbing(CausalScrubbing.Config(inputs=8, channel_mazes=8)).hypotheses(ctx, result, inputs)
    states, excluded = cheese_channel_states(env, 8, 1, exclude=inputs)
    walls = lambda state: maze_state.inner_grid(state) == maze_state.WALL  # noqa: E731
    assert not any(walls(a).shape == walls(b).shape and np.array_equal(walls(a), walls(b))
                   for a in states for b in inputs)
    rows = {m.name: m.value for m in result.metrics}
    assert rows["cheese_channels/selection_mazes"] == len(states)
    assert rows["cheese_channels/selection_mazes_excluded"] == excluded
    cheese = choose_channels(cheese_channel_scores(model, states, "grid", LAYER), 3, 1.0)
    assert [rows[f"cheese_channel/rank={rank}"] for rank in range(3)] == cheese


def test_small_gap_inputs_are_excluded_counted_and_the_interval_resamples_mazes():
    # 5 mazes × 2 inputs; inputs 2 and 7 have L_original = L_random (no gap to normalise by)
    rng = np.random.default_rng(3)
    mazes = np.repeat(np.arange(5), 2)
    original, random = rng.uniform(0, 1, 10), rng.uniform(2, 3, 10)
    random[[2, 7]] = original[[2, 7]]
    scrubbed = rng.uniform(0, 3, 10)
    result = Result()
    add_loss_rows(result, "h/nll", (original, scrubbed, random), mazes, min_gap=1e-9)
    rows = {m.name: m for m in result.metrics}
    assert rows["h/nll/inputs_used"].value == 8 and rows["h/nll/inputs_skipped_small_gap"].value == 2
    keep = np.ones(10, bool)
    keep[[2, 7]] = False
    o, s_, r, m = original[keep], scrubbed[keep], random[keep], mazes[keep]
    recovered = rows["h/nll/loss_recovered"]
    assert recovered.value == pytest.approx((s_.mean() - r.mean()) / (o.mean() - r.mean()), rel=1e-12)
    assert recovered.n == 5 and rows["h/nll/worst_increase"].value == pytest.approx((s_ - o).max())
    # the interval by hand: 2000 draws (seed 0) of 5 whole mazes, the ratio of means recomputed
    members = [np.flatnonzero(m == g) for g in range(5)]
    draw = np.random.default_rng(0)
    values = []
    for _ in range(2000):
        index = np.concatenate([members[g] for g in draw.integers(0, 5, 5)])
        values.append((s_[index].mean() - r[index].mean()) / (o[index].mean() - r[index].mean()))
    low, high = np.quantile(values, [0.025, 0.975])
    assert recovered.ci_low == pytest.approx(low, rel=1e-12) and recovered.ci_high == pytest.approx(high, rel=1e-12)
    assert rows["h/nll/original"].value == pytest.approx(o.mean()) and rows["h/nll/original"].n == 5
    # nothing left, or a mean gap of 0: undefined, with the reason
    empty = Result()
    add_loss_rows(empty, "h/kl", (original, scrubbed, original), mazes, min_gap=0.0)
    row = {m.name: m for m in empty.metrics}["h/kl/loss_recovered"]
    assert row.undefined and "min_loss_gap" in row.note
    assert {m.name: m for m in empty.metrics}["h/kl/inputs_skipped_small_gap"].value == 10
    tied = loss_estimates(np.array([0.0, 2.0]), np.array([1.0, 1.0]), np.array([1.0, 1.0]), np.array([0, 1]))
    assert not tied["loss_recovered"].defined and "too small to normalise by" in tied["loss_recovered"].note


def test_the_whole_layer_scrub_is_a_control_that_recovers_one(default_run):
    metrics = {m.name: m.value for m in default_run.metrics}
    for loss in ("kl", "nll"):
        assert metrics[f"control/whole_layer/all_features/{loss}/loss_recovered"] == 1.0
        assert metrics[f"control/whole_layer/all_features/{loss}/mean_abs_change"] == 0.0
        assert f"cheese_channels/{loss}/loss_recovered" in metrics
    assert not [name for name in metrics if name.split("/")[0] in ("cheese", "mouse", "layout", "layout_and_mouse")]


def test_published_channels_need_a_128_channel_layer(ctx):
    with pytest.raises(ValueError, match="has 32; use channels: auto"):
        config = CausalScrubbing.Config(inputs=8, channels="published", channel_mazes=2)
        CausalScrubbing(config).hypotheses(ctx, Result())


@pytest.mark.parametrize("bad", [{"channels": "cheesy"}, {"channels": [2, 2]},
                                 {"hypotheses": {"h": [Scrub(LAYER, ["cheese_location"], channels="rest")]}},
                                 {"hypotheses": {"control/x": [Scrub(LAYER, ["cheese_location"])]}}])
def test_bad_channel_configs_are_one_line_value_errors(bad):
    with pytest.raises(ValueError) as error:
        CausalScrubbing.Config(**bad)
    assert "\n" not in str(error.value)


def test_a_maze_without_a_same_size_partner_cannot_swap_layouts(pool):
    alone = MazePool(pool.states[:1])
    rng = np.random.default_rng(0)
    assert alone.resample(0, {"cheese_location"}, set(), rng) is None  # needs another maze
    kept = alone.resample(0, {"maze_layout"}, set(), rng)  # same maze, cheese and mouse moved
    assert kept is not None and _features(kept)["maze_layout"] == _features(pool.states[0])["maze_layout"]
