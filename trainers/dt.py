"""Decision-transformer training on a trajectory dataset (``algo: dt``) as a LightningModule.

One ``training_step`` is one AdamW step on ``optim.batch_size`` context windows per rank, sampled
uniformly over the training episodes' steps with a generator seeded by (trainer.seed, rank, step),
so a resumed run draws exactly the windows the uninterrupted run would have. The loss is the
cross-entropy of the action predicted at every real (unpadded) timestep. A seeded fraction of the
episodes is held out; their loss and action accuracy are logged every ``monitor.validate_every``
steps. Progress, ``trainer.total_steps`` and ``trainer.checkpoint_every`` count optimizer steps.

Settings the data decides (observation shape, actions, episode length, mission vocabulary, return
range) are read from ``data.path`` into the ``spec`` section and saved with the checkpoint, so
``load_trained`` rebuilds the model and the evals rebuild the env without the dataset. The schema
and its checks are in trainers/dt_config.py.
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig
from torch.nn import functional as F
from torch.utils.data import DataLoader

from shardlab.envs.minigrid_config import MiniGridEnvConfig
from shardlab.models.decision_transformer import DecisionTransformer, build_vocabulary, mission_words
from shardlab.models.sparse import l1_penalty
from shardlab.trainers.base import ShardlabModule, tick_loader
from shardlab.trainers.config import ConfigError, build_config
from shardlab.trainers.dt_data import EpisodeWindows, WindowBatch, split_episodes
from shardlab.trainers.trajectories import DatasetError, Trajectories, load_trajectories


# -- data ---------------------------------------------------------------------------------------
def read_dataset(path: str) -> Trajectories:
    """load_trajectories with its error turned into a one-line ConfigError (exit 2)."""
    try:
        return load_trajectories(path)
    except DatasetError as exc:
        raise ConfigError(f"data.path: {exc}") from None


def dataset_spec(traj: Trajectories, use_mission: bool) -> dict[str, Any]:
    """The ``spec`` section a dataset implies."""
    meta = traj.metadata
    returns = traj.episode_returns.astype(np.float64)
    success = traj.terminated & (traj.episode_returns > 0)
    step_limit = int(meta.get("max_steps") or _env_step_limit(str(meta.get("env_id", ""))))
    spec = {"env_id": str(meta.get("env_id", "")), "obs": str(meta.get("obs", "")),
            "obs_shape": list(traj.obs_shape),
            "num_actions": int(meta.get("num_actions") or int(traj.actions.max()) + 1),
            "max_timestep": max(step_limit, int(traj.timesteps.max())),
            "return_min": float(returns.min()), "return_max": float(returns.max()),
            "return_mean": float(returns.mean()), "success_rate": float(success.mean()),
            "level_seeds": traj.level_seed_ranges() or []}  # [] when not recorded: the DT evals then refuse
    if use_mission:
        spec["mission_vocab"] = build_vocabulary([str(m) for m in traj.missions])
        spec["max_mission_tokens"] = max(1, max(len(mission_words(str(m))) for m in traj.missions))
    return spec


def _env_step_limit(env_id: str) -> int:
    """The episode step limit of a registered MiniGrid env (0 if the id is unknown)."""
    from shardlab.envs.minigrid_registry import check_config, make_single  # the env library, only here

    cfg = MiniGridEnvConfig(env_id=env_id, num_envs=1)
    try:
        check_config(cfg)
    except ValueError:
        return 0
    env = make_single(cfg)
    limit = int(getattr(env.unwrapped, "max_steps", 0))
    env.close()
    return limit


def fill_spec(config: dict, traj: Trajectories) -> dict:
    """``config`` with empty ``spec`` entries filled from the dataset (set ones are kept)."""
    derived = dataset_spec(traj, bool(config.get("model", {}).get("use_mission", False)))
    spec = dict(config.get("spec") or {})
    for key, value in derived.items():
        if spec.get(key) in (None, "", 0, 0.0, []):
            spec[key] = value
    return {**config, "spec": spec}


def action_loss(logits: torch.Tensor, batch: WindowBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean cross-entropy, correct predictions, real timesteps) over the real timesteps only."""
    mask = batch.step_mask
    per_step = F.cross_entropy(logits.flatten(0, 1).float(), batch.actions.flatten(), reduction="none")
    weights = mask.flatten().to(per_step.dtype)
    count = weights.sum()
    correct = ((logits.argmax(-1) == batch.actions) & mask).sum()
    return (per_step * weights).sum() / count.clamp_min(1), correct, count


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, optim: DictConfig, total_steps: int
                   ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (decay on ≥2-D parameters only, as nanoGPT) and the warmup + cosine schedule."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": optim.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=optim.lr, betas=tuple(optim.betas))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, optim.warmup_steps, total_steps, optim.min_lr_ratio))
    return optimizer, schedule


class TrainingData:
    """The dataset's train and validation windows and mission tokens, ready for the module."""

    def __init__(self, cfg: DictConfig, traj: Trajectories, model: DecisionTransformer):
        train, validation = split_episodes(traj.num_episodes, cfg.data.validation_fraction, cfg.data.split_seed)
        missions = model.tokenize_missions([str(m) for m in traj.missions]) if model.max_mission_tokens else None
        self.train = EpisodeWindows(traj, train, cfg.model.context, missions)
        self.validation = EpisodeWindows(traj, validation, cfg.model.context, missions)
        self.validation_ends = self.validation.fixed_ends(cfg.monitor.validation_windows, cfg.data.split_seed)

    def to(self, device: torch.device) -> "TrainingData":
        """Move all tensors to ``device``."""
        self.train.to(device)
        self.validation.to(device)
        self.validation_ends = self.validation_ends.to(device)
        return self


def batch_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The generator that draws the windows of one optimizer step on one rank."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + rank) * 1_000_033 + step) % (2 ** 63))


# -- the LightningModule --------------------------------------------------------------------------
class DTModule(ShardlabModule):
    """Supervised action prediction on context windows, with a held-out validation split."""

    kind, progress_unit = "dt", "step"
    resume_fixed_keys = ("model", "data", "optim.batch_size")

    def __init__(self, config: dict, world_size: int = 1):
        super().__init__()
        raw = build_config(config, source="config")  # validated before the data is read
        traj = read_dataset(raw.data.path)
        config = fill_spec(config, traj)
        self.save_hyperparameters({"config": config, "world_size": world_size})
        self.cfg = build_config(config, source="config")
        self.model = self.build_model(self.cfg)
        self.data = TrainingData(self.cfg, traj, self.model)
        if len(self.data.train) == 0:
            raise ConfigError(f"data.path {raw.data.path} leaves no training episodes; lower data.validation_fraction")
        self.tokens_per_window = self.model.sequence_length(self.cfg.model.context, self.model.max_mission_tokens)
        self._stats: list[torch.Tensor] = []
        self._window_start = time.perf_counter()
        self._window_steps = 0
        self._restored_rng: Optional[torch.Tensor] = None
        self._checked_spec: Optional[dict] = None
        self.last_metrics: dict[str, float] = {}

    # -- data -----------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        """Dummy items; the windows are drawn in training_step."""
        return tick_loader()

    def on_train_start(self) -> None:
        """Put the dataset on the device and restore the dropout RNG of a resumed run."""
        self.data.to(self.device)
        if self._restored_rng is not None:
            torch.set_rng_state(self._restored_rng)
            self._restored_rng = None
        self._window_start, self._window_steps = time.perf_counter(), 0

    def sample(self, step: int) -> WindowBatch:
        """The training windows of optimizer step ``step`` on this rank."""
        generator = batch_generator(self.cfg.trainer.seed, self.global_rank, step)
        return self.data.train.sample(self.cfg.optim.batch_size, generator)

    # -- optimisation ---------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Cross-entropy of the actions of one batch of windows."""
        windows = self.sample(self.global_step)
        logits = self.model(**windows.inputs())
        loss, correct, count = action_loss(logits, windows)
        if self.cfg.optim.l1_coef > 0:
            loss = loss + self.cfg.optim.l1_coef * l1_penalty(self.model).to(loss.device)
        # kept on the device and read once per log interval: a .item() per step would sync a GPU
        self._stats.append(torch.stack([loss.detach().float() * count, correct.float(), count.float()]))
        return loss

    def configure_optimizers(self) -> dict:
        """AdamW with warmup + cosine decay, stepped every optimizer step."""
        optimizer, schedule = make_optimizer(self.model, self.cfg.optim, self.cfg.trainer.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log (and validate) at the configured intervals and at the end."""
        step, monitor = self.global_step, self.cfg.monitor
        self._window_steps += 1
        last = step >= self.max_optimizer_steps()
        if step % monitor.log_every == 0 or last:
            self._log(step, validate=step % monitor.validate_every == 0 or last)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss and action accuracy on the fixed held-out windows (summed over ranks)."""
        ends = self.data.validation_ends[self.global_rank::self.trainer.world_size]
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        was_training = self.model.training
        self.model.eval()
        for windows in self.data.validation.batches(ends, self.cfg.monitor.validation_batch_size):
            loss, correct, count = action_loss(self.model(**windows.inputs()), windows)
            totals += torch.stack([loss.double() * count, correct.double(), count.double()])
        self.model.train(was_training)
        if self.trainer.world_size > 1:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        loss_sum, correct, count = totals.tolist()
        return {"val/loss": loss_sum / count, "val/accuracy": correct / count} if count else {}

    def _log(self, step: int, validate: bool) -> None:
        elapsed = time.perf_counter() - self._window_start
        totals = torch.stack(self._stats).sum(0)
        if self.trainer.world_size > 1:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        loss_sum, correct, count = totals.tolist()
        world, batch = self.trainer.world_size, self.cfg.optim.batch_size
        row: dict[str, float] = {"steps": step, "samples": step * batch * world,
                                 "train/loss": loss_sum / max(count, 1), "train/accuracy": correct / max(count, 1),
                                 "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"],
                                 "perf/samples_per_sec": self._window_steps * batch * world / elapsed,
                                 "perf/tokens_per_sec": self._window_steps * batch * world * self.tokens_per_window / elapsed}
        if validate:
            row.update(self.validate())
        self._stats.clear()
        self._window_start, self._window_steps = time.perf_counter(), 0
        self.last_metrics = row
        self.log_row(row)

    # -- the shared run loop's interface (trainers/base.py) -------------------------------------
    def max_optimizer_steps(self) -> int:
        """trainer.total_steps (optimizer steps)."""
        return self.cfg.trainer.total_steps

    def gradient_clip_val(self) -> Optional[float]:
        """optim.max_grad_norm (None when 0)."""
        return self.cfg.optim.max_grad_norm or None

    def checkpoint_due(self, optimizer_step: int) -> bool:
        """Every trainer.checkpoint_every optimizer steps."""
        return optimizer_step % self.cfg.trainer.checkpoint_every == 0

    def postfix(self) -> dict[str, str]:
        """Latest training loss and validation accuracy."""
        row = self.last_metrics
        shown = {"loss": f"{row['train/loss']:.3f}"} if "train/loss" in row else {}
        if "val/accuracy" in row:
            shown["val_acc"] = f"{row['val/accuracy']:.1%}"
        return shown

    # -- checkpoints ----------------------------------------------------------------------------
    def shardlab_state(self) -> dict[str, Any]:
        """Samples seen and the torch RNG (dropout), all weights_only-safe."""
        return {"samples": self.global_step * self.cfg.optim.batch_size * self.trainer.world_size,
                "rng": {"torch": torch.get_rng_state()}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a dataset whose spec differs from the checkpoint's; restore the RNG at train start."""
        saved = checkpoint["hyper_parameters"]["config"].get("spec", {})
        ours = self.hparams["config"]["spec"]
        for key in ("obs_shape", "num_actions", "max_timestep", "mission_vocab", "max_mission_tokens"):
            if list(np.atleast_1d(saved.get(key, []))) != list(np.atleast_1d(ours.get(key, []))):
                raise ConfigError(f"data.path {self.cfg.data.path} gives spec.{key}={ours.get(key)!r} but the "
                                  f"checkpoint was trained with {saved.get(key)!r}; resume with the same dataset")
        self._restored_rng = checkpoint.get("shardlab", {}).get("rng", {}).get("torch")
