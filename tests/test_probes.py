"""The cheese-location probes on planted signals (near 100%) and shuffled labels (near chance), the
activation cells a maze covers, and the activation cache against a plain-torch forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from evals.maze_inputs import cached_activations, maze_cells
from evals.maze_interp_common import activation_square_cell
from evals.probes import classification_probe, convolutional_probe, regression_probe
from models.impala import ImpalaPolicy
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
    predicted = classification_probe(features[train], labels[train], features[test], regularization=1.0)
    assert (predicted == labels[test]).mean() >= 0.95
    shuffled = rng.permutation(labels)
    predicted = classification_probe(features[train], shuffled[train], features[test], regularization=1.0)
    assert (predicted == shuffled[test]).mean() < 0.3  # chance is 1/8
    only = classification_probe(features[train], np.zeros(len(train), int), features[test])
    assert np.all(only == 0)


def test_regression_probe_recovers_planted_coordinates():
    rng = np.random.default_rng(1)
    n = 300
    tiles = rng.integers(0, 15, size=(n, 2)).astype(float)
    features = np.concatenate([tiles @ rng.normal(size=(2, 10)), rng.normal(size=(n, 20))], 1)
    features += 0.01 * rng.normal(size=features.shape)
    train, test = _split(n)
    predicted = regression_probe(features[train], tiles[train], features[test])
    assert (np.rint(predicted) == tiles[test]).all(1).mean() >= 0.95
    shuffled = tiles[rng.permutation(n)]
    predicted = regression_probe(features[train], shuffled[train], features[test])
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
    direct = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13))).fit(features[train], tiles[train])
    np.testing.assert_allclose(regression_probe(features[train], tiles[train], features[test]),
                               direct.predict(features[test]), rtol=1e-6, atol=1e-8)
    direct = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000, tol=1e-8))
    direct.fit(features[train], labels[train])
    predicted = classification_probe(features[train], labels[train], features[test], regularization=0.1)
    assert (predicted == direct.predict(features[test])).mean() >= 0.9
