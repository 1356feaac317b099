"""trainer.loggers: the config key, the Lightning loggers a run writes to, the one metric-row writer
(metrics.jsonl and every logger get the same numbers), resume, and eval metrics."""

from __future__ import annotations

import csv
import json
import os
import sys

import pytest
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger

from shardlab import cli as shardlab
from shardlab.trainers.checkpointing import step_checkpoints
from shardlab.trainers.config import ConfigError, build_config, check_runnable
from shardlab.trainers.loggers import build_loggers, keep_csv_rows, log_eval_metrics, scalars, write_row
from tiny_suites import MAZE_RECIPE, TINY_PPO, metrics_rows

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE, TINY = MAZE_RECIPE, TINY_PPO


def csv_rows(folder) -> list[dict]:
    """metrics.csv rows with the empty cells (metrics a row did not have) left out."""
    with open(os.path.join(folder, "csv", "metrics.csv"), newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


def tb_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(folder, "tb"))
    events.Reload()
    # by step: two writers in one folder within one second get event files whose names sort either way
    return {tag: sorted((s.step, s.value) for s in events.Scalars(tag)) for tag in events.Tags()["scalars"]}


# -- config -------------------------------------------------------------------------------------------

def test_default_loggers_are_tensorboard_and_csv():
    assert list(build_config({}).trainer.loggers) == ["tensorboard", "csv"]
    assert list(build_config({}, ["trainer.loggers=[csv]"]).trainer.loggers) == ["csv"]
    assert list(build_config({}, ["trainer.loggers=[]"]).trainer.loggers) == []


@pytest.mark.parametrize("value", ["[tensorbord]", "[csv,mlflow]"])
def test_unknown_logger_is_a_one_line_config_error(value):
    with pytest.raises(ConfigError) as info:
        build_config({}, [f"trainer.loggers={value}"])
    message = str(info.value)
    assert len(message.splitlines()) == 1 and "trainer.loggers" in message
    assert "tensorboard, csv, wandb" in message


def test_a_logger_named_twice_is_a_config_error():
    with pytest.raises(ConfigError, match="twice"):
        build_config({}, ["trainer.loggers=[csv,csv]"])


def test_wandb_without_wandb_installed_is_refused_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail as if not installed
    expected = ("trainer.loggers has wandb but wandb is not installed; "
                "pip install 'shardlab[wandb]' or drop it")
    cfg = build_config({}, ["trainer.loggers=[tensorboard,wandb]"])  # the config itself is fine
    with pytest.raises(ConfigError) as info:
        check_runnable(cfg)
    assert str(info.value) == expected
    with pytest.raises(ConfigError, match="wandb is not installed"):
        build_loggers(["wandb"], str(tmp_path))
    run_dir = tmp_path / "run"
    assert shardlab.main(["train", RECIPE, *TINY, "trainer.loggers=[wandb]", "--run-dir", str(run_dir)]) == 2
    assert capsys.readouterr().err.strip().endswith(expected)
    assert not run_dir.exists()  # refused before the run directory was made


def test_wandb_logger_is_built_when_installed(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    [logger] = build_loggers(["wandb"], str(tmp_path), "tiny")
    assert isinstance(logger, WandbLogger)


# -- the metric-row writer ------------------------------------------------------------------------------

class Recorder(Logger):
    """A Lightning logger that keeps what it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[dict, int]] = []

    name, version = "recorder", 0

    def log_metrics(self, metrics, step=None) -> None:
        self.calls.append((dict(metrics), step))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_write_row_appends_jsonl_and_sends_the_metrics_to_every_logger(tmp_path):
    path, first, second = str(tmp_path / "metrics.jsonl"), Recorder(), Recorder()
    row = {"env_steps": 256, "iteration": 2, "train/loss": 0.5, "val/accuracy": float("nan"), "perf/sps": 3}
    write_row(row, 256, path, [first, second])
    write_row({"env_steps": 384, "train/loss": 0.25}, 384, path, [first, second])
    lines = open(path).read().splitlines()
    assert json.loads(lines[0]).keys() == row.keys() and json.loads(lines[1]) == {"env_steps": 384, "train/loss": 0.25}
    # counters are the x-axis and NaN is "no value": neither becomes a curve
    expected = [({"train/loss": 0.5, "perf/sps": 3.0}, 256), ({"train/loss": 0.25}, 384)]
    assert first.calls == second.calls == expected


def test_default_run_writes_tensorboard_and_csv_with_the_jsonl_values(tmp_path):
    run_dir = tmp_path / "run"
    assert shardlab.main(["train", RECIPE, *TINY, "trainer.total_steps=256", "--run-dir", str(run_dir)]) == 0
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run_dir / "tb"))
    rows, table = metrics_rows(run_dir), csv_rows(run_dir)
    assert [r["env_steps"] for r in rows] == [128, 256]
    # every CSV row is exactly its metrics.jsonl row's metrics, at the row's env steps
    assert [{"step": r["env_steps"], **scalars(r)} for r in rows] == table
    assert table[-1]["train/lr"] == rows[-1]["train/lr"]
    curves = tb_scalars(run_dir)
    assert set(curves) == set(scalars(rows[0])) | set(scalars(rows[1]))
    assert [step for step, _ in curves["train/lr"]] == [128, 256]
    assert curves["train/lr"][-1][1] == pytest.approx(rows[-1]["train/lr"])


def test_no_loggers_leaves_only_metrics_jsonl(tmp_path):
    run_dir = tmp_path / "run"
    assert shardlab.main(["train", RECIPE, *TINY, "trainer.total_steps=128", "trainer.loggers=[]",
                          "--run-dir", str(run_dir)]) == 0
    assert [r["env_steps"] for r in metrics_rows(run_dir)] == [128]
    assert not (run_dir / "tb").exists() and not (run_dir / "csv").exists()


def test_resume_keeps_each_step_once_in_every_logger(tmp_path):
    run_dir = tmp_path / "run"
    assert shardlab.main(["train", RECIPE, *TINY, "trainer.total_steps=256", "--run-dir", str(run_dir)]) == 0
    before = csv_rows(run_dir)
    # as if killed after logging step 256 but before checkpointing it
    checkpoints = run_dir / "checkpoints"
    os.remove(checkpoints / "last.ckpt")
    for steps, path in step_checkpoints(str(checkpoints)):
        if steps > 128:
            os.remove(path)
    os.link(checkpoints / "step-000000000128.ckpt", checkpoints / "last.ckpt")
    assert shardlab.main(["resume", str(run_dir), "trainer.total_steps=384"]) == 0
    rows, table = metrics_rows(run_dir), csv_rows(run_dir)
    assert [r["env_steps"] for r in rows] == [128, 256, 384]
    assert [{"step": r["env_steps"], **scalars(r)} for r in rows] == table
    assert table[0] == before[0]  # the kept row survived the CSV writer's reopening
    assert [step for step, _ in tb_scalars(run_dir)["train/lr"]] == [128, 256, 384]
    assert not [name for name in os.listdir(run_dir / "csv") if name.endswith(".kept")]


def test_keep_csv_rows_drops_rows_after_the_resume_point(tmp_path):
    logger = CSVLogger(str(tmp_path), name="csv", version="")
    for step in (1, 2, 3):
        logger.log_metrics({"a/b": float(step)}, step)
    logger.save()
    [reopened] = build_loggers(["csv"], str(tmp_path), resumed_at=2)
    reopened.log_metrics({"a/c": 7.0}, 3)
    reopened.save()
    assert csv_rows(tmp_path) == [{"a/b": 1.0, "step": 1}, {"a/b": 2.0, "step": 2}, {"a/c": 7.0, "step": 3}]
    keep_csv_rows(CSVLogger(str(tmp_path), name="csv", version=""))  # all rows
    assert len(csv_rows(tmp_path)) == 3


# -- eval metrics ---------------------------------------------------------------------------------------

def eval_runs(value: float) -> list[dict]:
    from shardlab.evals.suite.results import Result

    result = Result()
    result.add("p_cheese", value)
    result.add("undefined", float("nan"))
    return [{"eval": "goal_misgeneralization", "result": result}]


def test_log_eval_metrics_to_a_folder_appends_to_its_loggers(tmp_path):
    sent = log_eval_metrics(str(tmp_path), eval_runs(0.25), step=128)
    assert sent == {"goal_misgeneralization/p_cheese": 0.25}
    log_eval_metrics(tmp_path, eval_runs(0.75), step=256)  # a later checkpoint's evals
    assert csv_rows(tmp_path) == [{"goal_misgeneralization/p_cheese": 0.25, "step": 128},
                                  {"goal_misgeneralization/p_cheese": 0.75, "step": 256}]
    assert tb_scalars(tmp_path) == {"goal_misgeneralization/p_cheese": [(128, 0.25), (256, 0.75)]}


def test_log_eval_metrics_to_given_loggers(tmp_path):
    recorder = Recorder()
    log_eval_metrics([recorder], eval_runs(0.5), step=64)
    assert recorder.calls == [({"goal_misgeneralization/p_cheese": 0.5}, 64)]
    [tb] = build_loggers(["tensorboard"], str(tmp_path))
    assert isinstance(tb, TensorBoardLogger) and os.path.normpath(tb.log_dir) == os.path.join(str(tmp_path), "tb")
