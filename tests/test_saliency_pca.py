"""saliency_pca (the cross-maze SVD of per-maze gradients): per-input gradients match
torch.autograd.functional.jacobian (input) and central finite differences (a layer), for the
greedy action, a fixed action and a folded move; the SVD and effective rank."""

from __future__ import annotations

import pytest
import torch

from shardlab.evals.maze.vector_field import FOLDED_ACTIONS
from shardlab.evals.maze.saliency_pca import INPUT, chosen_actions, effective_rank, gradients, spectrum, target_logits
from shardlab.models.hooks import add, hooked
from shardlab.models.impala import ImpalaPolicy

pytestmark = pytest.mark.usefixtures("one_thread")
LAYER = "embedder.block2.res1.resadd_out"


@pytest.fixture(scope="module")
def model() -> ImpalaPolicy:
    torch.manual_seed(0)
    policy = ImpalaPolicy(scale=1, image_size=15).double().eval()
    with torch.no_grad():
        policy.fc_policy.weight.mul_(100.0)
    return policy


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(3, 3, 15, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


def _target(model, x, action):
    logits = model(x)[0]
    return target_logits(logits, action, chosen_actions(model(x)[0].detach(), action))


@pytest.mark.parametrize("action", ["greedy", 4, "right"])
def test_input_gradients_match_the_autograd_jacobian(model, x, action):
    chosen = chosen_actions(model(x)[0].detach(), action)
    function = lambda inputs: target_logits(model(inputs)[0], action, chosen)  # noqa: E731
    jacobian = torch.autograd.functional.jacobian(function, x)  # (N, N, C, H, W)
    expected = torch.stack([jacobian[i, i] for i in range(len(x))])
    assert jacobian[0, 1].abs().max() == 0  # inputs do not interact
    grads = gradients(model, x, [INPUT, LAYER], action)
    torch.testing.assert_close(grads[INPUT], expected)


@pytest.mark.parametrize("action", ["greedy", "up"])
def test_layer_gradients_match_finite_differences(model, x, action):
    grads = gradients(model, x, [LAYER], action)[LAYER]
    chosen = chosen_actions(model(x)[0].detach(), action)
    eps = 1e-6
    for channel, row, col in ((0, 0, 0), (5, 2, 1), (31, 3, 3)):
        bump = torch.zeros(32, 4, 4, dtype=torch.float64)
        bump[channel, row, col] = eps
        with torch.no_grad():
            with hooked(model, edits={LAYER: add(bump, 1.0)}):
                up = target_logits(model(x)[0], action, chosen)
            with hooked(model, edits={LAYER: add(bump, -1.0)}):
                down = target_logits(model(x)[0], action, chosen)
        torch.testing.assert_close(grads[:, channel, row, col], (up - down) / (2 * eps), rtol=1e-4, atol=1e-7)


def test_gradients_leave_no_hooks_and_work_under_inference_mode(model, x):
    with torch.inference_mode():
        grads = gradients(model, x, [INPUT, LAYER])
    assert grads[INPUT].shape == x.shape and grads[LAYER].shape == (3, 32, 4, 4)
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_spectrum_and_effective_rank():
    generator = torch.Generator().manual_seed(0)
    grad = torch.randn(6, 2, 3, 3, generator=generator, dtype=torch.float64)
    singular, vectors = spectrum(grad)
    torch.testing.assert_close(singular, torch.linalg.svdvals(grad.reshape(6, -1)))
    assert vectors.shape == (6, 2, 3, 3)
    torch.testing.assert_close((vectors.reshape(6, -1) ** 2).sum(1), torch.ones(6, dtype=torch.float64))
    rank_one = torch.outer(torch.arange(1.0, 5.0), torch.randn(7, generator=generator)).double()
    assert effective_rank(spectrum(rank_one)[0]) == pytest.approx(1.0, abs=1e-9)
    assert effective_rank(torch.ones(4, dtype=torch.float64)) == pytest.approx(4.0)


def test_greedy_target_is_the_most_likely_folded_move():
    # raw argmax: up (0.3); folded: right (3 × 0.2)
    probs = torch.tensor([[0.0, 0.0, 0.0, 0.05, 0.05, 0.3, 0.2, 0.2, 0.2] + [0.0] * 6]) + 1e-9
    logits = probs.log()
    chosen = chosen_actions(logits, "greedy")
    assert chosen.tolist() == [FOLDED_ACTIONS.index("right")]
    expected = torch.logsumexp(logits[:, [6, 7, 8]], -1)
    torch.testing.assert_close(target_logits(logits, "greedy", chosen), expected)


# -- the eval's rows ---------------------------------------------------------------------------
def test_cross_maze_spectrum_matches_the_svd_and_does_not_grow_with_the_maze_count():
    from shardlab.evals.maze.saliency_pca import CrossMazeSpectrum

    grad = torch.randn(7, 2, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    part = CrossMazeSpectrum(grad)
    s = torch.linalg.svdvals(grad.reshape(7, -1))
    for k in range(3):
        assert part.sigma(k).value == pytest.approx(float(s[k]) / 7 ** 0.5, rel=1e-9)
    assert part.top1_energy().value == pytest.approx(float(s[0] ** 2 / (s ** 2).sum()), rel=1e-9)
    assert part.effective_rank().value == pytest.approx(effective_rank(s), rel=1e-9)
    energy = (grad ** 2).sum((0, 2, 3))
    assert part.channel_share(1).value == pytest.approx(float(energy[1] / energy.sum()), rel=1e-9)
    # every maze twice: the same population, the same numbers (σ of G itself would grow by √2)
    twice = CrossMazeSpectrum(torch.cat([grad, grad]))
    assert twice.sigma(0).value == pytest.approx(part.sigma(0).value, rel=1e-9)
    row = part.sigma(0)
    assert row.method == "bootstrap" and row.n == 7 and row.unit == "mazes" and row.ci_low < row.ci_high


def test_the_eval_rows_match_the_svd_of_the_stacked_gradients(tmp_path):
    from omegaconf import OmegaConf

    from shardlab.evals.maze.common import policy_input, train_env
    from shardlab.evals.maze.inputs import interp_mazes
    from shardlab.evals.maze.saliency_pca import SaliencyPCA
    from shardlab.evals.suite.context import EvalContext
    from plain_impala import peaked_policy
    from tiny_suites import assert_rows_have_intervals

    train_config = OmegaConf.create({"env": {"obs": "grid", "distribution_mode": "easy", "max_maze_size": 7}})
    policy = peaked_policy(seed=1, image_size=15, gain=30.0)
    config = SaliencyPCA.Config(mazes=6, mouse="random", layers=[LAYER], top_k=2)
    result = SaliencyPCA(config).run(EvalContext(policy, train_config, str(tmp_path), seed=3, progress=False))
    metrics = {m.name: m for m in result.metrics}
    x = policy_input(policy, [m.state for m in interp_mazes(train_env(train_config), 6, 3, "random")], "grid")
    grads = gradients(policy.double(), x.double(), [INPUT, LAYER])
    for name, label in ((INPUT, "input"), (LAYER, "block2.res1.resadd_out")):
        matrix = grads[name].reshape(6, -1)
        s = torch.linalg.svdvals(matrix)
        for k in range(2):
            assert metrics[f"{label}/sigma{k + 1}"].value == pytest.approx(float(s[k]) / 6 ** 0.5, rel=1e-4)
        assert metrics[f"{label}/top1_energy"].value == pytest.approx(float(s[0] ** 2 / (s ** 2).sum()), rel=1e-4)
        energy = (grads[name] ** 2).sum((0, 2, 3))
        if name == INPUT:
            for channel, channel_name in enumerate(("wall", "mouse", "cheese")):
                assert metrics[f"input/channel_share/{channel_name}"].value == pytest.approx(
                    float(energy[channel] / energy.sum()), rel=1e-4, abs=1e-9)
        else:
            top = int(energy.argmax())
            assert metrics[f"{label}/channel_share/c{top}"].value == pytest.approx(float(energy[top] / energy.sum()),
                                                                                   rel=1e-4)
            assert "leans high" in metrics[f"{label}/channel_share/c{top}"].note
        assert metrics[f"{label}/sigma1"].n == 6 and metrics[f"{label}/sigma1"].method == "bootstrap"
    assert_rows_have_intervals(result.metrics)
