"""One eval request: what to evaluate, with which suite, where the outputs go and how a sweep is
split, built and validated once. ``shardlab eval``, ``shardlab.evaluate()`` and the sweep all make
an :class:`EvalRequest` and hand it to ``evaluator``; a bad field is an EvalError (one line)
before anything runs or is written."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

from shardlab.envs.maze_config import BACKENDS
from shardlab.evals.suite.base import EvalError
from shardlab.evals.suite.suite_file import check_seed
from shardlab.trainers.trainer_config import LOGGERS

# set by the launchers a sweep shards itself under: SLURM job arrays, then torchrun
SLURM_TASK, SLURM_COUNT, SLURM_MIN, SLURM_STEP = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
                                                  "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` as (K, N) with 0 <= K < N; EvalError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise EvalError(f"--shard {text!r}: write it K/N, e.g. --shard 0/4 (the first of 4 shards)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise EvalError(f"--shard {text}: K must be in 0..N-1 and N >= 1, e.g. --shard 0/{max(count, 1)}")
    return index, count


def shard_from_env(environ: Mapping[str, str]) -> Optional[tuple[tuple[int, int], str]]:
    """The shard a launcher gives this process, with where it came from: a SLURM job array
    (``SLURM_ARRAY_TASK_ID`` relative to ``SLURM_ARRAY_TASK_MIN``, in steps of
    ``SLURM_ARRAY_TASK_STEP``, of ``SLURM_ARRAY_TASK_COUNT``) or torchrun (``RANK`` of
    ``WORLD_SIZE``); None when neither is set or there is one task."""
    def number(name: str, default: Optional[int] = None) -> Optional[int]:
        value = environ.get(name, "")
        if not value.strip():
            return default
        try:
            return int(value)
        except ValueError:
            raise EvalError(f"environment variable {name}={value!r} is not an integer; unset it or pass --shard K/N") \
                from None

    count = number(SLURM_COUNT)
    if count is not None and number(SLURM_TASK) is not None:
        step = number(SLURM_STEP, 1) or 1
        offset = number(SLURM_TASK) - (number(SLURM_MIN, 0) or 0)
        if offset % step:
            raise EvalError(f"{SLURM_TASK} is not on the array's step {step}; pass --shard K/N")
        source = f"{SLURM_TASK}={environ[SLURM_TASK]} of {SLURM_COUNT}={count}"
        return (parse_shard(f"{offset // step}/{count}"), source) if count > 1 else None
    world = number("WORLD_SIZE")
    if world is not None and world > 1:
        rank = number("RANK", 0)
        return parse_shard(f"{rank}/{world}"), f"RANK={rank} of WORLD_SIZE={world}"
    return None


def is_run_dir(path: Any) -> bool:
    """True for a folder with a ``checkpoints/`` subfolder (a ``shardlab train`` run directory)."""
    return isinstance(path, (str, os.PathLike)) and os.path.isdir(os.path.join(path, "checkpoints"))


@dataclass(frozen=True)
class EvalRequest:
    """Everything one ``shardlab eval`` needs, checked when made.

    ``checkpoint`` is a checkpoint file, a training run directory (a sweep over its checkpoints),
    ``oracle:NAME`` or a network object (both with ``recipe``), or None with ``weights`` and
    ``recipe``. ``out`` is the output folder (``evaluate`` without one uses a temporary folder).
    ``env_backend`` (procgen or native) replaces a maze checkpoint's ``env.backend`` in the config
    the evals see. ``loggers``, ``baseline``/``tolerance``/``min_effect`` and ``summary`` concern
    the written outputs; ``every`` and ``shard`` (K, N) the sweep. Under a SLURM job array or torchrun a
    sweep's shard comes from the environment unless ``shard`` is given (``shard_source`` says).
    """

    checkpoint: Any = None
    suite: str = "ci"
    only: Optional[tuple[str, ...]] = None
    limit: Optional[int] = None
    seed: Optional[int] = None
    device: Any = "auto"
    out: Optional[str] = None
    recipe: Any = None
    weights: Optional[str] = None
    overrides: tuple[str, ...] = ()
    progress: bool = False
    log_episodes: bool = False
    env_backend: Optional[str] = None  # play the maze evals on this env.backend instead of the checkpoint's
    loggers: tuple[str, ...] = ()
    baseline: Optional[str] = None
    tolerance: Optional[float] = None
    min_effect: Optional[float] = None
    summary: Optional[str] = None
    every: Optional[int] = None
    shard: Optional[tuple[int, int]] = None
    shard_source: Optional[str] = None
    environ: Optional[Mapping[str, str]] = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("only", _names(self.only))
        put("overrides", tuple(self.overrides or ()))
        put("loggers", tuple(self.loggers or ()))
        if isinstance(self.checkpoint, os.PathLike):
            put("checkpoint", os.fspath(self.checkpoint))
        if isinstance(self.shard, str):
            put("shard", parse_shard(self.shard))
        if self.sweep and self.shard is None and self.shard_source is None:
            found = shard_from_env(os.environ if self.environ is None else self.environ)
            if found is not None:
                put("shard", found[0])
                put("shard_source", found[1])
        self._validate()

    @property
    def sweep(self) -> bool:
        """True when the request evaluates a training run's checkpoints."""
        return self.every is not None or is_run_dir(self.checkpoint) or \
            (isinstance(self.checkpoint, str) and os.path.isdir(self.checkpoint))

    def replace(self, **changes: Any) -> "EvalRequest":
        """A copy with ``changes`` (validated again); a sweep makes one per checkpoint."""
        return dataclasses.replace(self, **changes)

    def _validate(self) -> None:
        limit = self.limit
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise EvalError(f"limit must be a positive integer, got {limit!r}")
        if self.seed is not None:
            check_seed(self.seed, "--seed")
        if self.env_backend is not None and self.env_backend not in BACKENDS:
            raise EvalError(f"--env-backend must be one of {', '.join(BACKENDS)}, got {self.env_backend!r}")
        if self.out is not None:
            check_out_dir(self.out)
        self._check_loggers()
        if self.sweep:
            self._check_sweep()
        elif self.shard is not None:
            raise EvalError("--shard splits a sweep: give a training run directory (a folder with checkpoints/)")
        from shardlab.evals.suite.report import check_summary  # the report module's own rule

        check_summary(self.summary)
        if self.baseline is None and (self.tolerance is not None or self.min_effect is not None):
            raise EvalError("--tolerance and --min-effect need --baseline OLD/results.json")
        resolve_device(self.device)

    def _check_loggers(self) -> None:
        unknown = sorted(set(self.loggers) - set(LOGGERS))
        if unknown:
            raise EvalError(f"--loggers {','.join(unknown)}: unknown; use some of {', '.join(LOGGERS)}")
        if len(set(self.loggers)) != len(self.loggers):
            raise EvalError(f"--loggers names a logger twice: {','.join(self.loggers)}")
        if not self.loggers:
            return
        from shardlab.trainers.loggers import check_logger_paths
        from shardlab.trainers.trainer_config import check_loggers_installed

        check_loggers_installed(self.loggers)
        if self.out is not None:
            check_logger_paths(self.loggers, self.out)  # an existing --out folder the loggers would continue

    def _check_sweep(self) -> None:
        if not is_run_dir(self.checkpoint):
            what = "--every needs a training run directory" if not isinstance(self.checkpoint, str) or \
                os.path.isfile(self.checkpoint) else f"{self.checkpoint} is not a training run directory"
            raise EvalError(f"{what} (a folder with checkpoints/, made by `shardlab train`)")
        if self.every is not None and (isinstance(self.every, bool) or not isinstance(self.every, int)
                                       or self.every < 1):
            raise EvalError(f"--every must be a positive integer, got {self.every!r}")
        if self.recipe is not None or self.weights is not None:
            raise EvalError("a run directory's checkpoints carry their own config; drop --recipe/--weights")
        if any(value is not None for value in (self.baseline, self.tolerance, self.min_effect, self.summary)):
            raise EvalError("--baseline, --tolerance, --min-effect and --summary take one checkpoint, "
                            "not a run directory")
        if self.out is None:
            raise EvalError("a sweep needs --out, the folder its per-checkpoint results and sweep.json go to")


def _names(only: Union[str, Sequence[str], None]) -> Optional[tuple[str, ...]]:
    if only is None:
        return None
    names = (only,) if isinstance(only, str) else tuple(only)
    return names or None


def check_out_dir(out: Any) -> None:
    """EvalError if ``out`` cannot be the output folder (empty, an existing file, or under one)."""
    if not os.fspath(out).strip():
        raise EvalError("--out is empty; name the output folder, e.g. --out evals/run1")
    from shardlab.paths import file_in_the_way

    blocker = file_in_the_way(out)
    if blocker is not None:
        raise EvalError(f"--out {out}: {blocker} is a file, not a folder; choose another output folder")


def resolve_device(device: Any) -> Any:
    """``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N`` as a torch.device."""
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise EvalError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        if (parsed.index or 0) >= count:
            raise EvalError(f"device {device!r} asked for but this machine has {count} CUDA GPU(s); use --device cpu")
    return parsed
