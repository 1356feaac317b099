"""local_forward: the windowed IMPALA forward equals the plain one, hooks and fallbacks included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shardlab.envs import maze_state
from shardlab.envs.maze_build import parse_ascii, with_maze
from shardlab.evals.maze.vector_field import field_observations, mouse_squares, policy_probs, vector_field
from shardlab.models import impala_local
from shardlab.models.hooks import add, hooked
from shardlab.models.impala import ImpalaPolicy, preprocess
from shardlab.models.impala_local import local_forward

LAYER = "embedder.block2.res1.resadd_out"
MAZE = """
#.......#
#.#####.#
#.#C..#.#
#.#.#.#.#
#...#...#
###.###.#
#.......#
#.#####.#
M.......#
"""


def _policy(seed: int = 0, **kwargs) -> ImpalaPolicy:
    torch.manual_seed(seed)
    policy = ImpalaPolicy(scale=1, **kwargs).eval()
    # published-looking weights: the orthogonal init's tiny policy head hides differences
    with torch.no_grad():
        policy.fc_policy.weight.normal_(0, 0.02)
    return policy.to(memory_format=torch.channels_last)


def _batch(n: int = 40, seed: int = 0, box: int = 5) -> torch.Tensor:
    """A random background with a random box of new pixels per image, corners and edges included."""
    g = torch.Generator().manual_seed(seed)
    background = torch.rand(1, 3, 64, 64, generator=g)
    x = background.repeat(n, 1, 1, 1)
    corners = [(0, 0), (0, 64 - box), (64 - box, 0), (64 - box, 64 - box)]
    for i in range(n):
        y, x0 = corners[i] if i < 4 else torch.randint(0, 64 - box + 1, (2,), generator=g).tolist()
        x[i, :, y:y + box, x0:x0 + box] = torch.rand(3, box, box, generator=g)
    return x.contiguous(memory_format=torch.channels_last)


class _Count:
    """Counts the windowed paths taken (calls of the paste into the background)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls, paste = 0, impala_local._paste

        def counted(*args):
            self.calls += 1
            return paste(*args)
        monkeypatch.setattr(impala_local, "_paste", counted)


@pytest.mark.parametrize("box", [1, 5, 9])
def test_local_forward_equals_the_plain_forward(monkeypatch, box):
    count = _Count(monkeypatch)
    policy, x = _policy(), _batch(box=box)
    with torch.inference_mode():
        logits, values = policy(x)
        local_logits, local_values = local_forward(policy, x)
    assert count.calls == 1
    torch.testing.assert_close(local_logits, logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(local_values, values, atol=1e-5, rtol=1e-4)


def test_local_forward_keeps_hooks_after_the_windows(monkeypatch):
    """A cache and an edit at block2 still see (and change) every image's activations."""
    count = _Count(monkeypatch)
    policy, x = _policy(1), _batch(seed=1)
    vector = torch.randn(1, 32, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        with hooked(policy, edits={LAYER: add(vector, 2.0)}, cache=[LAYER]) as plain_acts:
            plain = policy(x)
        with hooked(policy, edits={LAYER: add(vector, 2.0)}, cache=[LAYER]) as acts:
            local = local_forward(policy, x)
    assert count.calls == 1
    torch.testing.assert_close(acts[LAYER], plain_acts[LAYER], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(local[0], plain[0], atol=1e-5, rtol=1e-4)


def test_an_edit_inside_the_first_block_stops_the_windows_before_it(monkeypatch):
    count = _Count(monkeypatch)
    policy, x = _policy(5), _batch(seed=5)
    edit = {"embedder.block1.res1.resadd_out": add(torch.randn(1, 16, 32, 32), 0.5)}
    with torch.inference_mode(), hooked(policy, edits=edit):
        local, plain = local_forward(policy, x), policy(x)
    assert count.calls == 1  # the conv + pool windowed, the edited residual block run whole
    torch.testing.assert_close(local[0], plain[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(local[1], plain[1], atol=1e-5, rtol=1e-4)


def test_local_forward_falls_back_where_windows_do_not_apply(monkeypatch):
    count = _Count(monkeypatch)
    x, policy = _batch(seed=2), _policy(2)
    sparse = _policy(2, activation="kwta", activation_options={"percent_on": 0.25})  # k-WTA is not local
    with torch.inference_mode():
        edit = {"embedder.block1.maxpool_out": add(torch.ones(1, 16, 32, 32), 0.5)}
        with hooked(policy, edits=edit):  # an edit at the first stage: the whole forward
            torch.testing.assert_close(local_forward(policy, x)[0], policy(x)[0])
        different = torch.rand(40, 3, 64, 64)  # no shared background
        torch.testing.assert_close(local_forward(policy, different)[0], policy(different)[0])
        torch.testing.assert_close(local_forward(sparse, x)[0], sparse(x)[0])
        torch.testing.assert_close(local_forward(policy, x[:4])[0], policy(x[:4])[0])  # too few images
    assert count.calls == 0
    grads = local_forward(policy, x[:20])  # gradients on: the plain forward (autograd through it)
    assert grads[0].requires_grad and count.calls == 0


def test_vector_field_of_a_procgen_maze_matches_the_plain_forward(monkeypatch, template):
    """The eval's RGB field (one procgen maze, the mouse on every square) through both forwards."""
    count = _Count(monkeypatch)
    inner, mouse = parse_ascii(MAZE)
    state = with_maze(template, inner, mouse)
    policy = _policy(4)
    images = field_observations(state, "rgb")
    assert len(images) == len(mouse_squares(maze_state.inner_grid(state).copy())) >= impala_local.MIN_BATCH
    plain = policy_probs(policy, images)
    field = vector_field(policy, state, obs="rgb")
    assert count.calls == 1
    np.testing.assert_allclose(field.probs, plain, atol=1e-6)
    assert np.abs(plain - plain.mean(0)).max() > 1e-3  # the squares differ: the comparison has teeth
    with torch.inference_mode():
        x = preprocess(torch.from_numpy(images))
        torch.testing.assert_close(local_forward(policy, x)[1], policy(x)[1], atol=1e-5, rtol=1e-4)
