"""``shardlab eval RUN_DIR``: a suite over a run's checkpoints, ``--every``, last.ckpt, resuming,
sweep.json and sweep.png, exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch

from shardlab import cli as shardlab
from shardlab.evals.suite import evaluator, sweep
from shardlab.evals.suite.sweep import Point, run_checkpoints, select_every
from tiny_suites import sweep_args

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = [32, 64, 96, 128]  # 2 envs × 16 steps per iteration, a checkpoint every 32 env steps
HEADLINE = ["goal_misgeneralization.p_neither", "goal_misgeneralization.p_cheese",
            "goal_misgeneralization.in_region/p_cheese", "goal_misgeneralization.gap/p_cheese"]


@pytest.fixture(scope="module")
def run_dir(sweep_run) -> str:
    """A 128-env-step run of maze_ppo_cpu with four kept step checkpoints (conftest.py's sweep_run,
    shared with tests/test_sharded_sweep.py; only read)."""
    return sweep_run[0]


@pytest.fixture(scope="module")
def suite(sweep_run) -> str:
    """The goal_misgeneralization suite on 8 mazes (tiny_suites.GOAL_MISGENERALIZATION)."""
    return sweep_run[1]


def _sweep(run: str, suite: str, out, *extra: str) -> int:
    return shardlab.main(sweep_args(run, suite, out, *extra))


@pytest.fixture(scope="module")
def swept(sweep_whole) -> str:
    """The sweep of every checkpoint of ``run_dir``, done once (conftest.py's sweep_whole, shared
    with tests/test_sharded_sweep.py); tests that change it copy it."""
    return sweep_whole


def _sha(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _counting(monkeypatch) -> list[str]:
    """Record the checkpoints evaluator.run is asked to evaluate (and still run them)."""
    calls, real = [], evaluator.run

    def counted(request):
        calls.append(os.path.basename(request.checkpoint))
        return real(request)

    monkeypatch.setattr(evaluator, "run", counted)
    return calls


def test_sweep_evaluates_every_checkpoint(run_dir, swept, capsys):
    folders = sorted(name for name in os.listdir(swept) if name.startswith("step-"))
    assert folders == [f"step-{step:012d}" for step in STEPS]
    document = json.loads(open(os.path.join(swept, "sweep.json")).read())
    assert document["headline"] == HEADLINE and document["limit"] == 2 and document["every"] is None
    rows = document["rows"]
    assert [row["step"] for row in rows] == STEPS
    for row, folder in zip(rows, folders):
        assert row["checkpoint"] == os.path.join(run_dir, "checkpoints", f"{folder}.ckpt")
        assert row["sha256"] == _sha(row["checkpoint"]) and row["exit_code"] == 0 and row["evaluated"]
        results = json.loads(open(row["results"]).read())
        assert row["results"] == os.path.join(swept, folder, "results.json")
        assert results["checkpoint_sha256"] == row["sha256"] and results["train_steps"] == row["step"]
        assert os.path.isfile(os.path.join(swept, folder, "junit.xml"))
        assert list(row["metrics"]) == HEADLINE
        values = {f"{r['eval']}.{r['name']}": r for r in results["results"]}
        for key, metric in row["metrics"].items():
            assert metric == {field: values[key][field] for field in ("value", "stderr", "ci_low", "ci_high", "n")}
            assert metric["n"] == 2 and metric["ci_low"] <= metric["value"] <= metric["ci_high"]
    with open(os.path.join(swept, "sweep.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_an_interrupted_sweep_evaluates_only_what_is_missing(run_dir, suite, swept, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    shutil.copytree(swept, out)
    # interrupted while evaluating the second checkpoint: its results.json never got written
    os.remove(out / "step-000000000064" / "results.json")
    kept = {step: os.stat(out / f"step-{step:012d}" / "results.json").st_mtime_ns for step in (32, 96, 128)}
    calls = _counting(monkeypatch)
    capsys.readouterr()
    assert _sweep(run_dir, suite, out) == 0
    assert calls == ["step-000000000064.ckpt"]
    for step, mtime in kept.items():
        assert os.stat(out / f"step-{step:012d}" / "results.json").st_mtime_ns == mtime
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [(row["step"], row["evaluated"]) for row in rows] == [(32, False), (64, True), (96, False), (128, False)]
    assert rows[1]["metrics"] == json.loads(open(os.path.join(swept, "sweep.json")).read())["rows"][1]["metrics"]
    assert len([line for line in capsys.readouterr().err.splitlines() if line.startswith("sweep [")]) == 4
    # a complete sweep is not evaluated again at all; another checkpoint file at a step is
    calls.clear()
    assert _sweep(run_dir, suite, out) == 0 and calls == []
    results = out / "step-000000000096" / "results.json"
    document = json.loads(results.read_text())
    results.write_text(json.dumps({**document, "checkpoint_sha256": "0" * 64}))
    assert _sweep(run_dir, suite, out) == 0 and calls == ["step-000000000096.ckpt"]


def test_every_takes_the_first_checkpoint_at_or_after_each_multiple(run_dir, suite, swept, tmp_path, monkeypatch):
    points = [Point(step, f"step-{step}", str(step)) for step in (30, 64, 100, 250, 260)]
    # multiples 0, 64, 128, 192, 256 → 30, 64, 250, 250, 260
    assert [p.step for p in select_every(points, 64)] == [30, 64, 250, 260]
    assert [p.step for p in select_every(points, 100)] == [30, 100, 250]
    assert [p.step for p in select_every(points, 1000)] == [30]
    assert select_every(points, None) == points
    out = tmp_path / "out"
    shutil.copytree(swept, out)
    os.remove(out / "sweep.json")
    calls = _counting(monkeypatch)
    assert _sweep(run_dir, suite, out, "--every", "64") == 0 and calls == []  # all three are done already
    document = json.loads((out / "sweep.json").read_text())
    assert document["every"] == 64 and [row["step"] for row in document["rows"]] == [32, 64, 128]


def test_last_ckpt_only_when_no_step_file_holds_its_step(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)  # last.ckpt, a hard link to the newest step file, becomes a copy
    folder = run / "checkpoints"
    assert [(p.step, os.path.basename(p.path)) for p in run_checkpoints(str(run))] == \
        [(step, f"step-{step:012d}.ckpt") for step in STEPS]  # same sha256 as step-128
    state = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    torch.save({**state, "resaved": 1}, folder / "last.ckpt")  # other bytes, same stored step
    assert [p.step for p in run_checkpoints(str(run))] == STEPS
    os.remove(folder / "step-000000000128.ckpt")  # pruned by hand: only last.ckpt holds step 128
    points = run_checkpoints(str(run))
    assert [(p.step, os.path.basename(p.path)) for p in points] == \
        [(32, "step-000000000032.ckpt"), (64, "step-000000000064.ckpt"), (96, "step-000000000096.ckpt"),
         (128, "last.ckpt")]
    assert points[-1].sha256 == _sha(str(folder / "last.ckpt")) and points[-1].folder == "step-000000000128"


def test_exit_code_is_the_worst_checkpoints(run_dir, suite, tmp_path, monkeypatch, capsys):
    codes = iter([0, 1, 2, 0])  # the third checkpoint is refused: a failure once others have run
    monkeypatch.setattr(evaluator, "run", lambda request: next(codes))
    out = tmp_path / "out"
    assert _sweep(run_dir, suite, out) == 1
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [row["exit_code"] for row in rows] == [0, 1, 1, 0] and all(row["results"] is None for row in rows)
    # refused at the first evaluation: bad input, nothing written
    monkeypatch.setattr(evaluator, "run", lambda request: 2)
    assert _sweep(run_dir, suite, tmp_path / "refused") == 2 and not (tmp_path / "refused").exists()


def _bad_run_dirs(run_dir, tmp_path):
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    plain = tmp_path / "plain"
    plain.mkdir()
    ckpt = os.path.join(run_dir, "checkpoints", "last.ckpt")
    return {"no checkpoints": [str(empty)], "not a run": [str(plain)], "every without a run": [ckpt, "--every", "64"],
            "bad override": [run_dir, "goal_misgeneralization.nope=1"], "recipe": [run_dir, "--recipe", "maze_demo"],
            "zero every": [run_dir, "--every", "0"]}


@pytest.mark.parametrize("problem", ["no checkpoints", "not a run", "every without a run", "bad override", "recipe",
                                     "zero every"])
def test_bad_input_exits_2_with_one_line_before_anything_runs(run_dir, suite, tmp_path, monkeypatch, capsys, problem):
    calls = _counting(monkeypatch)
    target, *extra = _bad_run_dirs(run_dir, tmp_path)[problem]
    capsys.readouterr()
    try:
        code = _sweep(target, suite, tmp_path / "out", *extra)
    except SystemExit as exc:  # argparse refuses --every 0 itself
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0], err
    assert calls == [] and not (tmp_path / "out").exists()


def test_sweep_png_leaves_no_pyplot_figures(swept, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    document = json.loads(open(os.path.join(swept, "sweep.json")).read())
    sweep.plot_sweep(document["rows"], document["headline"], document["thresholds"], str(tmp_path / "again.png"))
    assert plt.get_fignums() == before and (tmp_path / "again.png").stat().st_size > 0
