"""The ``trainer`` section every kind's schema shares (Lightning settings, run length,
checkpointing, seed, loggers) and its checks. Imports neither torch nor Lightning."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Callable, Sequence

from shardlab.configs.checks import ConfigError, need, need_one_of, need_seed

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = ("auto", "32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
LOGGERS = ("tensorboard", "csv", "wandb")  # trainer.loggers: Lightning loggers built by trainers/loggers.py
DEFAULT_LOGGERS = ("tensorboard", "csv")
# "*-true" precisions cast the whole network; the PPO and classification modules feed it float32
# tensors they build themselves (rollouts, in-memory images), so only the decision transformer can
TRUE_PRECISIONS = ("16-true", "bf16-true", "64-true")


@dataclass
class TrainerConfig:
    """Lightning trainer, run length and checkpointing; step counts are env steps over all ranks."""

    total_steps: int = 25_000_000
    accelerator: str = "auto"  # cpu, gpu, auto
    devices: int = 1  # per node; > 1 runs DDP, each rank with its own envs
    num_nodes: int = 1
    precision: str = "32-true"  # auto: bf16-mixed on a CPU with AMX-BF16, else 32-true (trainers/precision.py)
    checkpoint_every: int = 1_000_000  # env steps between checkpoints
    keep_checkpoints: int = 3  # step-*.ckpt files kept besides last.ckpt
    seed: int = 0
    progress_bar: bool = True
    # where metric rows go besides metrics.jsonl: tensorboard (<run_dir>/tb), csv (<run_dir>/csv), wandb
    loggers: list[str] = field(default_factory=lambda: list(DEFAULT_LOGGERS))


def run_schema(class_name: str, doc: str, module: str, *, name: str, algo: str, sections: dict[str, type],
               trainer: Callable[[], TrainerConfig] = TrainerConfig) -> type:
    """A kind's top-level config dataclass: ``name``, ``algo``, the kind's sections in order, ``trainer``."""
    # every run has this one shape, which trainers/run.py and configs rely on; building it here
    # states it once instead of in four hand-written dataclasses that could drift apart
    fields: list[tuple[str, Any, Any]] = [("name", str, name), ("algo", str, algo)]
    fields += [(key, section, field(default_factory=section)) for key, section in sections.items()]
    fields.append(("trainer", TrainerConfig, field(default_factory=trainer)))
    schema = make_dataclass(class_name, fields, namespace={"__doc__": doc})
    schema.__module__ = module  # error messages point at the file that declares the kind
    return schema


def validate_trainer(trainer: Any) -> None:
    """Checks of the ``trainer`` section every kind shares."""
    need(trainer.total_steps >= 1, f"trainer.total_steps must be >= 1, got {trainer.total_steps}")
    need(trainer.devices >= 1 and trainer.num_nodes >= 1, "trainer.devices and trainer.num_nodes must be >= 1")
    need_one_of(trainer.accelerator, ACCELERATORS, "trainer.accelerator")
    need_one_of(trainer.precision, PRECISIONS, "trainer.precision")
    need(trainer.checkpoint_every >= 1, "trainer.checkpoint_every must be >= 1 step")
    need(trainer.keep_checkpoints >= 0, "trainer.keep_checkpoints must be >= 0")
    need_seed(trainer.seed, "trainer.seed")
    unknown = [name for name in trainer.loggers if name not in LOGGERS]
    need(not unknown, f"trainer.loggers has unknown logger {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(LOGGERS)}")
    need(len(set(trainer.loggers)) == len(trainer.loggers),
         f"trainer.loggers names a logger twice: {list(trainer.loggers)}")


def need_mixed_precision(trainer: Any, algo: str) -> None:
    """ConfigError for a "*-true" precision, which casts the network but not the inputs a PPO or
    classification module builds itself (the run would stop with a dtype error)."""
    need(trainer.precision not in TRUE_PRECISIONS,
         f"trainer.precision={trainer.precision} does not work with algo {algo} (its inputs stay float32); "
         "use 32-true, 16-mixed or bf16-mixed")


def check_loggers_installed(names: Sequence[str]) -> None:
    """ConfigError when a chosen logger's optional package is missing (wandb is an extra)."""
    if "wandb" in names:
        try:
            importlib.import_module("wandb")  # only whether it imports; a run imports it later
        except ImportError:
            raise ConfigError("trainer.loggers has wandb but wandb is not installed; "
                              "pip install 'shardlab[wandb]' or drop it") from None
