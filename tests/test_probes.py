"""The probes on planted signals (near 100%) and shuffled labels (near chance), the activation cells
a maze covers, the activation cache against a plain-torch forward; the regularisation chosen by
grouped CV on the training mazes (against sklearn's cross_val_score), the layout-disjoint
train/selection/confirmation split, cell predictions read at tile resolution, the choice that
skips uninformative layers, the shuffled conv control (masks move with the labels), and the
outcome probe's labels on a policy whose outcome is known. The eval end to end:
tests/test_probes_eval.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.preprocessing import StandardScaler

from shardlab.envs import maze_build, maze_state
from shardlab.envs.eval_mazes import EvalMaze, eval_mazes
from shardlab.envs.maze import MOVE_GROUPS
from shardlab.envs.maze_generate import random_maze
from shardlab.evals.maze.common import TrainEnv, activation_square_cell
from shardlab.evals.maze.inputs import cached_activations, maze_cells
from shardlab.evals.maze.probes import (Probes, _Labels, cell_chance_right, cells_to_tiles, chance_right, cheese_counts,
                                        choose, classification_probe, convolutional_probe, episode_outcomes,
                                        layout_ids, layout_split, regression_probe, score_probe, worst_size)
from shardlab.models.impala import ImpalaPolicy
from plain_impala import plain_forward

pytestmark = pytest.mark.usefixtures("one_thread")


def _split(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n * 3 // 4), np.arange(n * 3 // 4, n)


def test_classification_probe_finds_a_planted_label_and_not_shuffled_ones():
    rng = np.random.default_rng(0)
    n, classes = 400, 8
    labels = rng.integers(classes, size=n)
    features = rng.normal(size=(n, 40))
    features[np.arange(n), labels] += 6.0  # the label, one-hot, in the first 8 features
    train, test = _split(n)
    groups = np.arange(n)[train] // 3
    predicted, _ = classification_probe(features[train], labels[train], features[test], groups)
    assert (predicted == labels[test]).mean() >= 0.95
    shuffled = rng.permutation(labels)
    predicted, _ = classification_probe(features[train], shuffled[train], features[test], groups)
    assert (predicted == shuffled[test]).mean() < 0.3  # chance is 1/8
    only, c = classification_probe(features[train], np.zeros(len(train), int), features[test], groups)
    assert np.all(only == 0) and np.isnan(c)


def test_regression_probe_recovers_planted_coordinates():
    rng = np.random.default_rng(1)
    n = 300
    tiles = rng.integers(0, 15, size=(n, 2)).astype(float)
    features = np.concatenate([tiles @ rng.normal(size=(2, 10)), rng.normal(size=(n, 20))], 1)
    features += 0.01 * rng.normal(size=features.shape)
    train, test = _split(n)
    groups = np.arange(len(train))
    predicted, _ = regression_probe(features[train], tiles[train], features[test], groups)
    assert (np.rint(predicted) == tiles[test]).all(1).mean() >= 0.95
    shuffled = tiles[rng.permutation(n)]
    predicted, _ = regression_probe(features[train], shuffled[train], features[test], groups)
    assert (np.rint(predicted) == shuffled[test]).all(1).mean() < 0.1


def test_convolutional_probe_locates_a_planted_channel():
    rng = np.random.default_rng(2)
    n, channels, side = 200, 6, 5
    acts = rng.normal(size=(n, channels, side, side))
    masks = np.zeros((n, side, side), bool)
    masks[:, 1:4, 1:4] = True  # the candidate cells: a 3×3 "maze"
    cells = rng.integers(1, 4, size=(n, 2))
    acts[np.arange(n), 2, cells[:, 0], cells[:, 1]] += 4.0
    train, test = _split(n)
    predicted = convolutional_probe(acts[train], cells[train], masks[train], acts[test], masks[test], 1.0)
    assert (predicted == cells[test]).all(1).mean() >= 0.95
    assert masks[test][np.arange(len(test)), predicted[:, 0], predicted[:, 1]].all()  # only candidates
    shuffled = cells[rng.permutation(n)]
    predicted = convolutional_probe(acts[train], shuffled[train], masks[train], acts[test], masks[test], 1.0)
    assert (predicted == shuffled[test]).all(1).mean() < 0.3  # chance is 1/9


@pytest.mark.parametrize("obs,world", [("grid", 15), ("grid", 25), ("rgb", 15), ("rgb", 25)])
def test_every_cheese_cell_lies_among_the_maze_cells(obs, world):
    sides = (8, 4, 2) if (obs, world) == ("grid", 15) else (13, 7, 4) if obs == "grid" else (32, 16, 8)
    for side in sides:
        for size in range(3, world + 1, 2):
            mask = maze_cells(size, world, obs, side)
            for x in range(size):
                for y in range(size):
                    assert mask[activation_square_cell((x, y), size, world, obs, side)]


def test_cached_activations_match_the_plain_forward():
    torch.manual_seed(0)
    model = ImpalaPolicy(scale=1, image_size=15).eval()
    x = torch.rand(5, 3, 15, 15)
    layers = ["embedder.block1.maxpool_out", "embedder.block2.res1.resadd_out", "embedder.relufc_out"]
    logits, acts = cached_activations(model, x, layers, batch_size=2)  # chunks of 2, 2 and 1
    with torch.no_grad():
        ref_logits, _, ref = plain_forward(model, x)
    torch.testing.assert_close(logits, ref_logits)
    for layer in layers:
        torch.testing.assert_close(acts[layer], ref[layer], rtol=1e-4, atol=1e-5)


def test_rotating_wide_features_onto_the_training_span_changes_no_prediction():
    rng = np.random.default_rng(4)
    n, width = 60, 500  # more features than samples: the probes rotate onto the samples' span
    features = rng.normal(size=(n, width))
    tiles = features[:, :3] @ rng.normal(size=(3, 2)) + 0.1 * rng.normal(size=(n, 2))
    labels = (features[:, 0] > 0).astype(int) + (features[:, 1] > 0)
    train, test = _split(n)
    groups = np.arange(len(train))
    direct = make_pipeline(StandardScaler(), Ridge(alpha=10.0)).fit(features[train], tiles[train])
    predicted, alpha = regression_probe(features[train], tiles[train], features[test], groups, grid=[0.1])
    assert alpha == 10.0
    np.testing.assert_allclose(predicted, direct.predict(features[test]), rtol=1e-6, atol=1e-8)
    direct = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000, tol=1e-8))
    direct.fit(features[train], labels[train])
    predicted, _ = classification_probe(features[train], labels[train], features[test], groups, grid=[0.1])
    assert (predicted == direct.predict(features[test])).mean() >= 0.9


# -- cross-validated regularisation, layout split, shuffled conv control, outcome probe -----------
def test_the_regularization_is_chosen_by_grouped_cv_on_the_training_mazes_only():
    rng = np.random.default_rng(2)
    n, grid = 160, [0.001, 0.01, 0.1, 1.0, 10.0]
    layouts = np.arange(n) // 2  # two mazes per layout
    labels = (rng.random(n) < 0.5).astype(int)
    features = rng.normal(size=(n, 5))
    features[:, 0] += 0.8 * labels  # a weak planted signal among noise
    features[:, 1] -= 0.4 * labels
    train, test = np.arange(120), np.arange(120, n)
    predicted, chosen = classification_probe(features[train], labels[train], features[test], layouts[train], grid)
    # independent: sklearn's cross_val_score per C on the same grouped folds, then a direct fit
    pipeline = lambda c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))  # noqa: E731
    cv = [cross_val_score(pipeline(c), features[train], labels[train], groups=layouts[train],
                          cv=GroupKFold(n_splits=3)).mean() for c in grid]
    assert chosen == grid[int(np.argmax(cv))]
    assert chosen != 0.1  # the strength the probe used before, for every layer and condition
    direct = pipeline(chosen).fit(features[train], labels[train])
    np.testing.assert_array_equal(predicted, direct.predict(features[test]))
    # the test mazes play no part in the choice
    _, again = classification_probe(features[train], labels[train], rng.normal(size=(40, 5)), layouts[train], grid)
    assert again == chosen


def _maze(template: bytes, inner: np.ndarray, cheese: tuple[int, int], index: int) -> EvalMaze:
    state = maze_state.with_cheese_at(maze_build.with_maze(template, inner), cheese)
    return EvalMaze(state, 0, index, (index, 0), inner.shape[0], cheese, None)


def test_the_split_keeps_mazes_with_the_same_walls_together(template):
    rng = np.random.default_rng(6)
    inners = [random_maze(5, rng) for _ in range(8)]
    mazes = []
    for index in range(48):  # each layout six times, with different cheese squares
        inner = inners[index % 8]
        ys, xs = np.nonzero(inner != maze_state.WALL)
        k = int(rng.integers(1, len(xs)))
        mazes.append(_maze(template, inner, (int(xs[k]), int(ys[k])), index))
    layouts = layout_ids(mazes)
    walls = [(maze_state.inner_grid(m.state) == maze_state.WALL).tobytes() for m in mazes]
    for i in range(len(mazes)):
        for j in range(len(mazes)):
            assert (layouts[i] == layouts[j]) == (walls[i] == walls[j])
    assert len(np.unique(layouts)) == len({w.tobytes() for w in inners})
    parts = layout_split(layouts, 0.25, 0.25, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(48)) and all(len(part) for part in parts)
    for a in range(3):
        for b in range(a + 1, 3):
            assert not {walls[i] for i in parts[a]} & {walls[i] for i in parts[b]}
    # the old split (a random permutation of mazes) mixes layouts on these mazes
    order = np.random.default_rng(0).permutation(48)
    assert set(layouts[order[:12]]) & set(layouts[order[12:]])


def test_the_split_deals_every_size_to_each_part_in_proportion():
    sizes = np.repeat([3, 5, 7, 9], [40, 80, 40, 40])
    layouts = np.arange(len(sizes))  # every maze its own layout
    train, selection, confirmation = layout_split(layouts, 0.25, 0.25, seed=3, strata=sizes)
    for size, count in ((3, 40), (5, 80), (7, 40), (9, 40)):
        assert [int((sizes[part] == size).sum()) for part in (train, selection, confirmation)] == \
            [count // 2, count // 4, count // 4]
    # too few layouts for three parts; a part left empty by the fractions takes a layout
    with pytest.raises(ValueError, match="probes.mazes"):
        layout_split(np.array([0, 0, 1]), 0.25, 0.25, seed=0)
    parts = layout_split(np.array([0, 1, 2]), 0.1, 0.1, seed=0)
    assert sorted(len(part) for part in parts) == [1, 1, 1]


def test_the_config_leaves_mazes_to_train_on():
    with pytest.raises(ValueError, match="selection_fraction"):
        Probes.Config(selection_fraction=0.5, confirmation_fraction=0.5)
    with pytest.raises(ValueError, match="confirmation_fraction"):
        Probes.Config(confirmation_fraction=0.0)


def test_a_predicted_cell_names_the_most_frequent_training_tile_in_it():
    world, side = 4, 2
    # one maze covering the whole 4×4 world; cell (r, c) holds tiles 2r..2r+1 × 2c..2c+1
    rows, cols = np.indices((world, world))
    tile_cells = ((rows // 2) * side + cols // 2)[None].repeat(3, 0)
    train_tiles = np.array([[0, 1], [0, 1], [1, 0], [3, 3]])
    counts = cheese_counts(train_tiles, world)
    named = cells_to_tiles(np.array([[0, 0], [1, 1], [0, 1]]), side, tile_cells, counts)
    # cell (0, 0): tile (0, 1) twice beats (1, 0) once; (1, 1): (3, 3); (0, 1): no training cheese,
    # the first of its tiles
    np.testing.assert_array_equal(named, [[0, 1], [3, 3], [0, 2]])
    tile_cells[0, :, :] = -1  # a cell holding none of the maze's tiles names no tile
    assert (cells_to_tiles(np.array([[0, 0]]), side, tile_cells[:1], counts) == -1).all()


def test_uninformative_layers_are_never_chosen_and_the_worst_size_is_reported():
    criteria = {("cell", 0): (0.4, 0.6), ("cell", 1): (1.0, 1.0), ("conv", 0): (0.4, 0.7), ("xy", 0): (0.4, 0.7)}
    assert choose(criteria, set()) == ("cell", 1)
    assert choose(criteria, {("cell", 1)}) == ("conv", 0)  # ties: the first given
    assert choose({("cell", 1): (1.0, 1.0)}, {("cell", 1)}) is None
    right = np.array([1, 1, 1, 0, 1, 1, 1, 1], bool)
    sizes = np.array([3, 3, 5, 5, 7, 7, 7, 7])
    worst = worst_size(right, sizes)
    assert worst.value == 0.5 and worst.n == 2 and "5×5" in worst.note
    # equal points: the size with less evidence (the lower interval end) is the worse
    assert "3×3" in worst_size(np.ones(6, bool), np.array([3, 3, 5, 5, 5, 5])).note


def test_the_shuffled_conv_control_moves_the_candidate_cells_with_the_cheese():
    n, side, layer = 80, 5, "layer"
    left = np.arange(n) % 2 == 0  # half the mazes cover the left two columns, half the right two
    masks = np.zeros((n, side, side), bool)
    masks[left, :, :2] = True
    masks[~left, :, 3:] = True
    cells = np.where(left[:, None], [[2, 0]], [[2, 4]])  # each kind keeps its cheese in one cell
    acts = np.zeros((n, 3, side, side))
    acts[:, 0] = masks  # the input knows its own maze's cells
    acts[:, 1, 2, 0] = acts[:, 2, 2, 4] = 1.0  # and where those two cells are, nothing more
    # one tile per cell: tile (r, c) lies in cell (r, c) of the maze's covered cells
    tile_cells = np.where(masks, np.arange(side * side).reshape(side, side)[None], -1)
    labels = _Labels(cells, {layer: cells}, {layer: masks}, np.full(n, 5), side, np.arange(n), regions=masks,
                     tile_cells={layer: tile_cells})
    train, test = np.arange(60), np.arange(60, n)
    rng = np.random.default_rng(7)
    perm = np.arange(n)
    perm[train], perm[test] = rng.permutation(train), rng.permutation(test)
    scores = score_probe("conv", layer, acts, labels, perm, train, test, grid=[1.0])
    chance = cell_chance_right("conv", layer, labels, train, test).mean()
    assert chance == 1.0  # the best constant guess: that kind's cell among the candidates
    assert scores.cell_right.mean() == chance and scores.regularization == 1.0
    np.testing.assert_array_equal(scores.right, scores.cell_right)  # one tile per cell
    # with the masks left in place, a shuffled cheese cell lies outside the candidates whenever the
    # partner is of the other kind: the control fell to the same-kind fraction, inflating selectivity
    old = convolutional_probe(acts[train], cells[perm][train], masks[train], acts[test], masks[test], 1.0)
    same_kind = (left[test] == left[perm[test]]).mean()
    assert (old == cells[perm][test]).all(1).mean() == same_kind < 1.0


def _always_right_policy() -> ImpalaPolicy:
    torch.manual_seed(0)
    policy = ImpalaPolicy(scale=1, image_size=15).eval()
    with torch.no_grad():
        policy.fc_policy.weight.zero_()
        policy.fc_policy.bias.zero_()
        policy.fc_policy.bias[list(MOVE_GROUPS[3])] = 50.0  # right, whatever it sees
    return policy


def test_the_outcome_probe_on_a_policy_whose_outcome_is_known():
    mazes = eval_mazes(40, seed=3, cheese="quadrant:bottom_right", max_size=7, mode="easy")
    reached = episode_outcomes(_always_right_policy(), [m.state for m in mazes], TrainEnv("grid", "easy", 7), seed=0)
    # walking right from (0, 0) reaches the cheese exactly when it lies on the bottom row with no
    # wall before it
    known = []
    for maze in mazes:
        inner = maze_state.inner_grid(maze.state)
        x, y = maze.cheese
        known.append(y == 0 and all(inner[0, k] != maze_state.WALL for k in range(x + 1)))
    np.testing.assert_array_equal(reached, known)
    assert 0 < reached.sum() < len(mazes)
    # the probe on a feature that encodes the outcome (plus noise), against a direct sklearn fit
    rng = np.random.default_rng(8)
    n = len(mazes)
    features = np.concatenate([reached[:, None] + 0.3 * rng.normal(size=(n, 1)), rng.normal(size=(n, 4))], 1)
    labels = _Labels(np.zeros((n, 2)), {}, {}, np.full(n, 7), 15, layout_ids(mazes), reached)
    train, selection, confirmation = layout_split(labels.layouts, 0.15, 0.15, seed=0)
    test = np.concatenate([selection, confirmation])
    scores = score_probe("outcome", "x", features, labels, np.arange(n), train, test)
    direct = make_pipeline(StandardScaler(), LogisticRegression(C=scores.regularization, max_iter=1000))
    direct.fit(features[train], reached[train])
    np.testing.assert_array_equal(scores.right, direct.predict(features[test]) == reached[test])
    majority = reached[train].mean() >= 0.5
    np.testing.assert_array_equal(chance_right("outcome", labels, train, test), reached[test] == majority)
