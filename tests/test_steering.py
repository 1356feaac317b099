"""Steering vectors: each quantity of evals/maze/steering.py against a direct plain-torch computation
on a small random IMPALA network over hand-made mazes, the top-right path edit, and the eval end
to end through `shardlab eval` on a tiny checkpoint.

Squares are (x, y) with y = 0 at the bottom; the mazes sit in a hard-mode 25×25 world.
"""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest
import torch

from shardlab.envs import maze_state as ms
from shardlab.envs.maze_build import parse_ascii, with_maze
from shardlab.envs.maze_views import grid_observations
from shardlab import cli as shardlab
from shardlab.evals.maze import common
from shardlab.evals.maze import steering
from shardlab.evals.suite.results import Result
from shardlab.evals.maze.vector_field import DOWN, LEFT, RIGHT, UP
from shardlab.models.hooks import add, hooked
from shardlab.models.impala import ImpalaPolicy
from plain_impala import peaked_policy
from tiny_suites import assert_rows_have_intervals

pytestmark = pytest.mark.usefixtures("one_thread")

LAYER = "embedder.block2.res1.resadd_out"
WORLD = 25
# decision square (0, 2): right to the cheese, up to the top-right corner
MAZE_A = """
.....
.####
....C
.####
M####
"""
MAZE_B = """
.....
.####
...C#
.####
M####
"""
# the folded action sets, written out here independently of evals.maze.vector_field
GROUPS = {LEFT: [0, 1, 2], DOWN: [3], UP: [5], RIGHT: [6, 7, 8]}


@pytest.fixture(scope="module")
def mazes(template) -> list[bytes]:
    return [with_maze(template, *parse_ascii(text)) for text in (MAZE_A, MAZE_B)]


@pytest.fixture(scope="module")
def policy() -> ImpalaPolicy:
    return peaked_policy(seed=0, image_size=WORLD, gain=10.0)


def plain_forward(net: ImpalaPolicy, states: list[bytes], edit=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the layer's activations with a hand-registered forward hook (no models.hooks)."""
    seen = {}

    def hook(module, inputs, output):
        output = output if edit is None else edit(output)
        seen["acts"] = output.detach().clone()
        return output
    handle = net.get_submodule(LAYER).register_forward_hook(hook)
    try:
        x = torch.from_numpy(grid_observations(states)).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            logits, _ = net(x)
    finally:
        handle.remove()
    return logits, seen["acts"]


def test_decision_set_moves(mazes):
    decisions = steering.DecisionSet.of(mazes)
    assert decisions.cheese_move.tolist() == [RIGHT, RIGHT]
    assert decisions.top_right_move.tolist() == [UP, UP]
    assert [ms.mouse_square(s) for s in decisions.states] == [(0, 2), (0, 2)]


def test_cheese_vector_is_the_activation_difference(policy, mazes):
    vectors = steering.cheese_vector(policy, mazes, "grid", LAYER)
    _, with_cheese = plain_forward(policy, mazes)
    _, without = plain_forward(policy, [ms.without_cheese(s) for s in mazes])
    torch.testing.assert_close(vectors, with_cheese - without, atol=1e-5, rtol=1e-5)
    assert vectors.abs().sum() > 0


def test_minus_the_cheese_vector_reproduces_the_cheeseless_activations(policy, mazes):
    """Same maze, same (start) square: with-cheese activations − cheese vector = without-cheese
    activations (up to float32 rounding: a − (a − b) need not be b bit for bit)."""
    vectors = steering.cheese_vector(policy, mazes, "grid", LAYER)
    for index, state in enumerate(mazes):
        steered = common.layer_activations(policy, [state], "grid", LAYER,
                                           edits={LAYER: add(vectors[index:index + 1], -1.0)})
        _, without = plain_forward(policy, [ms.without_cheese(state)])
        torch.testing.assert_close(steered, without, atol=1e-5, rtol=0)


def test_coefficient_zero_leaves_the_policy_unchanged_exactly(policy, mazes):
    decisions = steering.DecisionSet.of(mazes)
    vectors = steering.cheese_vector(policy, mazes, "grid", LAYER)
    original = steering.decision_probs(policy, decisions, "grid", LAYER)
    zero = steering.decision_probs(policy, decisions, "grid", LAYER, vectors, 0.0)
    assert all(np.array_equal(a, b) for a, b in zip(original, zero))
    logits, _ = plain_forward(policy, decisions.states)
    with hooked(policy, edits={LAYER: add(vectors, 0.0)}):
        zero_logits, _ = plain_forward(policy, decisions.states)
    assert torch.equal(logits, zero_logits)


@pytest.mark.parametrize("coefficient", [-1.0, 2.5])
def test_decision_probabilities_match_a_hand_computation(policy, mazes, coefficient):
    decisions = steering.DecisionSet.of(mazes)
    vectors = steering.cheese_vector(policy, mazes, "grid", LAYER)
    p_cheese, p_top_right = steering.decision_probs(policy, decisions, "grid", LAYER, vectors, coefficient)
    logits, _ = plain_forward(policy, decisions.states, edit=lambda x: x + coefficient * vectors)
    probs = torch.softmax(logits.double(), -1).numpy()
    np.testing.assert_allclose(p_cheese, probs[:, GROUPS[RIGHT]].sum(1), atol=1e-6)
    np.testing.assert_allclose(p_top_right, probs[:, GROUPS[UP]].sum(1), atol=1e-6)
    unsteered = steering.decision_probs(policy, decisions, "grid", LAYER)
    assert np.abs(p_cheese - unsteered[0]).max() > 1e-3  # the edit reached the decision square's forward pass


def test_random_vectors_match_the_vector_norms(policy, mazes):
    vectors = steering.cheese_vector(policy, mazes, "grid", LAYER)
    noise = steering.random_like(vectors, torch.Generator().manual_seed(0))
    torch.testing.assert_close(noise.flatten(1).norm(dim=1), vectors.flatten(1).norm(dim=1))
    assert noise.shape == vectors.shape and not torch.allclose(noise, vectors)


def test_top_right_path_opens_an_l_through_the_padding(mazes):
    state = mazes[0]
    opened = common.with_top_right_path(state)
    before, after = ms.grid(state), ms.grid(opened)
    margin, corner = (WORLD - 5) // 2, (WORLD - 5) // 2 + 4
    expected = before.copy()
    for y in range(corner + 1, WORLD):
        expected[y, corner] = ms.EMPTY
    for x in range(corner + 1, WORLD):
        expected[WORLD - 1, x] = ms.EMPTY
    assert np.array_equal(after, expected)
    assert np.array_equal(ms.inner_grid(opened), ms.inner_grid(state))
    assert ms.mouse_square(opened) == ms.mouse_square(state) and margin == 10


def test_top_right_path_needs_padding(template):
    full = with_maze(template, np.full((WORLD, WORLD), ms.EMPTY, dtype=np.int32))
    assert common.with_top_right_path(full) is None


def test_top_right_vector_is_opened_minus_original(policy, mazes):
    vectors = steering.top_right_vector(policy, mazes, "grid", LAYER)
    _, opened = plain_forward(policy, [common.with_top_right_path(s) for s in mazes])
    _, original = plain_forward(policy, mazes)
    torch.testing.assert_close(vectors, opened - original, atol=1e-5, rtol=1e-5)


def test_moved_cheese_is_k_steps_away(mazes):
    maze = steering.EvalMaze(mazes[0], 0, 0, (0, 0), 5, (4, 2), (0, 2))
    rng = np.random.default_rng(0)
    assert ms.cheese_square(steering.moved_cheese(maze, 1, rng)) == (3, 2)
    assert ms.cheese_square(steering.moved_cheese(maze, 2, rng)) == (2, 2)
    assert steering.moved_cheese(maze, 30, rng) is None


# -- end to end ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tiny_maze_checkpoint) -> str:
    return tiny_maze_checkpoint


def test_steering_end_to_end(checkpoint, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent("""
        seed: 1
        evals:
          steering: {mazes: 4, coefficients: [-1, 0, 1], max_shift: 1, field_mazes: 1, transfer_sources: 2}
    """))
    out = tmp_path / "out"
    assert shardlab.main(["eval", checkpoint, "--suite", str(suite), "--out", str(out)]) == 0
    document = json.loads((out / "results.json").read_text())
    rows = {row["name"]: row for row in document["results"]}
    for name in ("original/p_cheese/median", "cheese_vector/p_cheese/mean", "cheese_vector/random/p_cheese/mean",
                 "cheese_vector/transfer/p_cheese/change", "top_right_vector/p_top_right/median",
                 "cheese_moved/k=1/cheese_vector/p_cheese/mean", "scan/cheese_vector/coeff=-1/p_cheese/median"):
        assert 0 <= rows[name]["value"] <= 1 or name.endswith("change"), name
        assert rows[name]["n"] >= 1
    # the scan at coefficient 0 is the unedited policy; at −1 it is the default cheese condition
    assert rows["scan/cheese_vector/coeff=0/p_cheese/mean"]["value"] == rows["original/p_cheese/mean"]["value"]
    assert rows["scan/cheese_vector/coeff=-1/p_cheese/mean"]["value"] == rows["cheese_vector/p_cheese/mean"]["value"]
    assert rows["original/p_cheese/mean"]["n"] == 4 and rows["original/p_cheese/mean"]["stderr"] is not None
    assert_rows_have_intervals(document["results"])
    assert {row["eval_version"] for row in document["results"]} == {2}
    assert rows["layer_size"]["kind"] == "count"
    # beyond the random vector, paired over mazes: the difference of the two changes
    beyond = rows["cheese_vector/p_cheese/change_minus_random"]
    assert beyond["value"] == pytest.approx(rows["cheese_vector/p_cheese/change"]["value"]
                                            - rows["cheese_vector/random/p_cheese/change"]["value"])
    assert beyond["n"] == 4 and beyond["method"] == "paired t"
    # the transfer pairs (4 mazes × 2 sources): n counts mazes (two-way clustered), not pairs
    transfer = rows["cheese_vector/transfer/p_cheese/mean"]
    assert transfer["n"] == 4 and transfer["method"] == "two-way cluster"
    for label in ["distance<=2", "distance=2-4", "distance=4-8", "distance>8"]:
        row = rows[f"cheese_vector/transfer/{label}/p_cheese/mean"]
        assert (row["value"] is None) == (row["n"] == 0) and row["n"] <= 4
        assert row["stderr"] is None or row["n"] >= 2
    pngs = document["artifacts"]["steering"]
    assert {os.path.basename(p) for p in pngs} == {"coefficient_scan.png", "vector_fields_maze0.png",
                                                   "transfer_by_distance.png"}
    assert all(open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for p in pngs)


# -- transfer grouped by cheese distance ---------------------------------------------------------------
# decision square (0, 0): right along the bottom to the cheese, up to the top-right corner
MAZE_C = """
.....
.####
.####
.####
M...C
"""


def test_transfer_grouped_by_cheese_distance_matches_a_hand_assignment(policy, mazes, template):
    """Cheeses A (4, 2), B (3, 2), C (4, 0), all 5×5 mazes: |AB| = 1, |AC| = 2, |BC| = √5 tiles.
    With edges [1.5, 2.1] the bins are by hand {A↔B}, {A↔C}, {B↔C}, each with both directions."""
    states = [*mazes, with_maze(template, *parse_ascii(MAZE_C))]
    assert steering.cheese_distance(states[0], states[1]) == 1.0
    assert steering.cheese_distance(states[0], states[2]) == 2.0
    assert steering.cheese_distance(states[2], states[1]) == pytest.approx(5 ** 0.5, abs=1e-12)
    decisions = steering.DecisionSet.of(states)
    vectors = steering.cheese_vector(policy, states, "grid", LAYER)
    pairs = steering.transfer(policy, decisions, states, "grid", LAYER, vectors, -1.0, sources=2)
    A, B, C = 0, 1, 2
    # shift 1 steers maze i with maze i − 1's vector, shift 2 with maze i − 2's
    assert list(zip(pairs.target, pairs.source)) == [(A, C), (B, A), (C, B), (A, B), (B, C), (C, A)]
    hand_bin = {frozenset((A, B)): 0, frozenset((A, C)): 1, frozenset((B, C)): 2}
    edges = [1.5, 2.1]
    assert steering.bin_of(pairs.distance, edges).tolist() == [hand_bin[frozenset(p)] for p in
                                                                 zip(pairs.target, pairs.source)]
    assert steering.distance_bins(edges) == ["distance<=1.5", "distance=1.5-2.1", "distance>2.1"]

    # P(cheese-ward move) of every pair by a plain forward with the source's vector subtracted
    logits_of = lambda target, source: plain_forward(policy, [decisions.states[target]],
                                                     edit=lambda x: x - vectors[source:source + 1])[0]
    cheese_group = lambda t: GROUPS[int(decisions.cheese_move[t])]
    p_cheese = {(t, s): float(torch.softmax(logits_of(t, s)[0].double(), -1)[cheese_group(t)].sum())
                for t in range(3) for s in range(3) if t != s}
    original_logits, _ = plain_forward(policy, decisions.states)
    original_probs = torch.softmax(original_logits.double(), -1).numpy()
    original = (np.array([original_probs[i, GROUPS[int(decisions.cheese_move[i])]].sum() for i in range(3)]),
                np.array([original_probs[i, GROUPS[int(decisions.top_right_move[i])]].sum() for i in range(3)]))
    evaluation = steering.Steering(steering.Steering.Config(transfer_distance_edges=edges))
    result = Result()
    evaluation._add_by_distance(result, "cheese_vector/transfer", pairs, original)
    rows = {m.name: m for m in result.metrics}
    for label, members in (("distance<=1.5", [(A, B), (B, A)]), ("distance=1.5-2.1", [(A, C), (C, A)]),
                           ("distance>2.1", [(B, C), (C, B)])):
        values = np.array([p_cheese[m] for m in members])
        changes = values - np.array([original[0][t] for t, _ in members])
        mean = rows[f"cheese_vector/transfer/{label}/p_cheese/mean"]
        assert mean.n == 2 and mean.method == "two-way cluster"  # two sources, two steered mazes
        assert mean.value == pytest.approx(values.mean(), abs=1e-6)
        sources, targets = [s for _, s in members], [t for t, _ in members]
        assert mean.stderr == pytest.approx(two_way_stderr(values, sources, targets), abs=1e-6)
        change = rows[f"cheese_vector/transfer/{label}/p_cheese/change"]
        assert change.value == pytest.approx(changes.mean(), abs=1e-6) and change.n == 2
    # the per-maze transfer average is the mean over each maze's pairs
    np.testing.assert_allclose(pairs.per_maze()[0], [np.mean([p_cheese[t, s] for s in range(3) if s != t])
                                                     for t in range(3)], atol=1e-6)


def two_way_stderr(values, first, second) -> float:
    """The two-way cluster-robust standard error of a mean, written out: the one-way variances
    Σ_g (Σ_{i∈g} e_i)² / N² · G/(G − 1) by first, by second and by (first, second) cell, combined
    as V₁ + V₂ − V₁₂ (the larger one-way variance if that is not positive)."""
    values = np.asarray(values, dtype=float)
    residual = values - values.mean()

    def one_way(labels) -> float:
        groups: dict = {}
        for label, e in zip(labels, residual):
            groups[label] = groups.get(label, 0.0) + e
        count = len(groups)
        return count / (count - 1) * sum(s * s for s in groups.values()) / len(values) ** 2

    v1, v2, v12 = one_way(list(first)), one_way(list(second)), one_way(list(zip(first, second)))
    variance = v1 + v2 - v12
    return float(np.sqrt(variance if variance > 0 else max(v1, v2)))


def crossed_transfer(mazes: int = 12, sources: int = 4, seed: int = 0) -> tuple[steering.Transfer, np.ndarray]:
    """Pairs as steering.transfer makes them (maze i steered by the vectors of the ``sources``
    mazes before it) with strong source and steered-maze effects on P(cheese), all within 2 tiles
    of each other, and the steered mazes' unedited P(cheese)."""
    rng = np.random.default_rng(seed)
    target = np.tile(np.arange(mazes), sources)
    source = np.concatenate([(np.arange(mazes) - shift) % mazes for shift in range(1, sources + 1)])
    source_effect, target_effect = rng.normal(0, 0.15, mazes), rng.normal(0, 0.15, mazes)
    p = np.clip(0.5 + source_effect[source] + target_effect[target] + rng.normal(0, 0.01, len(target)), 0.01, 0.99)
    original = np.clip(0.6 + target_effect + rng.normal(0, 0.05, mazes), 0.01, 0.99)
    return steering.Transfer(target, source, np.ones(len(target)), p, 1 - p), original


def test_transfer_intervals_are_two_way_clustered_by_source_and_steered_maze():
    """Each maze is in 2 × 4 pairs: the naive standard error over the 48 pairs as if independent is
    far smaller than the two-way one, which matches statsmodels' OLS on a constant with two-way
    cluster-robust covariance and the formula written out; n counts mazes, not pairs."""
    import statsmodels.api as sm

    pairs, original = crossed_transfer()
    evaluation = steering.Steering(steering.Steering.Config(transfer_distance_edges=[2.0, 4.0]))
    result = Result()
    evaluation._add_transfer(result, "cheese_vector/transfer", pairs, (original, 1 - original), median=True)
    evaluation._add_by_distance(result, "cheese_vector/transfer", pairs, (original, 1 - original))
    rows = {m.name: m for m in result.metrics}
    groups = np.column_stack([pairs.source, pairs.target])
    change = pairs.p_cheese - original[pairs.target]
    for prefix in ("cheese_vector/transfer", "cheese_vector/transfer/distance<=2"):
        for metric, y in (("mean", pairs.p_cheese), ("change", change)):
            row = rows[f"{prefix}/p_cheese/{metric}"]
            fit = sm.OLS(y, np.ones_like(y)).fit(cov_type="cluster", cov_kwds={"groups": groups})
            assert row.value == pytest.approx(y.mean()) and row.n == 12
            assert row.stderr == pytest.approx(float(fit.bse[0]), rel=1e-6)
            assert row.stderr == pytest.approx(two_way_stderr(y, pairs.source, pairs.target), rel=1e-9)
            naive = y.std(ddof=1) / np.sqrt(len(y))
            assert naive < 0.6 * row.stderr, (naive, row.stderr)
    # the empty bins say so
    assert rows["cheese_vector/transfer/distance>4/p_cheese/mean"].n == 0
    assert "no (source, steered maze) pairs" in rows["cheese_vector/transfer/distance>4/p_cheese/mean"].note
    median = rows["cheese_vector/transfer/p_cheese/median"]
    assert median.value == pytest.approx(np.median(pairs.per_maze()[0])) and median.n == 12
    assert_rows_have_intervals(result.metrics)


def test_bins_put_each_edge_in_the_bin_below():
    assert steering.bin_of(np.array([0.0, 2.0, 2.01, 4.0, 8.0, 8.5]), [2, 4, 8]).tolist() == [0, 0, 1, 1, 2, 3]


def test_log_change_matches_a_plain_log_softmax(policy, mazes):
    """``…/log_change`` is the mean paired change of log P(cheese-ward move), from log-softmax logits."""
    decisions = steering.DecisionSet.of(mazes)
    vectors = steering.cheese_vector(policy, mazes, "grid", LAYER)
    original = steering.decision_probs(policy, decisions, "grid", LAYER)
    steered = steering.decision_probs(policy, decisions, "grid", LAYER, vectors, -1.0)
    result = Result()
    steering.Steering._add(result, "cheese_vector", steered, original)
    rows = {m.name: m for m in result.metrics}

    def log_p_right(logits: torch.Tensor) -> np.ndarray:
        return torch.logsumexp(torch.log_softmax(logits.double(), -1)[:, GROUPS[RIGHT]], -1).numpy()

    before, _ = plain_forward(policy, decisions.states)
    after, _ = plain_forward(policy, decisions.states, edit=lambda x: x - vectors)
    expected = log_p_right(after) - log_p_right(before)
    row = rows["cheese_vector/p_cheese/log_change"]
    assert row.value == pytest.approx(expected.mean(), abs=1e-4) and row.n == len(mazes)
    assert row.stderr == pytest.approx(expected.std(ddof=1) / np.sqrt(len(mazes)), abs=1e-4)


def test_log_probability_floors_an_underflowed_softmax():
    logs = steering.log_probability(np.array([0.5, 0.0]))
    assert logs[0] == pytest.approx(np.log(0.5)) and np.isfinite(logs[1])
