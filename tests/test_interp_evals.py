"""probes, activation_patching, causal_scrubbing, jacobian_svd and relu_ablation end to end through
`shardlab eval` on a tiny checkpoint: results.json rows, PNG artifacts, exact identities that must
hold on any policy, the interp suite file, and bad configs (exit 2)."""

from __future__ import annotations

import json
import os
import textwrap

import pytest
import yaml

from shardlab import cli as shardlab
from tiny_suites import assert_rows_have_intervals

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny forwards: one torch thread is fastest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVALS = ("probes", "activation_patching", "causal_scrubbing", "jacobian_svd", "saliency_pca", "relu_ablation")
SUITE = """
seed: 1
evals:
  probes: {mazes: 24, layers: [embedder.block1.maxpool_out, embedder.relufc_out], regularization: [1.0], cv_folds: 2}
  activation_patching:
    pairs: 6
    min_logit_gap: 0.0
    layers: [embedder.block2.res1.resadd_out, embedder.block2.res1.relu1_out]
    channel_layers: [embedder.block2.res1.resadd_out]
    channel_mazes: 8
  causal_scrubbing:
    inputs: 8
    resamples: 1
    hypotheses:
      everything:
        - {layer: embedder.block2.res1.resadd_out, features: [cheese_location, mouse_location, maze_layout]}
      cheese:
        - {layer: embedder.block2.res1.resadd_out, features: [cheese_location], channels: [0, 1]}
  jacobian_svd: {mazes: 4, layers: [embedder.block2.res1.resadd_out]}
  saliency_pca: {mazes: 4, layers: [embedder.block2.res1.resadd_out]}
  relu_ablation: {mazes: 8, relus: [embedder.block1.res1.relu1_out, embedder.relufc_out]}
thresholds:
  activation_patching.control/whole_layer/block2.res1.resadd_out: {min: 0.999999, max: 1.000001}
  causal_scrubbing.everything/kl/loss_recovered: {min: 1.0, max: 1.0}
"""


@pytest.fixture(scope="module")
def checkpoint(tiny_maze_checkpoint) -> str:
    return tiny_maze_checkpoint


def _suite(tmp_path, text: str) -> str:
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_every_interp_eval_runs_through_shardlab_eval(checkpoint, tmp_path):
    out = tmp_path / "out"
    assert shardlab.main(["eval", checkpoint, "--suite", _suite(tmp_path, SUITE), "--out", str(out)]) == 0
    document = json.loads((out / "results.json").read_text())
    assert not document["errors"]
    assert_rows_have_intervals(document["results"])
    rows = {(row["eval"], row["name"]): row["value"] for row in document["results"]}
    for name in EVALS:
        artifacts = document["artifacts"][name]
        assert artifacts and all(os.path.getsize(path) > 0 for path in artifacts), name
        assert any(path.endswith(".png") for path in artifacts)
    for probe in ("cell", "xy", "conv"):
        values = {key: rows[("probes", f"{probe}/block1.maxpool_out/{key}")]
                  for key in ("accuracy", "random_init", "shuffled", "chance")}
        assert all(0 <= value <= 1 for value in values.values()), values
        selectivity = rows[("probes", f"{probe}/block1.maxpool_out/selectivity")]
        assert selectivity == pytest.approx(values["accuracy"] - values["shuffled"])
    assert ("probes", "conv/relufc_out/accuracy") not in rows  # no positions to fold in a flat layer
    assert rows[("activation_patching", "pairs_used")] == 6
    assert rows[("activation_patching", "control/whole_layer/block2.res1.resadd_out")] == pytest.approx(1.0, abs=1e-6)
    assert ("activation_patching", "channel/block2.res1.resadd_out/max") in rows
    assert rows[("causal_scrubbing", "everything/kl/scrubbed")] == 0
    assert rows[("causal_scrubbing", "everything/nll/mean_abs_change")] == 0
    assert ("causal_scrubbing", "cheese/nll/worst_increase") in rows
    assert rows[("jacobian_svd", "input/sigma1")] >= rows[("jacobian_svd", "input/sigma2")] > 0
    shares = [rows[("jacobian_svd", f"input/channel_share/{c}")] for c in ("wall", "mouse", "cheese")]
    assert sum(shares) == pytest.approx(1.0)
    for site in ("block1.res1.relu1_out", "relufc_out", "all"):
        assert 0 <= rows[("relu_ablation", f"{site}/agreement")] <= 1
        assert rows[("relu_ablation", f"{site}/kl")] >= 0


def test_the_interp_suite_lists_every_eval_with_a_valid_config():
    from shardlab.evals.suite.registry import get
    from shardlab.evals.suite.suite_file import eval_config as _eval_config

    with open(os.path.join(ROOT, "configs", "evals", "interp.yaml")) as handle:
        suite = yaml.safe_load(handle)
    for name in EVALS:
        _eval_config(get(name), name, suite["evals"][name])


@pytest.mark.parametrize("config", ["probes: {selection_fraction: 1.5}", "activation_patching: {mouse: random}",
                                    "jacobian_svd: {top_k: 9}", "relu_ablation: {relus: [embedder.fc]}",
                                    "causal_scrubbing: {hypotheses: {h: [{layer: embedder.fc, features: [colour]}]}}"])
def test_bad_configs_exit_2_with_one_line(checkpoint, tmp_path, capsys, config):
    suite = _suite(tmp_path, f"evals:\n  {config}\n")
    capsys.readouterr()
    assert shardlab.main(["eval", checkpoint, "--suite", suite, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err
    assert not (tmp_path / "o" / "results.json").exists()
