"""The one ``shardlab`` command: every subcommand listed, names for shipped recipes and suites,
`list`, `config`, `--version`, comma-separated `--only`, and one-line exit-2 errors that write nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

import shardlab
from shardlab import cli
from shardlab import configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("train", "resume", "collect", "eval", "list", "config")


class Ran:
    """What an in-process ``shardlab`` run returned and printed to stdout and stderr."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_here(capsys, monkeypatch, cwd, *argv: str) -> Ran:
    """``shardlab ARGV`` in this process, from ``cwd`` (argparse errors, --help and --version exit
    through SystemExit, whose code is the process's exit status)."""
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
    captured = capsys.readouterr()
    return Ran(code, captured.out, captured.err)


def test_help_lists_every_subcommand_and_version_prints(capsys, monkeypatch):
    """In-process (argparse prints and exits through SystemExit); tests/test_bad_input.py runs
    ``python -m shardlab`` as a real process."""
    out = run_here(capsys, monkeypatch, ROOT, "--help")
    assert out.returncode == 0
    for command in COMMANDS:
        assert f"    {command} " in out.stdout, command
    version = run_here(capsys, monkeypatch, ROOT, "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"shardlab {shardlab.__version__}"


def test_import_shardlab_is_light():
    """`import shardlab` and reading a recipe by name pull in neither torch nor an env library."""
    code = ("import sys, shardlab; from shardlab import configs; configs.resolve('recipe', 'maze_demo'); "
            "print(sorted(m for m in ('torch', 'procgen', 'gym3', 'minigrid') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize("what,folder", [("recipes", "train"), ("suites", "evals")])
def test_list_prints_every_shipped_file_once(capsys, what, folder):
    assert cli.main(["list", what]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "configs", folder)) if f.endswith(".yaml"))
    assert [line.split()[0] for line in lines] == names
    assert all(len(line.split(None, 1)) == 2 for line in lines)  # every entry has its one-line summary


def test_list_evals_names_the_registered_evals(capsys):
    from shardlab.evals.suite.registry import available

    assert cli.main(["list", "evals"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == available() and "goal_misgeneralization" in available()


def test_config_prints_the_resolved_recipe_with_overrides(capsys):
    assert cli.main(["config", "maze_demo", "trainer.seed=7", "ppo.lr=0.001"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    recipe = yaml.safe_load(open(os.path.join(ROOT, "configs", "train", "maze_demo.yaml")))
    assert printed["trainer"]["seed"] == 7 and printed["ppo"]["lr"] == 0.001
    assert printed["env"]["max_maze_size"] == recipe["env"]["max_maze_size"]
    assert "gae_lambda" in printed["ppo"]  # defaults filled in, not just the file's keys


@pytest.mark.parametrize("argv,needle", [
    (["config", "maze_dem"], "did you mean maze_demo"),
    (["config", "maze_demo", "ppo.lrr=1"], "lrr"),
    (["train", "no/such/recipe.yaml"], "no such file"),
    (["eval", "x.ckpt", "--out", "OUT", "--limit", "-1"], "positive integer"),
    (["eval", "x.ckpt", "--out", "OUT", "--limit", "two"], "not an integer"),
    (["eval", "x.ckpt", "--out", "OUT", "--suite", "cii"], "did you mean ci"),
    (["eval", "x.ckpt", "--out", "OUT", "--device", "tpu"], "auto, cpu, cuda"),
    (["list", "things"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch, argv, needle):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    out = run_here(capsys, monkeypatch, tmp_path, *argv)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr
    assert os.listdir(tmp_path) == []


def test_eval_out_naming_a_file_is_refused_and_the_file_kept(tmp_path, tiny_maze_checkpoint, capsys):
    target = tmp_path / "results"
    target.write_text("keep me")
    assert cli.main(["eval", tiny_maze_checkpoint, "--out", str(target), "--limit", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file" in err[0]
    assert target.read_text() == "keep me"


def test_suite_by_name_and_only_as_a_comma_list(tmp_path, tiny_maze_checkpoint, monkeypatch):
    suite = tmp_path / "two.yaml"
    suite.write_text("seed: 0\nevals:\n  goal_misgeneralization: {mazes: 2}\n  relu_ablation: {mazes: 2}\n"
                     "  steering: {mazes: 2}\n")
    out = tmp_path / "out"
    code = cli.main(["eval", tiny_maze_checkpoint, "--suite", str(suite), "--out", str(out), "--no-progress",
                     "--only", "relu_ablation,steering"])
    assert code in (0, 1)
    document = json.loads((out / "results.json").read_text())
    assert {row["eval"] for row in document["results"]} == {"relu_ablation", "steering"}
    assert document["device"] == "cpu"
    # a shipped suite by its name, from a folder that has no configs/
    monkeypatch.chdir(tmp_path)
    named = tmp_path / "named"
    assert cli.main(["eval", tiny_maze_checkpoint, "--suite", "ci", "--out", str(named), "--limit", "1",
                     "--no-progress"]) in (0, 1)
    document = json.loads((named / "results.json").read_text())
    assert document["suite"] == os.path.join(configs.HERE, "evals", "ci.yaml")


def test_only_naming_an_eval_outside_the_suite_fails_before_writing(tmp_path, tiny_maze_checkpoint, capsys):
    out = tmp_path / "out"
    assert cli.main(["eval", tiny_maze_checkpoint, "--out", str(out), "--only", "goal_misgeneralization,steering"]) == 2
    assert "not in suite" in capsys.readouterr().err and not out.exists()


def test_train_a_recipe_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", "maze_ppo_cpu", "env.num_envs=2", "ppo.num_steps=16", "ppo.minibatch_size=32",
                     "ppo.epochs=1", "trainer.total_steps=32", "trainer.progress_bar=false",
                     "--run-dir", str(tmp_path / "run")])
    assert code == 0 and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["name"] == "maze_ppo_cpu"


def test_repository_paths_of_shipped_files_work_anywhere(tmp_path, monkeypatch):
    """README commands say configs/train/x.yaml; outside a checkout that still means the shipped x."""
    monkeypatch.chdir(tmp_path)
    assert configs.resolve("recipe", "configs/train/maze_demo.yaml") == os.path.join(
        configs.HERE, "train", "maze_demo.yaml")
    local = tmp_path / "mine.yaml"
    local.write_text("name: mine\n")
    assert configs.resolve("recipe", "mine.yaml") == "mine.yaml"  # an existing file wins


def test_recipe_that_is_not_text_run_dir_that_is_a_file_and_a_region_larger_than_the_world(tmp_path, capsys,
                                                                                           monkeypatch):
    run = lambda *argv, cwd: run_here(capsys, monkeypatch, cwd, *argv)  # noqa: E731
    binary = tmp_path / "recipe.yaml"
    binary.write_bytes(b"\xff\xfe\x00name: x\x80\x81")
    out = run("train", str(binary), cwd=str(tmp_path))
    assert out.returncode == 2 and "not UTF-8" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    occupied = tmp_path / "occupied"
    occupied.write_text("keep me")
    out = run("train", "maze_demo", "--run-dir", str(occupied / "run"), cwd=str(tmp_path))
    assert out.returncode == 2 and "is a file" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert occupied.read_text() == "keep me"
    out = run("train", "maze_demo", "env.rand_region=99", "--run-dir", str(tmp_path / "run"), cwd=str(tmp_path))
    assert out.returncode == 2 and "larger than the 15×15" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["occupied", "recipe.yaml"]


def test_eval_sends_metrics_and_figures_to_the_loggers_asked_for(tmp_path, tiny_maze_checkpoint, capsys, monkeypatch):
    import csv

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    assert cli.main(["eval", tiny_maze_checkpoint, "--out", str(out), "--limit", "1", "--no-progress",
                     "--loggers", "tensorboard,csv"]) in (0, 1)
    document = json.loads((out / "results.json").read_text())
    p_cheese = next(r["value"] for r in document["results"] if r["name"] == "p_cheese")
    with open(out / "csv" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[-1]["goal_misgeneralization/p_cheese"]) == pytest.approx(p_cheese)
    events = EventAccumulator(str(out / "tb"), size_guidance={"images": 0}).Reload()
    assert events.Scalars("goal_misgeneralization/p_cheese")[-1].value == pytest.approx(p_cheese)
    pngs = document["artifacts"]["goal_misgeneralization"]
    assert pngs and len(events.Tags()["images"]) == len(pngs)
    bad = run_here(capsys, monkeypatch, tmp_path, "eval", tiny_maze_checkpoint, "--out", str(tmp_path / "bad"),
                   "--loggers", "tensorboard,mlflow")
    assert bad.returncode == 2 and "mlflow" in bad.stderr and not (tmp_path / "bad").exists()
