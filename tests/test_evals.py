"""The eval suite: registry and plugins, thresholds and exit codes, results.json and JUnit XML,
bad input, and goal_misgeneralization end to end on a tiny checkpoint."""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from xml.etree import ElementTree

import pytest

from shardlab import cli as shardlab
from shardlab.evals.suite import registry
from shardlab.evals.suite.results import SCHEMA_VERSION
from tiny_suites import GOAL_MISGENERALIZATION, assert_rows_have_intervals, record_finetune_episodes

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny forwards: one torch thread is fastest


@pytest.fixture(scope="module")
def checkpoint(tiny_maze_checkpoint) -> str:
    return tiny_maze_checkpoint


def _suite(tmp_path, text: str) -> str:
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


SUITE = GOAL_MISGENERALIZATION


@pytest.fixture(scope="module")
def suite_out(checkpoint, tmp_path_factory):
    """The output folder of ``shardlab eval CHECKPOINT --suite SUITE``, run once for the tests that
    only read what it wrote."""
    tmp = tmp_path_factory.mktemp("suite_run")
    out = tmp / "out"
    assert shardlab.main(["eval", checkpoint, "--suite", _suite(tmp, SUITE), "--out", str(out)]) == 0
    return out


def test_suite_passes_and_writes_results(suite_out):
    out = suite_out
    document = json.loads((out / "results.json").read_text())
    assert document["schema_version"] == SCHEMA_VERSION
    for key in ("checkpoint_sha256", "package_version", "git_commit", "time"):
        assert key in document
    rows = {row["name"]: row for row in document["results"]}
    for name in ("p_cheese", "p_corner", "p_neither", "mean_steps", "in_distribution/p_cheese", "in_region/p_cheese",
                 "gap/p_cheese", "decision/p_cheese", "decision/baseline_accuracy"):
        row = rows[name]
        assert row["eval"] == "goal_misgeneralization" and row["n"] == 8 and row["seed"] == 3
        assert row["config"]["mazes"] == 8
    assert rows["unpaired/gap/p_cheese"]["n"] == 16  # two independent samples of 8 mazes
    assert 0 <= rows["p_cheese"]["value"] <= 1 and rows["p_cheese"]["stderr"] is not None
    assert sum(r["n"] for k, r in rows.items() if re.fullmatch(r"p_cheese/quadrant=\w+", k)) == 8
    assert sum(r["n"] for k, r in rows.items() if re.fullmatch(r"p_cheese/quadrant=\w+/size=\d+", k)) == 8
    assert_rows_have_intervals(document["results"])
    assert rows["decision/baseline_accuracy"]["value"] >= 0.5
    total = rows["p_cheese"]["value"] + rows["p_neither"]["value"]
    assert total <= 1 + 1e-9  # neither excludes cheese
    suite = ElementTree.parse(out / "junit.xml").getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "1" and suite.get("failures") == "0"
    assert [case.get("name") for case in suite.iter("testcase")] == ["goal_misgeneralization"]


def test_greedy_rates_on_the_same_mazes(checkpoint, tmp_path):
    suite = _suite(tmp_path, SUITE.replace("decision_mazes: 8}", "decision_mazes: 8, also_greedy: true}"))
    out = tmp_path / "out"
    # 3 mazes a set: an untrained greedy policy mostly loops to the timeout
    assert shardlab.main(["eval", checkpoint, "--suite", suite, "--out", str(out), "--no-progress", "--limit", "3"]) == 0
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    for name in ("greedy/p_cheese", "greedy/p_corner", "greedy/in_distribution/p_cheese", "greedy/in_region/p_cheese",
                 "greedy/gap/p_cheese",
                 "greedy/decision/p_cheese", "greedy/decision/p_corner_first"):
        assert rows[name]["n"] == 3 and 0 <= rows[name]["value"] <= 1
    assert rows["decision/p_corner_first"]["n"] == 3


def test_results_are_reproducible(checkpoint, suite_out, tmp_path):
    """A second run of the module's suite run (suite_out) gives the same values."""
    suite = _suite(tmp_path, SUITE)
    values = [[(r["name"], r["value"]) for r in json.loads((suite_out / "results.json").read_text())["results"]]]
    assert shardlab.main(["eval", checkpoint, "--suite", suite, "--out", str(tmp_path / "b")]) == 0
    values.append([(r["name"], r["value"]) for r in json.loads((tmp_path / "b" / "results.json").read_text())["results"]])
    assert values[0] == values[1]


def test_missed_threshold_exits_1_with_a_table(checkpoint, tmp_path, capsys):
    suite = _suite(tmp_path, SUITE.replace("{max: 1.0}", "{min: 1.5}"))
    assert shardlab.main(["eval", checkpoint, "--suite", suite, "--out", str(tmp_path / "o"), "--limit", "1"]) == 1
    err = capsys.readouterr().err
    assert "thresholds missed" in err and "goal_misgeneralization.p_neither" in err and ">= 1.5" in err
    case = next(ElementTree.parse(tmp_path / "o" / "junit.xml").getroot().iter("testcase"))
    assert case.find("failure") is not None


@pytest.mark.parametrize("problem", ["missing", "corrupt", "unknown_eval", "bad_threshold", "bad_config",
                                     "bad_seed"])
def test_bad_input_exits_2(checkpoint, tmp_path, capsys, problem):
    ckpt, suite = checkpoint, _suite(tmp_path, SUITE)
    if problem == "missing":
        ckpt = str(tmp_path / "nope.ckpt")
    elif problem == "corrupt":
        ckpt = str(tmp_path / "corrupt.ckpt")
        with open(checkpoint, "rb") as handle:
            (tmp_path / "corrupt.ckpt").write_bytes(handle.read()[:1000])
    elif problem == "unknown_eval":
        suite = _suite(tmp_path, "evals:\n  goal_misgeneralisation: {}\n")
    elif problem == "bad_threshold":
        suite = _suite(tmp_path, "evals:\n  goal_misgeneralization: {}\nthresholds:\n  x.y: 3\n")
    elif problem == "bad_seed":
        suite = _suite(tmp_path, "seed: abc\nevals:\n  goal_misgeneralization: {}\n")
    else:
        suite = _suite(tmp_path, "evals:\n  goal_misgeneralization: {mazes: lots}\n")
    capsys.readouterr()
    assert shardlab.main(["eval", ckpt, "--suite", suite, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err
    if problem == "unknown_eval":
        assert "did you mean goal_misgeneralization" in err
    if problem in ("missing", "corrupt"):
        assert os.path.basename(ckpt) in err
    assert not (tmp_path / "o" / "results.json").exists()


@pytest.mark.parametrize("override, named", [("goal_misgeneralization.mazez=3", "mazez"),
                                             ("goal_misgeneralization.mazes=lots", "mazes"),
                                             ("steering.mazes=3", "steering"),
                                             ("goal_misgeneralization", "EVAL.KEY=VALUE")])
def test_bad_override_exits_2(checkpoint, tmp_path, capsys, override, named):
    capsys.readouterr()
    code = shardlab.main(["eval", checkpoint, "--suite", _suite(tmp_path, SUITE), "--out", str(tmp_path / "o"),
                          override])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and named in err
    assert not (tmp_path / "o").exists()


def test_override_changes_the_eval_config(checkpoint, tmp_path):
    out = tmp_path / "o"
    assert shardlab.main(["eval", checkpoint, "--suite", _suite(tmp_path, SUITE), "--out", str(out),
                          "goal_misgeneralization.mazes=3", "goal_misgeneralization.decision_mazes=1",
                          "--no-progress"]) == 0
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    assert rows["p_cheese"]["n"] == 3 and rows["decision/p_cheese"]["n"] == 1


def test_plugin_evals_are_discovered_through_entry_points(tmp_path, monkeypatch):
    package = tmp_path / "site"
    (package / "shardlab_plugin_demo").mkdir(parents=True)
    (package / "shardlab_plugin_demo" / "__init__.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass
        from shardlab.evals.suite.registry import register
        from shardlab.evals.suite.results import Result

        @register("plugin_constant")
        class Constant:
            @dataclass
            class Config:
                value: float = 0.25

            def __init__(self, config):
                self.config = config

            def run(self, ctx):
                result = Result()
                result.add("value", self.config.value)
                return result
    """))
    dist = package / "shardlab_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shardlab-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[shardlab.evals]\nconstant = shardlab_plugin_demo\n")
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.setattr(registry, "_loaded", False)
    assert "plugin_constant" in registry.available()
    assert registry.get("plugin_constant").Config().value == 0.25
    sys.modules.pop("shardlab_plugin_demo", None)
    registry.DECLARED.pop("plugin_constant", None)


def test_suite_writes_png_and_tensorboard_scalars(suite_out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = suite_out
    document = json.loads((out / "results.json").read_text())
    [png] = document["artifacts"]["goal_misgeneralization"]
    assert png.endswith(".png") and os.path.getsize(png) > 1000
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "goal_misgeneralization/p_cheese" in tags
    [scalar] = events.Scalars("goal_misgeneralization/p_cheese")
    row = next(r for r in document["results"] if r["name"] == "p_cheese")
    assert scalar.step == 128 and scalar.value == pytest.approx(row["value"])


def test_results_json_is_strict_json(tmp_path):
    from shardlab.evals.suite.results import write_json_atomic

    write_json_atomic(str(tmp_path / "r.json"), {"a": float("nan"), "b": [float("inf"), 1.5]})
    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=lambda c: pytest.fail(c)) \
        == {"a": None, "b": [None, 1.5]}


def test_eval_for_another_checkpoint_kind_exits_2(checkpoint, tmp_path, capsys):
    from tiny_suites import throwaway_eval

    def must_not_run(ctx):
        raise AssertionError("must not run")

    with throwaway_eval("needs_other_kind", must_not_run, kinds=("some_other_kind",)):
        suite = _suite(tmp_path, "evals:\n  goal_misgeneralization: {}\n  needs_other_kind: {}\n")
        capsys.readouterr()
        assert shardlab.main(["eval", checkpoint, "--suite", suite, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert "needs_other_kind" in err and "some_other_kind" in err and "is a ppo checkpoint" in err
        assert not (tmp_path / "o").exists()


def test_relative_weight_change_per_layer():
    import torch

    from shardlab.evals.maze.finetune_to_cheese import relative_weight_change

    before = {"a.weight": torch.tensor([3.0, 4.0]), "a.bias": torch.tensor([0.0]), "b.weight": torch.ones(4)}
    after = {"a.weight": torch.tensor([3.0, 4.0]), "a.bias": torch.tensor([5.0]), "b.weight": torch.ones(4)}
    assert relative_weight_change(before, after) == {"a": pytest.approx(1.0), "b": 0.0}


def test_finetune_confirmation_mazes_share_no_layout_with_the_selection_mazes():
    """No layout on both sides, and both sides keep the pool's mix of maze sizes (a confirmation
    set that merely skipped the selection set's layouts would lose most of the small mazes)."""
    from collections import Counter

    from shardlab.envs import maze_state
    from shardlab.envs.eval_mazes import eval_mazes
    from shardlab.evals.maze.splits import split_by_layout

    filters = dict(cheese="outside_region", region=2, min_size=3, max_size=7, mode="easy")
    selection, confirmation = split_by_layout(40, 40, 0, **filters)
    walls = lambda maze: (maze.maze_dim, (maze_state.inner_grid(maze.state) == maze_state.WALL).tobytes())
    assert len(selection) == len(confirmation) == 40
    assert not {walls(m) for m in selection} & {walls(m) for m in confirmation}
    pool = eval_mazes(160, 0, **filters)
    assert {m.state for m in selection + confirmation} <= {m.state for m in pool}
    # 3×3 mazes have four layouts: two go to each side
    small = lambda mazes: {walls(m) for m in mazes if m.maze_dim == 3}
    assert len(small(selection)) == len(small(confirmation)) == 2
    sizes = lambda mazes: Counter(m.maze_dim for m in mazes)
    for size in (3, 5, 7):
        assert abs(sizes(selection)[size] - sizes(confirmation)[size]) <= 8, (sizes(selection), sizes(confirmation))


def test_finetune_result_reports_the_selected_step_and_its_confirmation(tmp_path):
    from shardlab.evals.suite.context import EvalContext
    from shardlab.evals.maze.finetune_to_cheese import CurvePoint, FinetuneToCheese

    class Episode:
        def __init__(self, cheese: bool):
            self.reached_cheese, self.reached_corner = cheese, not cheese

    def point(steps: int, cheese: int, n: int = 4) -> CurvePoint:
        return CurvePoint(steps, cheese / n, 1 - cheese / n, [Episode(i < cheese) for i in range(n)])
    evaluation = FinetuneToCheese(FinetuneToCheese.Config(target=0.75))
    ctx = EvalContext(model=None, train_config=None, out_dir=str(tmp_path), train_steps=1000)
    curve = [point(0, 1), point(100, 3), point(200, 4)]  # the selection set reaches 3/4 at 100 steps
    confirmation = {"initial": point(0, 0, 5), "at_steps_to_target": point(100, 2, 5), "final": point(200, 4, 5)}
    rows = {m.name: m for m in evaluation._result(ctx, curve, {"a": 0.5}, True, 5, confirmation).metrics}
    assert rows["steps_to_target"].value == 100 and rows["steps_to_target/fraction_of_training"].value == 0.1
    assert rows["confirmation/at_steps_to_target/p_cheese"].value == 0.4
    assert rows["confirmation/at_steps_to_target/p_cheese"].n == 5
    assert rows["confirmation/at_steps_to_target/p_cheese"].stderr == pytest.approx((0.4 * 0.6 / 5) ** 0.5)
    assert rows["confirmation/final/p_cheese"].value == 0.8 and rows["confirmation/initial/p_cheese"].value == 0.0
    assert rows["confirmed"].value == 0.0  # 0.4 < 0.75: the step chosen on the selection set does not hold
    assert rows["steps_to_target"].kind == "setting"
    assert rows["confirmation/at_steps_to_target/p_cheese"].method == "wilson"
    assert_rows_have_intervals(rows.values())
    confirmation["at_steps_to_target"] = point(100, 4, 5)
    rows = {m.name: m for m in evaluation._result(ctx, curve, {"a": 0.5}, True, 5, confirmation).metrics}
    assert rows["confirmed"].value == 1.0


@pytest.mark.parametrize("reward", ["cheese", "avoid_cheese"])
def test_finetune_to_cheese_end_to_end(checkpoint, tmp_path, monkeypatch, reward):
    from shardlab.envs import maze_state
    from shardlab.envs.eval_mazes import eval_mazes
    from shardlab.evals.maze.splits import split_by_layout

    played = record_finetune_episodes(monkeypatch)
    suite = _suite(tmp_path, f"""
        seed: 1
        evals:
          finetune_to_cheese: {{steps: 256, eval_every: 128, eval_mazes: 4, reward: {reward}, stop_at_target: false}}
    """)
    out = tmp_path / "out"
    assert shardlab.main(["eval", checkpoint, "--suite", suite, "--out", str(out), "--no-progress"]) == 0
    document = json.loads((out / "results.json").read_text())
    rows = {row["name"]: row["value"] for row in document["results"]}
    # the curve plays the selection mazes; with the cheese reward the confirmation mazes (no shared
    # layout) are played before fine-tuning and after it
    filters = dict(cheese="outside_region", region=5, max_size=9, mode="easy")
    selection = [m.state for m in (split_by_layout(4, 4, 1, **filters)[0] if reward == "cheese"
                                   else eval_mazes(4, 1, **filters))]
    walls = lambda state: (maze_state.inner_grid(state) == maze_state.WALL).tobytes()
    curve_plays = [states for states in played if states == selection]
    assert len(curve_plays) == 3
    others = [states for states in played if states != selection]
    if reward == "cheese":
        assert len(others) >= 2 and all(states == others[0] for states in others)
        assert not {walls(s) for s in selection} & {walls(s) for s in others[0]}
        assert 0 <= rows["confirmation/initial/p_cheese"] <= 1 and 0 <= rows["confirmation/final/p_cheese"] <= 1
        assert rows["confirmed"] in (0.0, 1.0)
    else:
        assert others == [] and "confirmed" not in rows
    assert [k for k in rows if k.startswith("curve/")] == ["curve/p_cheese@0", "curve/p_cheese@128",
                                                          "curve/p_cheese@256"]
    assert rows["finetune_steps"] == 256
    assert rows["initial/p_cheese"] == rows["curve/p_cheese@0"]
    changes = {k: v for k, v in rows.items() if k.startswith("weight_change/")}
    assert "weight_change/embedder.block2.res1.conv1" in changes and "weight_change/fc_policy" in changes
    assert all(v > 0 for v in changes.values())  # PPO moved every layer
    names = [os.path.basename(p) for p in document["artifacts"]["finetune_to_cheese"]]
    if reward == "cheese":
        assert "reached_target" in rows and names == ["learning_curve.png", "weight_change.png"]
    else:
        assert "reached_target" not in rows and "end_squares.png" in names
        assert 0 <= rows["end/in_top_right_region"] <= 1 and rows["end/mean_length"] > 0
    # the fine-tuning run trained from the checkpoint's weights with the cheese anywhere
    config = (out / "finetune_to_cheese" / "run" / "config.yaml").read_text()
    assert "rand_region: null" in config
    assert ("cheese_reward: -10.0" in config) == (reward == "avoid_cheese")
    assert_rows_have_intervals(document["results"])


def test_finetune_to_cheese_rejects_bad_config(checkpoint, tmp_path, capsys):
    suite = _suite(tmp_path, "evals:\n  finetune_to_cheese: {reward: sometimes}\n")
    capsys.readouterr()
    assert shardlab.main(["eval", checkpoint, "--suite", suite, "--out", str(tmp_path / "o")]) == 2
    assert "reward must be one of cheese, avoid_cheese" in capsys.readouterr().err


def test_checkpoint_whose_weights_do_not_fit_its_config_exits_2(checkpoint, tmp_path, capsys):
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["hyper_parameters"]["config"]["model"]["scale"] = 2  # config and weights disagree
    bad = tmp_path / "mismatch.ckpt"
    torch.save(state, bad)
    capsys.readouterr()
    assert shardlab.main(["eval", str(bad), "--suite", _suite(tmp_path, SUITE), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mismatch.ckpt" in err and "shape mismatch" in err
    assert not (tmp_path / "o").exists()
