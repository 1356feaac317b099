"""A progress bar counted in env steps, with steps/s, ETA, return and cheese rate."""

from __future__ import annotations

import sys
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from tqdm import tqdm


class EnvStepProgressBar(Callback):
    """tqdm over env steps on rank 0, updated once per PPO iteration."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """Open the bar at the resumed position."""
        if trainer.is_global_zero:
            schedule = module.schedule
            self.bar = tqdm(total=schedule.iterations * schedule.steps_per_iteration,
                            initial=schedule.env_steps(trainer.global_step), unit="step",
                            unit_scale=True, dynamic_ncols=True, desc="train",
                            mininterval=0.5 if sys.stderr.isatty() else 30.0)

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        """Advance by one iteration's env steps when an iteration ends."""
        schedule = module.schedule
        if self.bar is None or trainer.global_step % schedule.updates_per_iteration:
            return
        row = module.iteration_metrics()
        postfix = {}
        if "episode/return" in row:
            postfix = {"return": f"{row['episode/return']:.2f}", "cheese": f"{row['episode/cheese_rate']:.0%}"}
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(schedule.steps_per_iteration)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
