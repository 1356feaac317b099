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
    from shardlab.envs.maze import MazeEnv, MazeEnvConfig

    env = MazeEnv(MazeEnvConfig(num_envs=1, distribution_mode="hard", rand_region=None))
    yield env.get_state(0)
    env.close()


def made_once(tmp_path_factory, name: str, make) -> str:
    """``make(folder)`` run once per test session, also across pytest-xdist's worker processes (the
    first worker makes it under a file lock, the others wait and reuse it); the folder's path. Only
    for outputs the tests never change."""
    import fcntl
    import os
    import shutil

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # one run's workers share it
    folder = shared / name
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not folder.exists():
            partial = shared / f"{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            make(partial)
            partial.rename(folder)  # whole or not at all: a worker that died half-way leaves no folder
    return str(folder)


@pytest.fixture(scope="session")
def tiny_maze_checkpoint(tmp_path_factory) -> str:
    """A 128-env-step checkpoint of configs/train/maze_ppo_cpu.yaml (4 envs × 32 steps), trained
    once per test session (shared by the xdist workers) for the eval tests, which only read it."""
    import os

    from shardlab import cli as shardlab

    recipe = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "configs", "train", "maze_ppo_cpu.yaml")

    def train(folder) -> None:
        assert shardlab.main(["train", recipe, "env.num_envs=4", "ppo.num_steps=32", "ppo.minibatch_size=64",
                              "ppo.epochs=1", "trainer.total_steps=128", "trainer.progress_bar=false",
                              "--run-dir", str(folder / "run")]) == 0
    return os.path.join(made_once(tmp_path_factory, "tiny_maze", train), "run", "checkpoints", "last.ckpt")


@pytest.fixture(scope="session")
def sweep_run(tmp_path_factory) -> tuple[str, str]:
    """(run directory, suite file): a 128-env-step run of maze_ppo_cpu with a step checkpoint every
    32 env steps (tests/tiny_suites.py SWEEP_PPO: four of them) and the goal_misgeneralization suite
    the sweep tests evaluate it with; made once per test session for tests/test_sweep.py and
    tests/test_sharded_sweep.py, which only read them."""
    import os
    import textwrap

    from tiny_suites import GOAL_MISGENERALIZATION, train_sweep_run

    def make(folder) -> None:
        (folder / "suite.yaml").write_text(textwrap.dedent(GOAL_MISGENERALIZATION))
        train_sweep_run(folder / "run", 128, "trainer.loggers=[]")
    shared = made_once(tmp_path_factory, "sweep_run", make)
    return os.path.join(shared, "run"), os.path.join(shared, "suite.yaml")


@pytest.fixture(scope="session")
def sweep_whole(tmp_path_factory, sweep_run) -> str:
    """The out folder of the unsharded sweep of ``sweep_run`` (``shardlab eval RUN --suite SUITE
    --limit 2``, in this process), made once per test session; tests that change it copy it.

    sweep.json names its out folder (the rows' results paths), so the sweep writes straight into a
    folder of its own beside made_once's, which only marks it finished (a worker that died half-way
    leaves no marker, and the next one sweeps afresh)."""
    import os
    import shutil

    from tiny_suites import sweep_args

    run, suite = sweep_run
    base = tmp_path_factory.getbasetemp()
    out = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "sweep_whole.out"

    def make(folder) -> None:
        from shardlab import cli

        shutil.rmtree(out, ignore_errors=True)
        assert cli.main(sweep_args(run, suite, out)) == 0
    made_once(tmp_path_factory, "sweep_whole", make)
    return str(out)


@pytest.fixture(scope="session")
def warm_python(tmp_path_factory):
    """Forks real `python -m shardlab` processes from an interpreter that has imported torch and
    Lightning already (tests/warm_python.py): seconds less start-up per process."""
    from warm_python import WarmPython

    server = WarmPython(str(tmp_path_factory.mktemp("warm")))
    yield server
    server.close()


SLOW_CATEGORIES = ("wheel", "ddp", "gpu-check", "ci-workflow", "benchmark", "browser")


def pytest_configure(config):
    """Register the ``slow`` marker: `make test-fast` (``-m "not slow"``) leaves these out."""
    config.addinivalue_line("markers", "slow(category): a slow test; category is one of " + ", ".join(SLOW_CATEGORIES))


def pytest_collection_modifyitems(config, items):
    """A ``slow`` marker must name its category, so the fast tier leaves out only what it should."""
    for item in items:
        for mark in item.iter_markers("slow"):
            if len(mark.args) != 1 or mark.args[0] not in SLOW_CATEGORIES:
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.slow needs one category of "
                                        f"{', '.join(SLOW_CATEGORIES)}, got {mark.args!r}")
