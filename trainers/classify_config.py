"""The schema of ``algo: classify`` (an image classifier, trainers/classify.py) and its checks.
Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import DictConfig

from shardlab.configs.checks import need, need_finite, need_one_of, need_seed
from shardlab.models.classifier_config import ARCHS, ClassifierConfig, layer_names, sparse_names
from shardlab.models.sparse_config import validate_sparse_options
from shardlab.trainers.trainer_config import TrainerConfig, need_mixed_precision, run_schema

SOURCES = ("digits", "npz", "folder")  # where trainers/datasets.py reads the images from


@dataclass
class DataConfig:
    """Where the images come from and how they are split."""

    source: str = "digits"  # digits (bundled with scikit-learn), npz (x/y arrays) or folder (path/<class>/<image>)
    path: Optional[str] = None  # the .npz file or image folder
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    channels: int = 1  # folder: 1 reads grayscale, 3 RGB
    image_size: int = 0  # folder: resize to this square size; 0 keeps the images' common size
    shape: Optional[list[int]] = None  # (C, H, W) of one image; filled from the data when a run starts
    num_classes: Optional[int] = None  # filled from the data when a run starts


@dataclass
class OptimConfig:
    """Adam on cross-entropy."""

    lr: float = 1e-3
    lr_schedule: str = "cosine"  # cosine decay to 0 over the run, or constant
    weight_decay: float = 0.0
    batch_size: int = 64  # per rank
    eval_every: int = 5000  # training samples between validation passes (one metrics row each)


ClassifyConfig = run_schema("ClassifyConfig", "A supervised classification run.", __name__, name="digits",
                            algo="classify", sections={"data": DataConfig, "model": ClassifierConfig, "optim": OptimConfig},
                            trainer=lambda: TrainerConfig(total_steps=50_000, checkpoint_every=10_000))


def validate_classify(cfg: DictConfig) -> None:
    """Checks of a classification config."""
    data, model, optim = cfg.data, cfg.model, cfg.optim
    need_one_of(data.source, SOURCES, "data.source")
    need(data.source == "digits" or bool(data.path), f"data.source={data.source} needs data.path "
         f"({'a .npz file with x and y arrays' if data.source == 'npz' else 'a folder with one subfolder per class'})")
    need(0 <= data.val_fraction < 1 and 0 < data.test_fraction < 1 and data.val_fraction + data.test_fraction < 1,
         "data.val_fraction must be in [0, 1), data.test_fraction in (0, 1), and their sum < 1")
    need(data.channels in (1, 3), f"data.channels must be 1 (grayscale) or 3 (RGB), got {data.channels}")
    need(data.image_size >= 0, f"data.image_size must be >= 0 (0 keeps the size), got {data.image_size}")
    need(data.shape is None or (len(data.shape) == 3 and min(data.shape) >= 1),
         f"data.shape must be [C, H, W] of positive sizes or null, got {data.shape}")
    need(data.num_classes is None or data.num_classes >= 1,
         f"data.num_classes must be >= 1 or null (read from the data), got {data.num_classes}")
    need_seed(data.split_seed, "data.split_seed")
    need_one_of(model.arch, ARCHS, "model.arch")
    need(all(w >= 1 for w in [*model.channels, *model.hidden]), "model.channels and model.hidden widths must be >= 1")
    need(model.arch == "mlp" or len(model.channels) >= 1, "model.arch=cnn needs at least one model.channels entry")
    validate_sparse_options(model)
    names = layer_names(model.arch, model.channels, model.hidden)
    need(model.activation == "relu" or bool(sparse_names(names, model.sparse_layers)),
         f"model.sparse_layers {list(model.sparse_layers)} match none of this network's activations "
         f"({', '.join(names)}); use names or patterns such as '*' or 'act1'")
    need(0 < model.weight_density <= 1, f"model.weight_density must be in (0, 1], got {model.weight_density}")
    need_finite(optim, "optim", ["lr", "weight_decay"])
    need(optim.lr > 0, f"optim.lr must be > 0, got {optim.lr}")
    need(optim.lr_schedule in ("cosine", "constant"),
         f"optim.lr_schedule must be cosine or constant, got {optim.lr_schedule!r}")
    need(optim.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {optim.weight_decay}")
    need(optim.batch_size >= 1 and optim.eval_every >= 1, "optim.batch_size and optim.eval_every must be >= 1")
    need_mixed_precision(cfg.trainer, cfg.algo)
