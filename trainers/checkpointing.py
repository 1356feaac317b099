"""Crash-safe checkpoints: atomic writes, periodic saving at iteration boundaries, safe loading."""

from __future__ import annotations

import os
import re
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback

from shardlab.atomic import link_atomic, save_with
from shardlab.torch_files import Advice, read_torch_file

LAST = "last.ckpt"
_STEP_FILE = re.compile(r"step-(\d+)\.ckpt$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt or not a shardlab checkpoint."""


CHECKPOINT = Advice("checkpoint", "pass a .ckpt file (e.g. <run dir>/checkpoints/last.ckpt)",
                    "resume from an older step-*.ckpt in the same folder")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, str]:
    """A checkpoint (loaded with ``weights_only=True``) and its file's SHA-256, from one read; a
    missing, damaged or foreign file is a CheckpointError."""
    path = os.fspath(path)
    checkpoint, sha256 = read_torch_file(path, CheckpointError, CHECKPOINT)
    if not isinstance(checkpoint, dict) or "shardlab" not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} is not a shardlab checkpoint (no 'shardlab' block)")
    if not isinstance(checkpoint["shardlab"], dict) or not isinstance(checkpoint["state_dict"], dict):
        raise CheckpointError(f"checkpoint {path} is damaged: its 'shardlab' block or state_dict is not a mapping")
    return checkpoint, sha256


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint with ``weights_only=True``; a missing or damaged file is a CheckpointError."""
    return read_checkpoint(path)[0]


def saved_config(checkpoint: dict, path: str | os.PathLike) -> dict:
    """The resolved training config a checkpoint carries (``hyper_parameters.config``); a
    CheckpointError when it has none, as in a file not written by ``shardlab train``."""
    hyper = checkpoint.get("hyper_parameters")
    config = hyper.get("config") if isinstance(hyper, dict) else None
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {os.fspath(path)} carries no config (hyper_parameters.config); "
                              "it was not written by `shardlab train`")
    return config


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that never leaves a half-written file and loads weights_only.

    ``preloaded`` maps a checkpoint path to the checkpoint already read from it (a resume validates
    the file before training starts): Lightning then gets that object instead of a second read.
    """

    def __init__(self, preloaded: dict[str, dict] | None = None) -> None:
        super().__init__()
        self.preloaded = {os.path.realpath(path): checkpoint for path, checkpoint in (preloaded or {}).items()}

    def save_checkpoint(self, checkpoint: dict, path: str, storage_options: Any = None) -> None:
        """Write atomically (temp file, fsync, rename, folder fsync)."""
        save_with(path, lambda handle: torch.save(checkpoint, handle), make_parents=True, sync_dir=True)

    def load_checkpoint(self, path: str, map_location: Any = None, weights_only: bool | None = None) -> dict:
        """The preloaded checkpoint of ``path`` (once), else load it safely, naming the file if it is damaged."""
        preloaded = self.preloaded.pop(os.path.realpath(path), None)
        return preloaded if preloaded is not None else load_checkpoint(path)


def step_checkpoints(folder: str) -> list[tuple[int, str]]:
    """(steps, path) of the step-*.ckpt files in ``folder``, oldest first."""
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), os.path.join(folder, name))
             for name in os.listdir(folder) if (m := _STEP_FILE.match(name))]
    return sorted(found)


class PeriodicCheckpoint(Callback):
    """Save ``step-N.ckpt`` and ``last.ckpt`` every K iterations and at the end of training.

    Saving happens only at iteration boundaries, where no rollout is in flight, so a resumed run
    starts with a fresh rollout and loses nothing but the iterations after the last save.
    """

    def __init__(self, folder: str, keep: int = 3):
        self.folder, self.keep = folder, keep

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        """Checkpoint at a boundary (e.g. an iteration's end) when it is due or training ends."""
        step = trainer.global_step
        if not module.at_boundary(step):
            return
        if module.checkpoint_due(step) or step >= trainer.max_steps:
            self.save(trainer, module.progress(step))

    def save(self, trainer: pl.Trainer, steps: int) -> None:
        """Write step-N.ckpt, point last.ckpt at it (atomically) and prune old step files."""
        path = os.path.join(self.folder, f"step-{steps:012d}.ckpt")
        trainer.save_checkpoint(path, weights_only=False)  # full state: optimizer, schedule, loops
        if trainer.is_global_zero:
            link_atomic(path, os.path.join(self.folder, LAST), sync_dir=True)
            for _, old in step_checkpoints(self.folder)[:-self.keep or None]:
                os.remove(old)
