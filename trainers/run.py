"""Start or resume a training run in a run directory: runs/<name>/{config.yaml, checkpoints/,
metrics.jsonl, and the folders of trainer.loggers: tb/, csv/, wandb/}."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import Sequence

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from shardlab.atomic import is_temp_name, write_text
from shardlab.trainers.allocator import keep_freed_memory
from shardlab.trainers.checkpoint_callbacks import PeriodicCheckpoint
from shardlab.trainers.checkpointing import LAST, CheckpointError, load_checkpoint, saved_config
from shardlab.trainers.base import ShardlabModule
from shardlab.trainers.config import ConfigError, build_config, read_yaml, to_dict
from shardlab.trainers.kinds import get_kind
from shardlab.trainers.lightning_setup import build_trainer, expected_warnings_silenced
from shardlab.paths import file_in_the_way
from shardlab.trainers.precision import AUTO, resolve_precision
from shardlab.trainers.restore import build_network, network_weights
from shardlab.trainers.loggers import build_loggers, check_logger_paths
from shardlab.trainers.progress import StepProgressBar
from shardlab.trainers.stopping import RunStopped, StopCheck, signal_name, stop_on_signals

CONFIG_FILE, CHECKPOINTS, METRICS = "config.yaml", "checkpoints", "metrics.jsonl"


def is_launched_worker() -> bool:
    """True in a DDP worker that a launcher (Lightning, torchrun, SLURM) started with rank > 0."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in ("LOCAL_RANK", "RANK", "NODE_RANK"))


def prepare_run_dir(cfg: DictConfig, run_dir: str) -> None:
    """Create a new run directory holding the resolved config; refuse to reuse a used one."""
    if is_launched_worker():
        return
    check_run_dir(run_dir, cfg.trainer.loggers)
    os.makedirs(os.path.join(run_dir, CHECKPOINTS), exist_ok=True)
    write_text(os.path.join(run_dir, CONFIG_FILE), OmegaConf.to_yaml(cfg))


def check_run_dir(run_dir: str, loggers: Sequence[str] = ()) -> None:
    """ConfigError unless ``run_dir`` can become a new run directory for ``loggers`` (nothing is created)."""
    if is_launched_worker():
        return
    blocker = file_in_the_way(run_dir)
    if blocker is not None:
        raise ConfigError(f"--run-dir {run_dir}: {blocker} is a file, not a folder; pick another --run-dir")
    if os.path.exists(os.path.join(run_dir, CONFIG_FILE)) or os.path.isdir(os.path.join(run_dir, CHECKPOINTS)):
        raise ConfigError(f"run directory {run_dir} is already used; continue it with "
                          f"`shardlab resume {run_dir}` or pick another --run-dir")
    check_logger_paths(loggers, run_dir)


# what Lightning reads back from a checkpoint to continue training (a weights-only file lacks them)
TRAINING_STATE = ("pytorch-lightning_version", "global_step", "epoch", "loops", "optimizer_states")


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run continues: its last checkpoint's path and the checkpoint, read once."""

    path: str
    checkpoint: dict


def load_run(run_dir: str, overrides: list[str] = ()) -> tuple[DictConfig, ResumePoint]:
    """The config and last checkpoint of an existing run, validated before anything runs; the
    checkpoint file is read once, here, and handed on to training."""
    config_path = os.path.join(run_dir, CONFIG_FILE)
    if os.path.isfile(run_dir):
        raise ConfigError(f"{run_dir} is a file, not a run directory; pass the folder `shardlab train` made "
                          "(the one holding config.yaml and checkpoints/)")
    if not os.path.isdir(run_dir):
        raise ConfigError(f"run directory {run_dir} does not exist; start it with `shardlab train`")
    if os.path.exists(config_path) and not os.path.isfile(config_path):
        raise ConfigError(f"{config_path} is not a file; it should hold the run's config (remove it to use "
                          "the checkpoint's)")
    checkpoint_path = os.path.join(run_dir, CHECKPOINTS, LAST)
    checkpoint = load_checkpoint(checkpoint_path)  # named error if missing or corrupt; the run's one read of it
    stored = saved_config(checkpoint, checkpoint_path)
    recipe = read_yaml(config_path) if os.path.isfile(config_path) else stored
    cfg = build_config(recipe, overrides, source=config_path)
    saved = build_config(stored, source=checkpoint_path)
    if cfg.algo != saved.algo:
        raise ConfigError(f"algo differs between {config_path} ({cfg.algo}) and {checkpoint_path} "
                          f"({saved.algo}); a resumed run keeps its kind")
    module_cls = get_kind(cfg.algo).load("module")
    for key in module_cls.resume_fixed_keys:
        if OmegaConf.select(cfg, key) != OmegaConf.select(saved, key):
            raise ConfigError(f"{key} differs between {config_path} and {checkpoint_path}; a resumed run "
                              f"must keep it (fixed on resume: {', '.join(module_cls.resume_fixed_keys)})")
    _check_resumable(checkpoint, checkpoint_path, saved, module_cls)
    _metric_rows(os.path.join(run_dir, METRICS), module_cls.progress_key)  # readable before anything is written
    check_logger_paths(cfg.trainer.loggers, run_dir)
    return cfg, ResumePoint(checkpoint_path, checkpoint)


def _check_resumable(checkpoint: dict, path: str, saved: DictConfig, module_cls: type) -> None:
    """CheckpointError unless ``checkpoint`` holds what a resumed run reads: Lightning's training
    state, the progress counter and weights that fit the network its config builds."""
    missing = [key for key in TRAINING_STATE if key not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint {path} has no training state ({', '.join(missing)}), so the run "
                              "cannot continue from it; resume from a step-*.ckpt that `shardlab train` wrote")
    progress = checkpoint["shardlab"].get(module_cls.progress_key)
    if not isinstance(progress, int) or isinstance(progress, bool) or progress < 0:
        raise CheckpointError(f"checkpoint {path} has no valid shardlab.{module_cls.progress_key} counter "
                              f"(got {progress!r}); resume from an older step-*.ckpt in the same folder")
    build_network(saved, network_weights(checkpoint, saved.algo, path), path)


def build_module(cfg: DictConfig) -> ShardlabModule:
    """Seed and build the run's LightningModule. Kinds read their data here (classify, dt), so a
    missing or unusable data set is a ConfigError before a run directory is made."""
    t = cfg.trainer
    pl.seed_everything(t.seed, workers=True, verbose=False)
    return get_kind(cfg.algo).load("module")(to_dict(cfg), world_size=t.devices * t.num_nodes)


def fit(cfg: DictConfig, run_dir: str, resume: ResumePoint | None = None, init_weights: dict | None = None,
        callbacks: list | None = None, module: ShardlabModule | None = None) -> ShardlabModule:
    """Build the Lightning trainer and train (or continue from ``resume``, :func:`load_run`'s) until
    trainer.total_steps.

    ``init_weights`` (a state_dict of the network) starts a new run from trained weights, as
    fine-tuning does; ``callbacks`` are extra Lightning callbacks (e.g. evaluations during training);
    ``module`` is the LightningModule :func:`build_module` made (default: built here).

    SIGINT or SIGTERM stops training within seconds (trainers/stopping.py): the unfinished iteration
    is dropped, last.ckpt stays the last complete checkpoint, one line on stderr says how to resume,
    and :class:`~shardlab.trainers.stopping.RunStopped` (a SystemExit, code 130 or 143) is raised.
    """
    keep_freed_memory()
    # Lightning's start-up banner (accelerator lines, a cloud-logging tip) buries our progress bar
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    t = cfg.trainer
    if module is None:
        module = build_module(cfg)
    if init_weights is not None:
        getattr(module, module.model_attr).load_state_dict(init_weights)
    module.metrics_path = os.path.join(run_dir, METRICS)
    checkpoints = os.path.join(run_dir, CHECKPOINTS)
    # the resume point, on the process that writes logs (DDP workers re-run this function)
    resumed_at = (resume.checkpoint["shardlab"][module.progress_key]
                  if resume is not None and not is_launched_worker() else None)
    ckpt_path = resume.path if resume is not None else None
    if resumed_at is not None:
        _drop_metrics_after(module.metrics_path, module.progress_key, resumed_at)
    loggers = build_loggers(t.loggers, run_dir, cfg.name, resumed_at=resumed_at)
    callbacks = [PeriodicCheckpoint(checkpoints, keep=t.keep_checkpoints), StopCheck(), *(callbacks or [])]
    if t.progress_bar:
        callbacks.append(StepProgressBar())
    precision = resolve_precision(t.precision, t.accelerator)
    if t.precision == AUTO and not is_launched_worker():
        print(f"trainer.precision auto: training in {precision}", flush=True)
    trainer = build_trainer(module, root_dir=run_dir, accelerator=t.accelerator, precision=precision,
                            devices=t.devices, num_nodes=t.num_nodes, loggers=loggers, callbacks=callbacks,
                            preloaded={resume.path: resume.checkpoint} if resume is not None else None)
    if ckpt_path and trainer.is_global_zero:
        for name in os.listdir(checkpoints):  # temp files of a save that was killed half-way
            if is_temp_name(name) and os.path.isfile(os.path.join(checkpoints, name)):
                os.remove(os.path.join(checkpoints, name))
    try:
        with stop_on_signals(), expected_warnings_silenced():
            trainer.fit(module, ckpt_path=ckpt_path, weights_only=True)
    except (RunStopped, SIGTERMException) as stop:
        # RunStopped from a rollout or StopCheck; SIGTERMException from Lightning's own SIGTERM
        # handler, which is in place until StopCheck.on_train_start takes SIGTERM back (a signal
        # during set-up). Neither writes a checkpoint for the unfinished iteration.
        signum = stop.signum if isinstance(stop, RunStopped) else signal.SIGTERM
        if not is_launched_worker():
            print(stopped_message(signum, run_dir), file=sys.stderr, flush=True)
        raise RunStopped(signum) from None
    return module


def stopped_message(signum: int, run_dir: str) -> str:
    """The one line a run stopped by ``signum`` prints: what is kept and how to continue."""
    last = os.path.join(run_dir, CHECKPOINTS, LAST)
    if not os.path.isfile(last):
        return (f"shardlab: stopped by {signal_name(signum)} before the first checkpoint; nothing to resume "
                f"(start again with `shardlab train` and a new --run-dir)")
    return (f"shardlab: stopped by {signal_name(signum)}; the unfinished iteration was dropped and {last} is the last "
            f"complete checkpoint; continue with `shardlab resume {run_dir}`")


def _metric_rows(path: str, key: str) -> list[tuple[int, str]]:
    """(progress, line) of every row of a run's metrics.jsonl; ConfigError naming the line when the
    file cannot be read. A last line without its newline (a run killed while writing) is dropped."""
    if not os.path.exists(path):
        return []
    if not os.path.isfile(path):
        raise ConfigError(f"{path} is not a file; remove it (it is the run's metric log) and resume again")
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.readlines()
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; remove it (it is the run's metric log) and resume again") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            steps = json.loads(line)[key]
            if isinstance(steps, bool) or not isinstance(steps, (int, float)):
                raise TypeError(steps)
        except (ValueError, TypeError, KeyError, IndexError):
            if number == len(lines) and not line.endswith("\n"):
                continue  # cut off by a kill mid-write
            raise ConfigError(f"{path} line {number} is not a metrics row with {key!r}; delete that line "
                              "(or the file) and resume again") from None
        rows.append((steps, line))
    return rows


def _drop_metrics_after(path: str, key: str, steps: int) -> None:
    """Forget logged rows newer than the checkpoint, so a resumed curve has no duplicates."""
    if not os.path.isfile(path):
        return
    rows = [line for row_steps, line in _metric_rows(path, key) if row_steps <= steps]
    write_text(path, "".join(rows))
