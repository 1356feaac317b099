"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test with one intra-op torch thread, then restore the previous count.

    The unit tests use tiny tensors, for which one thread is fastest; with one thread per core,
    torch's OpenMP workers spin against anything else running on a 2-core machine (say, a
    training run) and building a scale-1 ImpalaPolicy (orthogonal init) takes ~2 s instead of
    ~30 ms. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def template() -> bytes:
    """A hard-mode procgen maze state to build hand-made mazes into."""
    from envs.maze import MazeEnv, MazeEnvConfig

    env = MazeEnv(MazeEnvConfig(num_envs=1, distribution_mode="hard", rand_region=None))
    yield env.get_state(0)
    env.close()
