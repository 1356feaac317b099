"""Reading a torch file the one safe way: ``weights_only=True`` (never unpickling code), from one
read of the file, which also gives its SHA-256. Checkpoints (``trainers.checkpointing``) and
published weights files (``models.weights``) both come through here, each with its own error type
and advice."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Advice:
    """What a one-line error says about a file of one sort: its name and what to do."""

    label: str  # "checkpoint", "weights file"
    folder: str  # the fix when a folder was given
    damaged: str  # the fix when the file does not load


def read_torch_file(path: str | os.PathLike, error: type[Exception], advice: Advice) -> tuple[Any, str]:
    """The object a torch file holds (on the CPU, weights_only) and the file's SHA-256, from one
    read; ``error`` with a one-line message when it is a folder, missing or damaged."""
    import torch

    path = os.fspath(path)
    if os.path.isdir(path):
        raise error(f"{advice.label} {path} is a folder, not a {advice.label}; {advice.folder}")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise error(f"{advice.label} {path} does not exist; check the path") from None
    except OSError as exc:
        raise error(f"{advice.label} {path} cannot be read ({exc.strerror or type(exc).__name__}); "
                    "check its permissions") from None
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncation and foreign files raise many different types
        detail = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise error(f"{advice.label} {path} is corrupt or truncated, or not a torch file ({type(exc).__name__}"
                    f"{': ' + detail if detail else ''}); {advice.damaged}") from None
    return loaded, hashlib.sha256(data).hexdigest()
