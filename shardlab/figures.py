"""The one way shardlab writes a figure: a matplotlib figure saved as a PNG with shardlab.atomic.

Every eval plot, report picture and script figure goes through :func:`write_png_atomic`, so a PNG is
never half-written and its folder is created when missing; :func:`png_bytes` is the same encoding
kept in memory (the explorer sends it to the browser). Light on purpose: matplotlib is only
imported (pyplot only for ``pyplot=True``) by whoever made the figure.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Optional, Union

from shardlab.atomic import save_with

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def write_png_atomic(fig: "Figure", path: Union[str, os.PathLike], dpi: Optional[float] = None, *,
                     pyplot: bool = False) -> str:
    """Write ``fig`` as a PNG at ``path`` (at ``dpi``, default the figure's) atomically, the folder
    created if needed; returns the path as a string.

    ``pyplot=True`` is for figures made with ``matplotlib.pyplot``: they are laid out
    (``tight_layout``) before the write and closed after it, since pyplot keeps every figure alive
    until it is closed. Figures built on their own Agg canvas keep their layout as it is.
    """
    if pyplot:
        fig.tight_layout()
    save_with(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi), make_parents=True)
    if pyplot:
        from matplotlib import pyplot as plt  # figures made with pyplot: their callers loaded it

        plt.close(fig)
    return os.fspath(path)


def png_bytes(fig: "Figure", dpi: Optional[float] = None) -> bytes:
    """``fig`` encoded as PNG bytes (at ``dpi``, default the figure's), for a figure that is sent, not saved."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
