"""How every progress bar is drawn: ``tqdm(..., **progress_kwargs())``.

On a terminal a bar redraws often (tqdm's default of 0.1 s); when stderr is a file or a CI log a
redraw is a new line, so bars then redraw at most every ``log_interval`` seconds. tqdm's own
``TQDM_MININTERVAL`` environment variable, when set, wins. Deliberately light (no torch, no
Lightning): evals and scripts import it.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional, TextIO

TERMINAL_INTERVAL = 0.1  # seconds between redraws on a terminal (tqdm's default)
LOG_INTERVAL = 5.0  # seconds between redraws when stderr is a file, a pipe or a CI log


def is_terminal(stream: Optional[TextIO] = None) -> bool:
    """True when ``stream`` (default: sys.stderr, where tqdm draws) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_kwargs(log_interval: float = LOG_INTERVAL, terminal_interval: float = TERMINAL_INTERVAL,
                    stream: Optional[TextIO] = None) -> dict[str, Any]:
    """Keyword arguments for ``tqdm``: ``mininterval`` by whether stderr is a terminal."""
    if os.environ.get("TQDM_MININTERVAL"):
        return {}
    return {"mininterval": terminal_interval if is_terminal(stream) else log_interval}
