"""finetune_to_cheese plays the checkpoint's own maze population: the region and the smallest and
largest maze size come from its training config (configs/train/maze_demo.yaml: 7×7 mazes only,
region 3), a checkpoint without a region is refused in one line, and a scripted cheese-seeker
reaches the target before any fine-tuning with P(cheese) = 1 on both maze sets."""

from __future__ import annotations

import re

import pytest

from shardlab import cli as shardlab
from shardlab.envs import maze_state
from shardlab.evals.maze.finetune_to_cheese import FinetuneToCheese
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.registry import EvalError
from shardlab.trainers.config import load_config
from shardlab.trainers.restore import load_oracle
from tiny_suites import assert_rows_have_intervals, record_finetune_episodes

RECIPE = "configs/train/maze_demo.yaml"
pytestmark = pytest.mark.usefixtures("one_thread")


def _run(tmp_path, monkeypatch, config, **options):
    """Run the eval on the cheese-seeker oracle; (metrics by name, every state list it played)."""
    played = record_finetune_episodes(monkeypatch)
    trained = load_oracle("cheese_seeker", config)
    ctx = EvalContext(trained.model, trained.config, str(tmp_path), seed=2, progress=False, train_steps=1_400_000)
    evaluation = FinetuneToCheese(FinetuneToCheese.Config(steps=1000, eval_every=500, **options))
    evaluation.check(trained.config)
    result = evaluation.run(ctx)
    return {m.name: m for m in result.metrics}, played, result


def test_eval_mazes_are_the_checkpoints_sizes_outside_its_region(tmp_path, monkeypatch):
    """maze_demo trains on 7×7 mazes only: no 5×5 (or 3×3) maze may be played, and every cheese is
    outside the top-right 3×3 region (the old code drew 3×3–7×7 mazes)."""
    cfg = load_config(RECIPE)
    _, played, _ = _run(tmp_path, monkeypatch, cfg, eval_mazes=12, confirm_mazes=12)
    states = [s for states in played for s in states]
    assert len(played) >= 3 and len(states) >= 36
    region = cfg.env.rand_region
    for state in states:
        size = maze_state.layout(state).maze_dim
        x, y = maze_state.cheese_square(state)
        assert size == 7, size
        assert min(x, y) < size - region, (x, y)


def test_region_comes_from_the_checkpoint_or_the_config(tmp_path, monkeypatch):
    """A region-0 checkpoint tests against the corner square only (the old code used 5), and
    the eval's own ``region`` overrides it."""
    for overrides, option, region in ((["env.rand_region=0"], {}, 0), (["env.rand_region=null"], {"region": 4}, 4)):
        _, played, _ = _run(tmp_path, monkeypatch, load_config(RECIPE, overrides), eval_mazes=6, confirm_mazes=6,
                            **option)
        cheese = [(maze_state.cheese_square(s), maze_state.layout(s).maze_dim) for states in played for s in states]
        assert all(min(x, y) < size - region for (x, y), size in cheese)
        if region == 0:  # only the corner square is excluded: some cheese sits in the old 5×5 region
            assert any(min(x, y) >= size - 5 for (x, y), size in cheese)


def test_a_checkpoint_without_region_is_refused_in_one_line(tmp_path, capsys):
    anywhere = load_config(RECIPE, ["env.rand_region=null"])
    with pytest.raises(EvalError, match=r"finetune_to_cheese\.region="):
        FinetuneToCheese(FinetuneToCheese.Config()).check(anywhere)
    FinetuneToCheese(FinetuneToCheese.Config(region=3)).check(anywhere)
    recipe = tmp_path / "anywhere.yaml"
    recipe.write_text(re.sub(r"^  rand_region: \d+$", "  rand_region: null", open(RECIPE).read(), flags=re.M))
    suite = tmp_path / "suite.yaml"
    suite.write_text("evals:\n  finetune_to_cheese: {steps: 1000, eval_mazes: 4}\n")
    capsys.readouterr()
    assert shardlab.main(["eval", "oracle:cheese_seeker", "--recipe", str(recipe), "--suite", str(suite),
                          "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "finetune_to_cheese.region=" in err[0], err


def test_the_cheese_seeker_reaches_the_target_at_step_zero(tmp_path, monkeypatch):
    metrics, played, result = _run(tmp_path, monkeypatch, load_config(RECIPE), eval_mazes=8, confirm_mazes=8)
    assert metrics["curve/p_cheese@0"].value == 1.0 and metrics["initial/p_cheese"].value == 1.0
    assert metrics["reached_target"].value == 1.0 and metrics["steps_to_target"].value == 0
    assert metrics["finetune_steps"].value == 0  # stopped before any fine-tuning
    for name in ("initial", "at_steps_to_target", "final"):
        row = metrics[f"confirmation/{name}/p_cheese"]
        assert row.value == 1.0 and row.n == 8 and row.ci_high == 1.0 and row.ci_low < 1.0  # Wilson, not width 0
        assert metrics[f"confirmation/{name}/p_corner"].value < 1.0
    assert metrics["confirmed"].value == 1.0
    assert [k for k in metrics if k.startswith("curve/")] == ["curve/p_cheese@0"]
    assert_rows_have_intervals(result.metrics)
