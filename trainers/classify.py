"""Supervised image classification (``algo: classify``) with dense or sparse activations.

The whole data set sits in memory (digits is 1,797 8×8 images). Batches are drawn by optimizer
step from an endless stream of seeded permutations, and under DDP each rank takes its slice of the
step's global batch, so a run is the same whether it is resumed or not and ranks never overlap.
``trainer.total_steps`` and ``trainer.checkpoint_every`` count training samples over all ranks.
The schema and its checks are in trainers/classify_config.py.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from shardlab.models.sparse import l1_penalty
from shardlab.trainers.base import ShardlabModule, tick_loader
from shardlab.trainers.config import build_config, to_dict
from shardlab.trainers.datasets import DataError, Splits, load_splits


def with_data_shape(config: dict, splits: Splits) -> dict:
    """``config`` with data.shape and data.num_classes taken from the data (checked if already set)."""
    data = dict(config.get("data", {}))
    for key, value in (("shape", splits.shape), ("num_classes", len(splits.classes))):
        if data.get(key) is not None and data[key] != value:
            raise DataError(f"data.{key} is {data[key]} but the data has {value}; set data.{key}=null "
                            "to take it from the data")
        data[key] = value
    return {**config, "data": data}


def stream_indices(step: int, batch: int, n: int, seed: int) -> torch.Tensor:
    """Sample indices ``[step·batch, (step + 1)·batch)`` of an endless stream of seeded permutations of n."""
    start, out = step * batch, []
    while len(out) < batch:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.extend(perm[offset:offset + batch - len(out)].tolist())
    return torch.tensor(out)


class ClassifyModule(ShardlabModule):
    """Cross-entropy training of a Classifier (+ l1_coef · L1 activation penalty)."""

    kind, progress_unit = "classify", "sample"
    resume_fixed_keys = ("model", "optim.batch_size", "data.source", "data.path", "data.val_fraction",
                         "data.test_fraction", "data.split_seed", "data.channels", "data.image_size")

    def __init__(self, config: dict, world_size: int = 1):
        super().__init__()
        cfg = build_config(config, source="checkpoint config")
        self.splits = load_splits(cfg.data)
        config = with_data_shape(to_dict(cfg), self.splits)
        # the stored config carries the data's shape, so load_trained rebuilds the net without the data
        self.save_hyperparameters({"config": config, "world_size": world_size})
        self.cfg = build_config(config, source="checkpoint config")
        self.world_size = world_size
        self.model = self.build_model(self.cfg)
        self.global_batch = self.cfg.optim.batch_size * world_size
        self.total_optimizer_steps = max(1, math.ceil(self.cfg.trainer.total_steps / self.global_batch))
        self.steps_per_checkpoint = max(1, self.cfg.trainer.checkpoint_every // self.global_batch)
        self.steps_per_eval = max(1, self.cfg.optim.eval_every // self.global_batch)
        self._train_stats: list[torch.Tensor] = []
        self.last_metrics: dict[str, float] = {}

    def train_dataloader(self) -> DataLoader:
        """Dummy items; batches come from the in-memory data by optimizer step."""
        return tick_loader()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """One minibatch: this rank's slice of the step's global batch."""
        x_all, y_all = self.splits.x["train"], self.splits.y["train"]
        indices = stream_indices(self.global_step, self.global_batch, len(y_all), self.cfg.trainer.seed)
        mine = indices[self.global_rank * self.cfg.optim.batch_size:(self.global_rank + 1) * self.cfg.optim.batch_size]
        x, y = x_all[mine].to(self.device), y_all[mine].to(self.device)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        penalty = l1_penalty(self.model) if self.cfg.model.l1_coef else torch.zeros((), device=self.device)
        self._train_stats.append(torch.stack([loss.detach(), (logits.argmax(1) == y).float().mean(),
                                              penalty.detach()]))
        return loss + self.cfg.model.l1_coef * penalty

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Every optim.eval_every samples (and at the end): validate and log one metrics row."""
        step = self.global_step
        if step % self.steps_per_eval == 0 or step == self.total_optimizer_steps:
            self._log_row(step)

    @torch.no_grad()
    def evaluate(self, part: str = "val") -> tuple[float, float]:
        """Cross-entropy and accuracy on a split (eval mode: duty cycles stay as they are)."""
        x, y = self.splits.x[part].to(self.device), self.splits.y[part].to(self.device)
        if len(y) == 0:
            return math.nan, math.nan
        was_training = self.model.training
        self.model.eval()
        logits = self.model(x)
        self.model.train(was_training)
        return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()

    def _log_row(self, step: int) -> None:
        stats = torch.stack(self._train_stats).mean(0)
        if self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="mean")
        self._train_stats.clear()
        val_loss, val_accuracy = self.evaluate("val")
        row = {"samples": self.progress(step), "train/loss": stats[0].item(), "train/accuracy": stats[1].item(),
               "val/loss": val_loss, "val/accuracy": val_accuracy,
               "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"]}
        if self.cfg.model.l1_coef:
            row["train/l1_penalty"] = stats[2].item()
        self.last_metrics = row
        self.log_row(row)

    def configure_optimizers(self) -> dict:
        """Adam with cosine (or constant) learning rate per optimizer step."""
        optim = self.cfg.optim
        optimizer = torch.optim.Adam(self.model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
        total = self.total_optimizer_steps
        if optim.lr_schedule == "cosine":
            factor = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        else:
            factor = lambda step: 1.0
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- the shared run loop's interface (trainers/base.py) -----------------------------------
    def max_optimizer_steps(self) -> int:
        """ceil(total samples / global batch)."""
        return self.total_optimizer_steps

    def progress(self, optimizer_step: int) -> int:
        """Training samples over all ranks."""
        return optimizer_step * self.global_batch

    def progress_total(self) -> int:
        """Training samples of the whole run."""
        return self.total_optimizer_steps * self.global_batch

    def checkpoint_due(self, optimizer_step: int) -> bool:
        """Every trainer.checkpoint_every samples (rounded to optimizer steps)."""
        return optimizer_step % self.steps_per_checkpoint == 0

    def postfix(self) -> dict[str, str]:
        """Validation accuracy of the last metrics row."""
        value = self.last_metrics.get("val/accuracy")
        return {} if value is None or math.isnan(value) else {"val_acc": f"{value:.1%}"}
