"""The sparsity eval (evals/sparsity/sparsity.py): its activation statistics on hand-built
activations with known answers, the independent units its intervals count (test images; rollout
envs, not frames), and a density threshold that a dense network misses."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from shardlab.evals.sparsity.sparsity import LayerStats, Sparsity, SparsityReport, add_report, measure
from shardlab.evals.suite import stats
from shardlab.evals.suite.results import Result
from shardlab.evals.suite.suite_file import load_suite
from tests.tiny_suites import assert_rows_have_intervals

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(ROOT, "configs", "evals", "sparsity.yaml")


def rows(result: Result) -> dict:
    return {m.name: m for m in result.metrics}


# -- statistics on constructed activations ----------------------------------------------------------

def test_dead_fraction_and_density_on_hand_built_activations():
    act = torch.zeros(4, 8)
    act[:, :6] = torch.eye(4, 6) + torch.eye(4, 6).roll(2, dims=1)  # units 6 and 7 never fire
    layer = LayerStats.of(act)
    assert layer.dead_fraction() == 0.25  # 2 of 8 units
    assert layer.density() == pytest.approx(act.count_nonzero().item() / 32)
    # weights: drawing input 0 twice and input 3 never is the batch [0, 0, 1, 2]
    weights = np.array([2.0, 1, 1, 0])
    assert layer.density(weights) == pytest.approx(act[[0, 0, 1, 2]].count_nonzero().item() / 32)


def test_conv_units_are_channels_dead_only_if_silent_everywhere():
    act = torch.zeros(2, 4, 3, 3)
    act[0, 0, 1, 1] = 1.0  # channel 0 fires at one position of one input
    act[:, 1] = 0.5  # channel 1 everywhere; channels 2, 3 never
    layer = LayerStats.of(act)
    assert layer.dead_fraction() == 0.5
    assert layer.density() == pytest.approx((1 + 18) / 72)


def test_duty_entropy_known_values():
    # unit A fires on all 4 inputs, unit B on exactly half: shares 2/3 and 1/3, so the entropy is
    # the binary entropy h(1/3) = 0.9183 bits (normalised by log 2 units)
    act = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)) / math.log(2)
    assert LayerStats.of(act).duty_entropy() == pytest.approx(h) == pytest.approx(0.918296, abs=1e-6)
    # four units each firing on exactly half the inputs: evenly used
    even = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]])
    assert LayerStats.of(even).duty_entropy() == pytest.approx(1.0)
    # one unit does all the firing: 0; nothing fires: undefined
    assert LayerStats.of(torch.tensor([[3.0, 0, 0], [1.0, 0, 0]])).duty_entropy() == 0.0
    assert math.isnan(LayerStats.of(torch.zeros(3, 4)).duty_entropy())


def test_class_selectivity_and_class_density_known_values():
    labels = torch.tensor([0, 1, 3, 3])
    act = torch.tensor([[0.0, 1.0, 0.0],   # unit 0 fires only for class 3: index 1
                        [0.0, 1.0, 0.0],   # unit 1 fires alike for every class: index 0
                        [2.0, 1.0, 0.0],   # unit 2 never fires: not counted
                        [2.0, 1.0, 0.0]])
    layer = LayerStats.of(act, labels)
    assert layer.class_selectivity() == pytest.approx(0.5)
    only_class_3 = LayerStats.of(act[:, :1], labels)
    assert only_class_3.class_selectivity() == 1.0
    assert layer.class_density() == pytest.approx({0: 1 / 3, 1: 1 / 3, 3: 2 / 3})
    assert layer.class_density_spread() == pytest.approx(1 / 3)
    assert math.isnan(LayerStats.of(act, torch.zeros(4, dtype=torch.long)).class_selectivity())


# -- independent units --------------------------------------------------------------------------------

def policy_report(envs: int = 4, frames: int = 16) -> SparsityReport:
    """A policy report whose frames are wholly correlated within an env: envs 0 and 1 keep their
    clean action under noise on every frame, envs 2 and 3 on none. Frame i is env i % envs."""
    n = envs * frames
    clusters = np.arange(n) % envs
    agree = (clusters < envs // 2).astype(float)
    act = torch.zeros(n, 4)
    act[:, 0] = 1.0
    return SparsityReport(layers={"fc": LayerStats.of(act)}, noise_levels=[0.0, 1.0],
                          noise_hits=np.stack([np.ones(n), agree]), score_name="agreement", clusters=clusters,
                          unit="envs", reference=np.zeros(n, dtype=np.int64))


def test_policy_rows_count_envs_not_frames():
    report = policy_report()
    result = Result()
    add_report(result, report)
    noisy = rows(result)["noise_agreement/sigma=1"]
    assert noisy.value == 0.5 and noisy.n == 4 and noisy.unit == "envs" and noisy.method == "cluster bootstrap"
    # the interval is the bootstrap over the 4 env means, wider than Wilson over 64 "independent" frames
    by_env = stats.bootstrap(lambda idx: float(np.array([1.0, 1, 0, 0])[idx].mean()), 4, "envs")
    assert (noisy.ci_low, noisy.ci_high) == pytest.approx((by_env.ci_low, by_env.ci_high))
    frames = stats.proportion(32, 64, unit="frames")
    assert noisy.ci_high - noisy.ci_low > 1.5 * (frames.ci_high - frames.ci_low)
    assert rows(result)["inputs"].value == 64 and rows(result)["inputs"].kind == "count"
    assert_rows_have_intervals(result.metrics)


def test_majority_baseline_fixes_the_commonest_answer_once():
    report = policy_report()
    report.reference = np.array([0, 0, 1] * 21 + [2])  # action 0 on 42 of 64 frames
    result = Result()
    add_report(result, report)
    baseline = rows(result)["noise_agreement/majority_baseline"]
    assert baseline.value == pytest.approx(42 / 64) and baseline.n == 4
    assert baseline.ci_low <= baseline.value <= baseline.ci_high  # the max of resampled shares would sit above


# -- the eval on classifiers ---------------------------------------------------------------------------

def digits_classifier(activation: str):
    from shardlab.models.classifier import build_classifier
    from shardlab.trainers.config import load_config

    recipe = os.path.join(ROOT, "configs", "train", f"digits_{activation}.yaml")
    config = load_config(recipe, ["data.shape=[1,8,8]", "data.num_classes=10", "model.hidden=[64,64]"])
    torch.manual_seed(0)
    return build_classifier(config), config


def classifier_result(activation: str) -> tuple[Result, SparsityReport, object, object]:
    model, config = digits_classifier(activation)
    report = measure(model, "classify", config, samples=48, noise_levels=(0.0, 0.5), noise_repeats=2,
                     pixel_levels=(0.0, 0.25))
    result = Result()
    add_report(result, report)
    return result, report, model, config


def test_classifier_rows_have_intervals_over_images_and_match_a_recomputation():
    from shardlab.trainers.datasets import load_splits

    result, report, model, config = classifier_result("kwta")
    assert_rows_have_intervals(result.metrics)
    values = rows(result)
    splits = load_splits(config.data)
    x, y = splits.x["test"][:48], splits.y["test"][:48]
    with torch.no_grad():
        correct = (model.eval()(x).argmax(-1) == y).numpy()
    accuracy = values["accuracy"]
    expected = stats.proportion(correct, unit="images")
    assert (accuracy.value, accuracy.ci_low, accuracy.ci_high, accuracy.n, accuracy.method) == \
        (expected.value, expected.ci_low, expected.ci_high, 48, "wilson")
    assert values["noise_accuracy/sigma=0"].value == accuracy.value
    # a noisy row averages 2 draws per image: a bootstrap over the 48 images
    assert values["noise_accuracy/sigma=0.5"].n == 48 and values["noise_accuracy/sigma=0.5"].method == "bootstrap"
    # k-WTA at 10% of 64 units with factor 1.4 keeps int(round(6.4) · 1.4) = 8 units per image
    assert values["density/act1"].value == 8 / 64
    for name in ("dead_fraction", "class_selectivity/act1", "class_density_spread"):
        assert values[name].kind == "data" and values[name].ci_low is None
    assert Sparsity.version == 3


def test_density_threshold_fails_a_dense_network_and_holds_for_a_sparse_one():
    _, thresholds, _ = load_suite(SUITE, None)
    density = next(t for t in thresholds if t.key == "sparsity.density")
    dense, sparse = (rows(classifier_result(kind)[0])["density"] for kind in ("dense", "kwta"))
    assert dense.value > 0.4 and density.missed(dense)
    assert not density.missed(sparse) and density.verdict(sparse) == "held"


def test_a_maze_policy_agrees_on_folded_moves_with_raw_actions_kept_secondary():
    """Two procgen actions that make the same move (say, two of the left group) count as agreeing
    in the headline; the raw 15-way agreement, kept as a secondary row, counts them as different."""
    import torch

    from shardlab.evals.maze.vector_field import ACTION_GROUPS
    from shardlab.evals.sparsity.sparsity import _hits, _predict

    group = next(g for g in ACTION_GROUPS if len(g) >= 2)
    clean, noisy = torch.full((4, 15), -5.0), torch.full((4, 15), -5.0)
    clean[:, group[0]], noisy[:, group[1]] = 5.0, 5.0  # different actions, one move
    model = torch.nn.Identity()
    reference = _predict(model, clean, torch.device("cpu"), fold=True)
    hits = _hits(model, lambda: noisy, 1, reference, torch.device("cpu"), fold=True)
    assert hits[:, 0].tolist() == [1.0] * 4 and hits[:, 1].tolist() == [0.0] * 4
    # a classifier (no folding) answers with the argmax alone
    assert _predict(model, clean, torch.device("cpu")).shape == (4, 1)
