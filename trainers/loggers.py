"""Lightning loggers of a run (``trainer.loggers``) and the one writer of its metric rows.

A metric row is a flat dict such as ``{"env_steps": 2048, "iteration": 1, "episode/return": 3.5}``:
:func:`write_row` appends it to ``metrics.jsonl`` (the run's own record, read by tests, the demo
report and resume) and sends its ``section/name`` scalars to every Lightning logger at the row's
progress value, so TensorBoard, the CSV file and wandb show the same numbers as the JSONL file.

Lightning is imported where a logger is built, not with this module: ``shardlab eval`` writes its
TensorBoard scalars with torch's own ``SummaryWriter`` (what Lightning's TensorBoardLogger wraps)
and so starts without Lightning's seconds of imports.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import os
import warnings
import sys
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

if TYPE_CHECKING:
    from pytorch_lightning.loggers import CSVLogger, Logger

from shardlab.configs.checks import ConfigError
from shardlab.trainers.trainer_config import DEFAULT_LOGGERS, check_loggers_installed

TB, CSV = "tb", "csv"  # <run_dir>/tb holds the event files directly (README: tensorboard --logdir runs/x/tb)


def build_loggers(names: Sequence[str], run_dir: str, run_name: str = "shardlab",
                  resumed_at: Optional[int] = None) -> list[Logger]:
    """The Lightning loggers ``names`` (trainer.loggers) writing under ``run_dir``.

    ``resumed_at`` (the checkpoint's progress when resuming; pass it on global rank 0 only) drops
    what the interrupted session logged after it, from TensorBoard's view and from the CSV, so a
    resumed curve has each step once, as metrics.jsonl does.
    """
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    check_loggers_installed(names)
    loggers: list[Logger] = []
    for name in names:
        if name == "tensorboard":
            purge = {} if resumed_at is None else {"purge_step": resumed_at + 1}
            loggers.append(TensorBoardLogger(run_dir, name=TB, version="", default_hp_metric=False, **purge))
        elif name == "csv":
            loggers.append(CSVLogger(run_dir, name=CSV, version=""))
            if resumed_at is not None:
                keep_csv_rows(loggers[-1], until=resumed_at)
        elif name == "wandb":
            from pytorch_lightning.loggers import WandbLogger

            loggers.append(WandbLogger(name=run_name, save_dir=run_dir,
                                       project=os.environ.get("WANDB_PROJECT", "shardlab")))
    return loggers


def check_logger_paths(names: Sequence[str], run_dir: str) -> None:
    """ConfigError (nothing written) when the loggers ``names`` could not write under ``run_dir``:
    their folder is a file, or the CSV they would continue is not a metrics table."""
    folders = {"tensorboard": TB, "csv": CSV, "wandb": "wandb"}
    for name in names:
        folder = os.path.join(run_dir, folders.get(name, name))
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise ConfigError(f"{folder} is a file, but the {name} logger writes a folder there; "
                              "move the file away or drop the logger")
    if "csv" in names:
        for path in (os.path.join(run_dir, CSV, "metrics.csv"), os.path.join(run_dir, CSV, "metrics.csv.kept")):
            if os.path.exists(path):
                _check_metrics_csv(path)


def _check_metrics_csv(path: str) -> None:
    """ConfigError unless ``path`` is a CSV of numbers with a step column (what keep_csv_rows reads)."""
    problem = f"{path} is not a metrics table (a CSV with a step column); move it away and run again"
    if not os.path.isfile(path):
        raise ConfigError(problem)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                float(row.pop("step"))
                [float(value) for value in row.values() if value not in ("", None)]
    except (UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError):
        raise ConfigError(problem) from None


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of a row that loggers get: ``section/name`` keys, NaN (no value) left out.

    Keys without a slash (env_steps, iteration, samples) are counters: the x-axis, not curves.
    """
    return {key: float(value) for key, value in row.items()
            if "/" in key and isinstance(value, numbers.Real) and not math.isnan(value)}


def send(loggers: Sequence[Any], metrics: Mapping[str, float], step: int) -> None:
    """``metrics`` at ``step`` to every logger, flushed so a killed run keeps them (rows are rare)."""
    if not metrics:
        return
    for logger in loggers:
        logger.log_metrics(dict(metrics), step)
        logger.save()  # CSVLogger otherwise buffers until (step + 1) % 100 == 0 or the end of fit


def write_row(row: Mapping[str, Any], step: int, metrics_path: Optional[str], loggers: Sequence[Any]) -> None:
    """Append ``row`` to metrics.jsonl and send its scalars to ``loggers``; call on global rank 0 only."""
    if metrics_path:
        with open(metrics_path, "a") as handle:
            handle.write(json.dumps(dict(row)) + "\n")
    send(loggers, scalars(row), step)


def keep_csv_rows(logger: CSVLogger, until: Optional[int] = None) -> None:
    """Open ``logger``'s writer keeping the rows of its existing metrics.csv (those at step <= ``until``).

    Lightning's CSV writer deletes an existing metrics.csv when it opens, which would cut a resumed
    run's CSV at the checkpoint and an eval folder's at the last eval. The file is moved aside,
    the writer opened on no file, and the kept rows logged again: correct whether or not the
    installed Lightning deletes. Call on global rank 0 only.
    """
    path = os.path.join(logger.log_dir, "metrics.csv")
    aside = path + ".kept"  # left behind only by a process killed during this function
    if os.path.isfile(path):
        os.replace(path, aside)
    if not os.path.isfile(aside):
        return
    with open(aside, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with warnings.catch_warnings():  # "logs directory exists and is not empty": expected here
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        logger.experiment
    for row in rows:
        step = int(float(row.pop("step")))
        metrics = {key: float(value) for key, value in row.items() if value not in ("", None)}
        if metrics and (until is None or step <= until):
            logger.log_metrics(metrics, step)
    logger.save()
    os.remove(aside)


def eval_scalars(runs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``eval/metric`` → value for the runs of an eval suite (``Results.runs``), NaN left out."""
    return {f"{run['eval']}/{m.name}": float(m.value) for run in runs for m in run["result"].metrics
            if m.value == m.value}


class EvalTensorBoard:
    """TensorBoard event files in ``<folder>/tb`` from torch's ``SummaryWriter``: the files
    Lightning's TensorBoardLogger writes for the same scalars, without importing Lightning."""

    def __init__(self, folder: str):
        from torch.utils.tensorboard import SummaryWriter

        self.experiment = SummaryWriter(log_dir=os.path.join(folder, TB))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """One scalar per metric at ``step``."""
        for key, value in metrics.items():
            self.experiment.add_scalar(key, value, step)

    def save(self) -> None:
        """Flush the event file."""
        self.experiment.flush()

    def finalize(self, status: str) -> None:
        """Close the event file."""
        self.experiment.close()


def _eval_loggers(names: Sequence[str], folder: str) -> list[Any]:
    """The loggers ``names`` for an eval folder: TensorBoard without Lightning, the CSV keeping
    the rows of earlier evals, wandb as a run has it."""
    loggers = [EvalTensorBoard(folder)] if "tensorboard" in names else []
    others = [name for name in names if name != "tensorboard"]
    if others:
        from pytorch_lightning.loggers import CSVLogger

        for logger in build_loggers(others, folder):
            if isinstance(logger, CSVLogger):
                keep_csv_rows(logger)  # evals of successive checkpoints add rows to one file
            loggers.append(logger)
    return loggers


def log_eval_metrics(target: Union[str, os.PathLike, Sequence[Any]], runs: Sequence[Mapping[str, Any]],
                     step: int, names: Sequence[str] = DEFAULT_LOGGERS) -> dict[str, float]:
    """Send eval results as ``eval/metric`` scalars, and their PNGs as images, at ``step`` (the
    checkpoint's training progress, so evals of successive checkpoints line up as curves).

    ``target`` is a list of Lightning loggers (e.g. a run's, from :func:`build_loggers`) or a folder,
    for which the loggers ``names`` are made (TensorBoard events in ``<folder>/tb``, the CSV in
    ``<folder>/csv/metrics.csv``) and finalized. Returns the scalars sent.
    """
    metrics = eval_scalars(runs)
    owned = isinstance(target, (str, os.PathLike))
    check_loggers_installed(names if owned else ())
    loggers = _eval_loggers(names, os.fspath(target)) if owned else list(target)
    send(loggers, metrics, step)
    _send_figures(loggers, runs, step)
    if owned:
        for logger in loggers:
            logger.finalize("success")
    return metrics


def _image_writer(logger: Any) -> Any:
    """The SummaryWriter behind a TensorBoard logger (ours or Lightning's), else None."""
    if isinstance(logger, EvalTensorBoard):
        return logger.experiment
    lightning = sys.modules.get("pytorch_lightning.loggers")  # not imported: no Lightning logger exists
    return logger.experiment if lightning is not None and isinstance(logger, lightning.TensorBoardLogger) else None


def _send_figures(loggers: Sequence[Any], runs: Sequence[Mapping[str, Any]], step: int) -> None:
    """Every PNG artifact of ``runs`` as an image ``eval/name`` (TensorBoard and wandb; CSV has none)."""
    pngs = [(run["eval"], path) for run in runs for path in run["result"].artifacts if path.endswith(".png")]
    for logger in loggers:
        writer = _image_writer(logger)
        for eval_name, path in pngs:
            tag = f"{eval_name}/{os.path.splitext(os.path.basename(path))[0]}"
            if writer is not None:
                import matplotlib.image

                writer.add_image(tag, matplotlib.image.imread(path)[..., :3], step, dataformats="HWC")
            elif type(logger).__name__ == "WandbLogger":
                logger.log_image(key=tag, images=[path], step=step)
