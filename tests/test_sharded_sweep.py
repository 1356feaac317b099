"""A sweep split over processes: ``--shard K/N``, a SLURM job array's and torchrun's variables, the
parts each shard writes, the merge (by the last shard or ``--merge``) and its refusals."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from shardlab import cli as shardlab
from shardlab.evals.suite import base, evaluator
from shardlab.evals.suite.request import EvalRequest, parse_shard, shard_from_env
from tiny_suites import ROOT, sweep_args, throwaway_eval

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = [32, 64, 96, 128]  # four checkpoints: shard 0 of 3 takes two, shards 1 and 2 one each


@pytest.fixture(scope="module")
def run_dir(sweep_run) -> str:
    """A 128-env-step run with four step checkpoints (conftest.py's sweep_run, shared with
    tests/test_sweep.py; only read)."""
    return sweep_run[0]


@pytest.fixture(scope="module")
def suite(sweep_run) -> str:
    """The goal_misgeneralization suite on 8 mazes (tiny_suites.GOAL_MISGENERALIZATION)."""
    return sweep_run[1]


def _args(run: str, suite: str, out) -> list[str]:
    return sweep_args(run, suite, out)


def _launcher_free_env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items()
            if name not in evaluator.LAUNCHER_VARIABLES and not name.startswith(evaluator.LAUNCHER_PREFIXES)}


@pytest.fixture(scope="module")
def sharded(run_dir, suite, tmp_path_factory, warm_python, request) -> tuple[str, str]:
    """The unsharded sweep (in this process: conftest.py's sweep_whole, shared with
    tests/test_sweep.py) and the same sweep as three shard processes (forked from a warm
    interpreter, tests/warm_python.py): one told ``--shard 0/3``, one a SLURM array task, one a
    torchrun rank."""
    parts = tmp_path_factory.mktemp("parts") / "out"
    env = {**_launcher_free_env(), "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    launches = [(["--shard", "0/3"], {}),
                ([], {"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "3",
                      "SLURM_ARRAY_TASK_STEP": "1", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "1"}),
                ([], {"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                      "MASTER_PORT": "29555"})]
    processes = [warm_python.start([*_args(run_dir, suite, parts), *extra], ROOT, {**env, **variables})
                 for extra, variables in launches]
    whole = request.getfixturevalue("sweep_whole")  # swept meanwhile, unless already done
    outputs = []
    for process in processes:
        assert process.wait(900) == 0, process.stderr[-3000:]
        outputs.append((process.stdout, process.stderr))
    errs = [err for _, err in outputs]
    assert "sweep shard 0/3: 2 of 4 checkpoint(s)" in errs[0]
    assert "sweep shard 1/3 (from SLURM_ARRAY_TASK_ID=11 of SLURM_ARRAY_TASK_COUNT=3)" in errs[1]
    assert "sweep shard 2/3 (from RANK=2 of WORLD_SIZE=3)" in errs[2]
    return str(whole), str(parts)


def _normalized(path: str, out: str) -> object:
    """A JSON file with the output folder's path, timings and wall-clock times taken out."""
    text = open(path, encoding="utf-8").read().replace(out, "<OUT>")

    def strip(data):
        if isinstance(data, dict):
            return {key: strip(value) for key, value in data.items() if key not in ("time", "seconds")}
        if isinstance(data, list):
            return [strip(value) for value in data]
        return data

    return strip(json.loads(text))


def test_three_shard_processes_merge_into_the_unsharded_sweep(sharded):
    whole, parts = sharded
    assert sorted(os.listdir(os.path.join(parts, "shards"))) == [f"shard-{k}-of-3.json" for k in range(3)]
    assert _normalized(os.path.join(parts, "sweep.json"), parts) == _normalized(os.path.join(whole, "sweep.json"), whole)
    document = json.loads(open(os.path.join(parts, "sweep.json")).read())
    assert [row["step"] for row in document["rows"]] == STEPS and all(row["evaluated"] for row in document["rows"])
    for step in STEPS:
        folder = f"step-{step:012d}"
        for name in ("results.json",):
            assert _normalized(os.path.join(parts, folder, name), parts) == \
                _normalized(os.path.join(whole, folder, name), whole), (folder, name)
    with open(os.path.join(parts, "sweep.png"), "rb") as mine, open(os.path.join(whole, "sweep.png"), "rb") as theirs:
        assert mine.read() == theirs.read()
    # each shard evaluated only its own checkpoints: every N-th from the K-th
    for k, steps in enumerate([[32, 128], [64], [96]]):
        part = json.loads(open(os.path.join(parts, "shards", f"shard-{k}-of-3.json")).read())
        assert part["shard"] == [k, 3] and [row["step"] for row in part["rows"]] == steps


def test_merge_rebuilds_the_sweep_and_refuses_parts_that_do_not_belong(sharded, tmp_path, capsys):
    _, parts = sharded
    out = tmp_path / "out"
    shutil.copytree(parts, out)
    os.remove(out / "sweep.json")
    assert shardlab.main(["eval", "--merge", str(out)]) == 0
    assert _normalized(str(out / "sweep.json"), str(out)) == _normalized(os.path.join(parts, "sweep.json"), parts)
    kept = (out / "sweep.json").read_bytes()
    stale = out / "shards" / "shard-1-of-3.json"
    original = json.loads(stale.read_text())
    for key, value in (("seed", original["seed"] + 1), ("suite_sha256", "0" * 64), ("git_commit", "f" * 40),
                       ("package_version", "0.0.0")):
        stale.write_text(json.dumps({**original, key: value}))
        capsys.readouterr()
        assert shardlab.main(["eval", "--merge", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"differ in {key}" in err[0], err
        assert (out / "sweep.json").read_bytes() == kept  # nothing overwritten
    stale.unlink()
    assert shardlab.main(["eval", "--merge", str(out)]) == 2
    assert "shard(s) 1 of 3 have not finished" in capsys.readouterr().err
    for args in (["eval", "--merge", str(tmp_path / "nowhere")], ["eval", "--merge", str(out), "--out", str(out)]):
        assert shardlab.main(args) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_shard_arguments_and_launcher_variables():
    assert parse_shard("2/5") == (2, 5) and parse_shard(" 0 / 1 ") == (0, 1)
    for bad in ("3/3", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(base.EvalError, match="--shard"):
            parse_shard(bad)
    array = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4",
             "SLURM_ARRAY_TASK_STEP": "2"}  # --array=1-7:2 → tasks 1, 3, 5, 7
    assert shard_from_env(array) == ((3, 4), "SLURM_ARRAY_TASK_ID=7 of SLURM_ARRAY_TASK_COUNT=4")
    assert shard_from_env({"RANK": "1", "WORLD_SIZE": "2"})[0] == (1, 2)
    assert shard_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None and shard_from_env({}) is None
    assert shard_from_env({**array, "RANK": "0", "WORLD_SIZE": "8"})[0] == (3, 4)  # the array wins
    with pytest.raises(base.EvalError, match="WORLD_SIZE"):
        shard_from_env({"RANK": "0", "WORLD_SIZE": "two"})


def test_a_single_checkpoint_ignores_launcher_variables_and_refuses_shard(run_dir, tmp_path, capsys):
    checkpoint = os.path.join(run_dir, "checkpoints", "last.ckpt")
    request = EvalRequest(checkpoint=checkpoint, out=str(tmp_path), environ={"RANK": "1", "WORLD_SIZE": "2"})
    assert request.shard is None and not request.sweep
    sweep_request = EvalRequest(checkpoint=run_dir, out=str(tmp_path), environ={"RANK": "1", "WORLD_SIZE": "2"})
    assert sweep_request.shard == (1, 2) and sweep_request.shard_source == "RANK=1 of WORLD_SIZE=2"
    assert EvalRequest(checkpoint=run_dir, out=str(tmp_path), shard="0/2",
                       environ={"RANK": "1", "WORLD_SIZE": "2"}).shard == (0, 2)  # --shard wins
    assert shardlab.main(["eval", checkpoint, "--out", str(tmp_path / "o"), "--shard", "0/2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--shard splits a sweep" in err[0] and not (tmp_path / "o").exists()


def test_evals_never_see_the_launcher_variables(monkeypatch, tmp_path):
    """An eval that trains (fine-tuning) must run single-process: the variables a SLURM array or
    torchrun set are hidden while evals run, and back afterwards."""
    seen = {}

    def probe(ctx):
        from shardlab.evals.suite.results import Result

        seen.update({name: os.environ.get(name) for name in ("RANK", "WORLD_SIZE", "SLURM_JOB_ID",
                                                              "SLURM_ARRAY_TASK_ID", "MASTER_PORT")})
        return Result()

    with throwaway_eval("launcher_probe", probe):
        for name, value in (("RANK", "2"), ("WORLD_SIZE", "3"), ("SLURM_JOB_ID", "5"), ("SLURM_ARRAY_TASK_ID", "1"),
                            ("MASTER_PORT", "29500")):
            monkeypatch.setenv(name, value)
        suite = tmp_path / "suite.yaml"
        suite.write_text("evals:\n  launcher_probe: {}\n")
        results = evaluator.evaluate(EvalRequest(checkpoint="oracle:cheese_seeker", recipe="maze_demo",
                                                 suite=str(suite), out=str(tmp_path / "out")))
        assert not results.errors and seen == dict.fromkeys(seen) and len(seen) == 5
        assert os.environ["RANK"] == "2" and os.environ["SLURM_JOB_ID"] == "5"
