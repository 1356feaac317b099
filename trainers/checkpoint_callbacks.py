"""Lightning's side of checkpoints: atomic writes and periodic saving at iteration boundaries."""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback

from shardlab.atomic import link_atomic, save_with
from shardlab.trainers.checkpointing import LAST, load_checkpoint, step_checkpoints


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
