"""Path checks shared by every command that creates a folder (run dirs, eval outputs, datasets)."""

from __future__ import annotations

import os
from typing import Optional


def file_in_the_way(folder: str | os.PathLike) -> Optional[str]:
    """The existing file (not folder) at ``folder`` or at a folder above it, which would stop
    ``os.makedirs(folder)``; None when the folder can be created or already exists."""
    path = os.path.abspath(folder)
    while True:
        if os.path.exists(path):
            return None if os.path.isdir(path) else path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
