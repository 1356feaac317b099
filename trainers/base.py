"""What every shardlab LightningModule offers the shared run loop, checkpointing and progress bar.

A training kind (trainers/kinds.py) subclasses :class:`ShardlabModule`: the run loop reads the
optimizer-step budget and gradient clipping from it, the checkpoint callback asks it where the safe
boundaries are, and the eval runner rebuilds its model from a checkpoint with ``build_model``.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import pytorch_lightning as pl
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from shardlab.trainers.kinds import get_kind
from shardlab.trainers.loggers import write_row


class _Ticks(IterableDataset):
    """An endless stream of dummy items: a module makes its own batches (env rollouts, windows or
    images drawn by optimizer step) and Lightning's max_steps sets the length."""

    def __iter__(self) -> Iterator[int]:
        while True:
            yield 0


def tick_loader() -> DataLoader:
    """The train_dataloader of every kind: endless dummy items, one per optimizer step (no workers:
    they would hold stale copies of the module's state)."""
    return DataLoader(_Ticks(), batch_size=None, num_workers=0)


class ShardlabModule(pl.LightningModule):
    """Base class: subclasses set the class attributes and implement the methods below."""

    kind: str = ""  # the config's algo (its KINDS key); stored in checkpoint["shardlab"]["kind"]
    # from the kind's table entry (trainers/kinds.py), set for each subclass that names its kind
    model_attr: str = "model"  # the attribute holding the network; its state_dict prefix
    progress_key: str = "steps"  # the x-axis of metrics.jsonl rows and the loggers (env_steps, samples, ...)
    progress_unit: str = "step"
    resume_fixed_keys: tuple[str, ...] = ("model",)  # config keys a resumed run may not change
    metrics_path: Optional[str] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            entry = get_kind(cls.kind)
            cls.model_attr, cls.progress_key = entry.model_attr, entry.progress_key

    @classmethod
    def build_model(cls, cfg: DictConfig) -> nn.Module:
        """The untrained network a resolved config describes (built by the kind's network builder)."""
        return get_kind(cls.kind).build_network(cfg)

    def max_optimizer_steps(self) -> int:
        """Optimizer steps of the whole run (Lightning's max_steps)."""
        raise NotImplementedError

    def gradient_clip_val(self) -> Optional[float]:
        """Norm to clip gradients to, or None."""
        return None

    def progress(self, optimizer_step: int) -> int:
        """Work done after ``optimizer_step`` optimizer steps, in ``progress_unit``."""
        return optimizer_step

    def progress_total(self) -> int:
        """Work the whole run does, in ``progress_unit``."""
        return self.max_optimizer_steps()

    def at_boundary(self, optimizer_step: int) -> bool:
        """Whether training may stop and be checkpointed after this optimizer step."""
        return True

    def checkpoint_due(self, optimizer_step: int) -> bool:
        """Whether a periodic checkpoint is due at this boundary."""
        raise NotImplementedError

    def postfix(self) -> dict[str, str]:
        """A few numbers for the progress bar at a boundary."""
        return {}

    def shardlab_state(self) -> dict[str, Any]:
        """Extra weights_only-safe state for checkpoint["shardlab"] (counters, RNGs, ...)."""
        return {}

    def log_row(self, row: dict[str, Any]) -> None:
        """Record one metrics row (metrics.jsonl and every Lightning logger) on global rank 0."""
        if self.global_rank == 0:
            write_row(row, int(row[self.progress_key]), self.metrics_path, self.loggers)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Write the ``shardlab`` block: format, version, kind, progress and the subclass's state."""
        from shardlab.trainers import __version__
        checkpoint["shardlab"] = {"format": 1, "version": __version__, "kind": self.kind,
                                  self.progress_key: self.progress(self.global_step), **self.shardlab_state()}
