"""A progress bar counted in the module's own unit (env steps, samples), with rate, ETA and a few numbers."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from tqdm import tqdm

from shardlab.bars import progress_kwargs


class StepProgressBar(Callback):
    """tqdm over ``module.progress`` on rank 0, updated at each boundary (e.g. PPO iteration)."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """Open the bar at the resumed position."""
        if trainer.is_global_zero:
            self.bar = tqdm(total=module.progress_total(), initial=module.progress(trainer.global_step),
                            unit=module.progress_unit, unit_scale=True, dynamic_ncols=True, desc="train",
                            **progress_kwargs(log_interval=30.0, terminal_interval=0.5))

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        """Move to the module's progress when a boundary is reached."""
        if self.bar is None or not module.at_boundary(trainer.global_step):
            return
        self.bar.set_postfix(module.postfix(), refresh=False)
        self.bar.update(module.progress(trainer.global_step) - self.bar.n)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        """Close the bar, so that what is printed next (e.g. why the run stopped) starts a new line."""
        self.on_train_end(trainer, module)
