"""jacobian_svd: the per-input Jacobians of the folded move log-probabilities and the value match
torch.autograd.functional.jacobian of the plain-torch forward (input and a layer), their SVD
matches torch.linalg.svd, and the eval's metrics are the means of those per-maze numbers, each
with a t interval over mazes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from shardlab.envs.maze import MOVE_GROUPS
from shardlab.evals.maze.common import policy_input, train_env
from shardlab.evals.maze.inputs import interp_mazes
from shardlab.evals.maze.jacobian_svd import INPUT, JacobianSVD, decompose, jacobians
from shardlab.evals.suite.context import EvalContext
from plain_impala import peaked_policy, plain_forward
from tiny_suites import assert_rows_have_intervals

pytestmark = pytest.mark.usefixtures("one_thread")
LAYER = "embedder.block2.res1.resadd_out"


@pytest.fixture(scope="module")
def model():
    return peaked_policy(seed=0, image_size=15, gain=30.0).double()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(3, 3, 15, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


def _outputs(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """(6,) log P(move) for the five moves (log of summed action probabilities), then the value."""
    probs = torch.softmax(logits[0], -1)
    moves = torch.stack([probs[list(group)].sum().log() for group in MOVE_GROUPS])
    return torch.cat([moves, value.reshape(1)])


def _plain_input_jacobian(model, x_one: torch.Tensor) -> torch.Tensor:
    """(6, C, H, W) for one input, from the plain forward."""
    return torch.autograd.functional.jacobian(lambda inp: _outputs(*plain_forward(model, inp)[:2]), x_one)[:, 0]


def _plain_layer_jacobian(model, x_one: torch.Tensor, layer: str) -> torch.Tensor:
    """(6, C, H, W) w.r.t. ``layer``'s activation for one input, from the plain forward."""
    with torch.no_grad():
        base = plain_forward(model, x_one)[2][layer]

    def through(activation: torch.Tensor) -> torch.Tensor:
        logits, value, _ = plain_forward(model, x_one, override={layer: lambda _: activation})
        return _outputs(logits, value)
    return torch.autograd.functional.jacobian(through, base)[:, 0]


def test_input_and_layer_jacobians_match_the_plain_forward(model, x):
    got = jacobians(model, x, [INPUT, LAYER])
    assert got[INPUT].shape == (3, 6, 3, 15, 15) and got[LAYER].shape == (3, 6, 32, 4, 4)
    for i in range(len(x)):
        torch.testing.assert_close(got[INPUT][i], _plain_input_jacobian(model, x[i:i + 1]))
        torch.testing.assert_close(got[LAYER][i], _plain_layer_jacobian(model, x[i:i + 1], LAYER))


def test_decompose_matches_torch_svd_and_the_rank_is_at_most_four(model, x):
    jac = jacobians(model, x, [INPUT, LAYER])[LAYER]
    part = decompose(jac)
    for i in range(len(x)):
        matrix = jac[i, :5].reshape(5, -1)
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        torch.testing.assert_close(part.singular[i], s)
        assert float(s[4]) < 1e-9 * float(s[0])  # Σ P(m) ∇log P(m) = 0
        for k in range(4):  # singular vectors are unique up to sign for distinct σ
            sign = torch.sign(u[:, k][u[:, k].abs().argmax()])
            torch.testing.assert_close(part.right[i, k].reshape(-1), sign * vh[k])
            torch.testing.assert_close(part.left[i, :, k], sign * u[:, k])
            assert part.left[i, :, k][part.left[i, :, k].abs().argmax()] > 0
        energy = s ** 2
        p = energy / energy.sum()
        p = p[p > 0]
        assert float(part.top1_energy[i]) == pytest.approx(float(energy[0] / energy.sum()), rel=1e-9)
        assert float(part.effective_rank[i]) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-9)
        top = vh[0].reshape(32, 4, 4)
        torch.testing.assert_close(part.channel_share[i], (top ** 2).sum((1, 2)))
        value = jac[i, 5].reshape(-1)
        assert float(part.value_norm[i]) == pytest.approx(float(value.norm()), rel=1e-9)
        cosine = abs(float(value @ vh[0])) / float(value.norm())
        assert float(part.value_top1_cosine[i]) == pytest.approx(cosine, rel=1e-9)


def test_jacobians_leave_no_hooks_and_work_under_inference_mode(model, x):
    with torch.inference_mode():
        got = jacobians(model, x, [INPUT, LAYER])
    assert got[INPUT].shape == (3, 6, *x.shape[1:])
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_the_eval_reports_means_over_mazes_of_the_plain_torch_numbers(tmp_path):
    train_config = OmegaConf.create({"env": {"obs": "grid", "distribution_mode": "easy", "max_maze_size": 7}})
    policy = peaked_policy(seed=1, image_size=15, gain=30.0)
    config = JacobianSVD.Config(mazes=3, mouse="decision", layers=[LAYER], top_k=2, examples=1)
    ctx = EvalContext(policy, train_config, str(tmp_path), seed=3, progress=False)
    result = JacobianSVD(config).run(ctx)
    metrics = {m.name: m for m in result.metrics}
    assert result.artifacts and result.artifacts[0].endswith("jacobian_svd.png")
    # recompute every maze in double precision with the plain forward and torch.linalg.svd
    env = train_env(train_config)
    x = policy_input(policy, [m.state for m in interp_mazes(env, 3, 3, "decision")], "grid").double()
    reference = policy.double()
    rows = {INPUT: [], LAYER: []}
    for i in range(len(x)):
        rows[INPUT].append(_plain_input_jacobian(reference, x[i:i + 1]))
        rows[LAYER].append(_plain_layer_jacobian(reference, x[i:i + 1], LAYER))
    for name, label in ((INPUT, "input"), (LAYER, "block2.res1.resadd_out")):
        jac = torch.stack(rows[name])
        matrices = jac[:, :5].reshape(3, 5, -1)
        s = torch.linalg.svdvals(matrices)
        vh = torch.linalg.svd(matrices, full_matrices=False)[2]
        for k in range(2):
            np.testing.assert_allclose(metrics[f"{label}/sigma{k + 1}"].value, float(s[:, k].mean()), rtol=1e-4)
        np.testing.assert_allclose(metrics[f"{label}/sigma1"].stderr, float(s[:, 0].std() / math.sqrt(3)), rtol=1e-4)
        np.testing.assert_allclose(metrics[f"{label}/top1_energy"].value,
                                   float((s[:, 0] ** 2 / (s ** 2).sum(1)).mean()), rtol=1e-4)
        value_norm = jac[:, 5].reshape(3, -1).norm(dim=1)
        np.testing.assert_allclose(metrics[f"{label}/value/sigma1"].value, float(value_norm.mean()), rtol=1e-4)
        share = (vh[:, 0].reshape(3, *jac.shape[2:]) ** 2).sum((2, 3)).mean(0)
        if name == INPUT:
            for channel, channel_name in enumerate(("wall", "mouse", "cheese")):
                np.testing.assert_allclose(metrics[f"input/channel_share/{channel_name}"].value,
                                           float(share[channel]), rtol=1e-4, atol=1e-9)
        else:
            top = int(share.argmax())
            np.testing.assert_allclose(metrics[f"{label}/channel_share/c{top}"].value, float(share[top]), rtol=1e-4)
        assert metrics[f"{label}/sigma1"].n == 3 and metrics[f"{label}/sigma1"].method == "t"
    assert_rows_have_intervals(result.metrics)


@pytest.mark.parametrize("bad", [{"top_k": 0}, {"top_k": 6}, {"examples": -1}, {"mouse": "corner"}])
def test_bad_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        JacobianSVD.Config(**bad)
