"""Checkpoint files without Lightning: reading them safely, their config, the step files of a run.

The Lightning side (atomic writes, periodic saving) is in ``checkpoint_callbacks``; this module
stays free of Lightning so that evaluating a checkpoint does not import it."""

from __future__ import annotations

import os
import re

from shardlab.torch_files import Advice, read_torch_file

LAST = "last.ckpt"
_STEP_FILE = re.compile(r"step-(\d+)\.ckpt$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt or not a shardlab checkpoint."""


CHECKPOINT = Advice("checkpoint", "pass a .ckpt file (e.g. <run dir>/checkpoints/last.ckpt)",
                    "resume from an older step-*.ckpt in the same folder")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, str]:
    """A checkpoint (loaded with ``weights_only=True``) and its file's SHA-256, from one read; a
    missing, damaged or foreign file is a CheckpointError."""
    path = os.fspath(path)
    checkpoint, sha256 = read_torch_file(path, CheckpointError, CHECKPOINT)
    if not isinstance(checkpoint, dict) or "shardlab" not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} is not a shardlab checkpoint (no 'shardlab' block)")
    if not isinstance(checkpoint["shardlab"], dict) or not isinstance(checkpoint["state_dict"], dict):
        raise CheckpointError(f"checkpoint {path} is damaged: its 'shardlab' block or state_dict is not a mapping")
    return checkpoint, sha256


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint with ``weights_only=True``; a missing or damaged file is a CheckpointError."""
    return read_checkpoint(path)[0]


def saved_config(checkpoint: dict, path: str | os.PathLike) -> dict:
    """The resolved training config a checkpoint carries (``hyper_parameters.config``); a
    CheckpointError when it has none, as in a file not written by ``shardlab train``."""
    hyper = checkpoint.get("hyper_parameters")
    config = hyper.get("config") if isinstance(hyper, dict) else None
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {os.fspath(path)} carries no config (hyper_parameters.config); "
                              "it was not written by `shardlab train`")
    return config


def step_checkpoints(folder: str) -> list[tuple[int, str]]:
    """(steps, path) of the step-*.ckpt files in ``folder``, oldest first."""
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), os.path.join(folder, name))
             for name in os.listdir(folder) if (m := _STEP_FILE.match(name))]
    return sorted(found)
