"""The one place that builds a Lightning ``Trainer`` for a shardlab module: the settings every run
and benchmark shares, and the Lightning warnings that are expected here and silenced.

trainers/run.py ``fit`` (real runs) and the trainer side of scripts/benchmarks (ppo, dt, gpu) use it,
so a benchmark measures the loop a real run executes.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator, Optional, Sequence

import pytorch_lightning as pl

from shardlab.trainers.base import ShardlabModule
from shardlab.trainers.checkpoint_callbacks import AtomicCheckpointIO

# warnings Lightning (and Lightning on a newer torch) raises for what shardlab does on purpose: an
# endless IterableDataset of ticks without loader workers (trainers/base.py), max_epochs=-1 with
# max_steps as the length, resuming mid-"epoch"; LeafSpec is a harmless deprecation notice
EXPECTED_WARNINGS = (".*(IterableDataset|does not have many workers|resuming from a checkpoint that ended|"
                     "_Ticks|max_epochs|LeafSpec).*")


def silence_expected_warnings() -> None:
    """Ignore :data:`EXPECTED_WARNINGS` from now on (for a whole process, e.g. a benchmark script)."""
    warnings.filterwarnings("ignore", message=EXPECTED_WARNINGS)


@contextlib.contextmanager
def expected_warnings_silenced() -> Iterator[None]:
    """Ignore :data:`EXPECTED_WARNINGS` inside the block (around ``trainer.fit``)."""
    with warnings.catch_warnings():
        silence_expected_warnings()
        yield


def build_trainer(module: ShardlabModule, *, root_dir: str, accelerator: str, precision: str, devices: int = 1,
                  num_nodes: int = 1, max_steps: Optional[int] = None, loggers: Sequence[Any] = (),
                  callbacks: Sequence[pl.Callback] = (), preloaded: Optional[dict[str, dict]] = None) -> pl.Trainer:
    """A ``pl.Trainer`` with shardlab's settings for ``module`` (``precision`` already resolved).

    Length and clipping come from the module (``max_steps`` defaults to its whole run); DDP when
    ``devices × num_nodes > 1``. No Lightning checkpointing, progress bar or model summary: the
    callbacks of trainers/ do those; checkpoints that are saved are written atomically.
    ``preloaded`` (path → checkpoint) hands a checkpoint already read to ``fit(ckpt_path=path)``.
    """
    world_size = devices * num_nodes
    return pl.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy="ddp" if world_size > 1 else "auto",
        precision=precision, max_steps=module.max_optimizer_steps() if max_steps is None else max_steps,
        max_epochs=-1,  # the data is an endless stream; max_steps is the length
        gradient_clip_val=module.gradient_clip_val(), gradient_clip_algorithm="norm",
        # metric rows reach the loggers through module.log_row at the module's progress (env
        # steps, samples); anything a module self.log()s goes to them every 50 optimizer steps
        logger=list(loggers) or False, log_every_n_steps=50,
        callbacks=list(callbacks), plugins=[AtomicCheckpointIO(preloaded)], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        # each rank samples its own data (seeded by rank), so no DistributedSampler
        default_root_dir=root_dir, use_distributed_sampler=False)
