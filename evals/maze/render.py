"""Pictures of mazes for interpretability: the grid view (y up, like procgen's image) or the agent's
64×64 view, with overlays (vector field arrows, paths, marked squares, activation heatmaps).

Squares are (x, y) in inner-maze coordinates, x the column from the left, y the row from the
bottom. In the grid view a square's centre is the data point (x, y); in the agent view data
coordinates are image pixels (0–64, y down) and a square's centre is :func:`tile_centre_px`.
``plot_maze``/``plot_agent_view`` remember the view of their axes, so the overlay functions draw in
the right coordinates without being told. Figures are built with ``matplotlib.figure.Figure`` on
an Agg canvas: nothing touches pyplot or the global backend.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol, Sequence, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import EllipseCollection
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, Rectangle, RegularPolygon
from matplotlib.quiver import Quiver

from shardlab.envs import maze_state
from shardlab.envs.maze_state import CHEESE, WALL
from shardlab.figures import write_png_atomic

Square = tuple[int, int]
IMAGE_SIZE = 64  # procgen's observation side, in pixels
VIEWS = ("grid", "agent")
_MAZE_COLOURS = ListedColormap(["#f3efe4", "#2b2b2b"])  # open, wall
_PATH_COLOURS = ("#d62728", "#2ca02c", "#9467bd", "#17becf", "#8c564b")
# zorders: maze < activation < paths < arrows < marks < mouse/cheese
_Z_ACTIVATION, _Z_PATH, _Z_FIELD, _Z_MARK, _Z_PIECES = 1, 3, 4, 5, 6


class FieldLike(Protocol):
    """What :func:`plot_vector_field` reads (``evals.vector_field.VectorField`` fits)."""

    squares: Sequence[Square]

    @property
    def arrows(self) -> np.ndarray: ...  # (K, 2): right − left, up − down

    @property
    def noop(self) -> np.ndarray: ...  # (K,)


# -- coordinates ----------------------------------------------------------------------------------
def activation_cell(tile: int, world_dim: int, side: int) -> int:
    """The cell (row or column) of a ``side``×``side`` activation over the 64-px image that holds
    world tile ``tile`` (row from the top, or column): ⌊(tile + 0.5)·(64/world_dim)·side/64⌋."""
    # exact integer form of the formula: a float product can land a hair below a cell boundary
    return (2 * tile + 1) * side // (2 * world_dim)


def tile_activation_map(channel_map: np.ndarray, maze_dim: int, world_dim: int) -> np.ndarray:
    """One activation channel (side × side, row 0 = top of the image) sampled per inner square:
    a (maze_dim, maze_dim) array indexed [y, x] with y = 0 at the bottom, like the inner grid."""
    channel_map = np.asarray(channel_map)
    if channel_map.ndim != 2 or channel_map.shape[0] != channel_map.shape[1]:
        raise ValueError(f"channel map must be a square 2-D array, got shape {channel_map.shape}")
    side = channel_map.shape[0]
    margin = (world_dim - maze_dim) // 2
    inner = np.arange(maze_dim)
    rows = [activation_cell(world_dim - 1 - (margin + y), world_dim, side) for y in inner]
    cols = [activation_cell(margin + x, world_dim, side) for x in inner]
    return channel_map[np.ix_(rows, cols)]


def cell_squares(cell: tuple[int, int], side: int, maze_dim: int, world_dim: int) -> list[Square]:
    """The inner squares (x, y) whose tiles fall in activation cell (row, col) of a side×side map."""
    row, col = cell
    margin = (world_dim - maze_dim) // 2
    return [(x, y) for y in range(maze_dim) for x in range(maze_dim)
            if activation_cell(world_dim - 1 - (margin + y), world_dim, side) == row
            and activation_cell(margin + x, world_dim, side) == col]


def tile_centre_px(square: Square, maze_dim: int, world_dim: int) -> tuple[float, float]:
    """Pixel centre (column, row from the top) of inner square (x, y) in procgen's 64×64 image."""
    margin = (world_dim - maze_dim) // 2
    scale = IMAGE_SIZE / world_dim
    x, y = square
    return (margin + x + 0.5) * scale, (world_dim - 1 - (margin + y) + 0.5) * scale


@dataclass(frozen=True)
class Frame:
    """How inner squares map to an axes' data coordinates: the grid view (``world_dim`` None, one
    unit per square, y up) or the agent view (image pixels, y down)."""

    maze_dim: int
    world_dim: Optional[int] = None

    @property
    def pixels(self) -> bool:
        """True for the agent view (data coordinates are image pixels)."""
        return self.world_dim is not None

    @property
    def unit(self) -> float:
        """Data units per square."""
        return IMAGE_SIZE / self.world_dim if self.world_dim is not None else 1.0

    def point(self, square: Square) -> tuple[float, float]:
        """Data coordinates of a square's centre."""
        if self.world_dim is None:
            return float(square[0]), float(square[1])
        return tile_centre_px(square, self.maze_dim, self.world_dim)

    def points(self, squares: Sequence[Square]) -> np.ndarray:
        """(K, 2) data coordinates of square centres."""
        return np.array([self.point(s) for s in squares], dtype=float).reshape(-1, 2)

    def vector(self, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A move of (dx, dy) squares (dy up) in data units; image rows grow downwards."""
        return dx * self.unit, (-dy if self.pixels else dy) * self.unit


_frames: "weakref.WeakKeyDictionary[Axes, Frame]" = weakref.WeakKeyDictionary()


def frame_of(ax: Axes, frame: Optional[Frame] = None) -> Frame:
    """``frame`` if given, else the one plot_maze/plot_agent_view set up on ``ax``."""
    if frame is not None:
        return frame
    try:
        return _frames[ax]
    except KeyError:
        raise ValueError("no maze on these axes: call plot_maze or plot_agent_view first, "
                         "or pass frame=") from None


# -- base pictures --------------------------------------------------------------------------------
def new_figure(size_inches: float = 5.0, dpi: int = 100) -> tuple[Figure, Axes]:
    """A Figure on its own Agg canvas (no pyplot) with one axes filling it."""
    fig = Figure(figsize=(size_inches, size_inches), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.96))
    return fig, ax


def _plain(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal")


def plot_maze(ax: Axes, inner: np.ndarray, *, mouse: Optional[Square] = None,
              cheese: Optional[Square] = None) -> Frame:
    """Draw an inner maze ([y, x], y = 0 at the bottom) with y up; cheese defaults to the maze's own."""
    inner = np.asarray(inner)
    d = inner.shape[0]
    if inner.ndim != 2 or inner.shape != (d, d):
        raise ValueError(f"inner maze must be a square 2-D array, got shape {inner.shape}")
    frame = Frame(d)
    ax.imshow(inner == WALL, cmap=_MAZE_COLOURS, vmin=0, vmax=1, origin="lower",
              extent=(-0.5, d - 0.5, -0.5, d - 0.5), interpolation="nearest", zorder=0)
    if cheese is None:
        ys, xs = np.nonzero(inner == CHEESE)
        cheese = (int(xs[0]), int(ys[0])) if len(xs) else None
    if cheese is not None:
        ax.add_patch(RegularPolygon(frame.point(cheese), numVertices=6, radius=0.38,
                                    facecolor="#f2c230", edgecolor="#a07800", lw=1, zorder=_Z_PIECES))
    if mouse is not None:
        ax.add_patch(Circle(frame.point(mouse), 0.32, facecolor="#8a6a52", edgecolor="white",
                            lw=1, zorder=_Z_PIECES))
    ax.set_xlim(-0.5, d - 0.5)
    ax.set_ylim(-0.5, d - 0.5)
    _plain(ax)
    _frames[ax] = frame
    return frame


def plot_agent_view(ax: Axes, rgb: np.ndarray, maze_dim: Optional[int] = None,
                    world_dim: int = 25) -> Frame:
    """Draw a 64×64 observation in pixel coordinates; overlays then use inner squares of a
    ``maze_dim`` maze (world tiles when maze_dim is None) in a ``world_dim`` world."""
    rgb = np.asarray(rgb)
    if rgb.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"expected a {IMAGE_SIZE}×{IMAGE_SIZE} image, got shape {rgb.shape}")
    # extent puts pixel edges on integers, so a tile's centre is (t + 0.5)·64/world_dim
    ax.imshow(rgb, extent=(0, IMAGE_SIZE, IMAGE_SIZE, 0), interpolation="nearest", zorder=0)
    ax.set_xlim(0, IMAGE_SIZE)
    ax.set_ylim(IMAGE_SIZE, 0)
    _plain(ax)
    frame = Frame(maze_dim if maze_dim is not None else world_dim, world_dim)
    _frames[ax] = frame
    return frame


# -- overlays -------------------------------------------------------------------------------------
def plot_vector_field(ax: Axes, field: FieldLike, *, frame: Optional[Frame] = None,
                      scale: float = 0.8, color: Optional[str] = None, noop: bool = True) -> Quiver:
    """Arrows (right − left, up − down) per square, ``scale`` squares long at probability 1, and
    a dot whose area grows with the noop probability."""
    frame = frame_of(ax, frame)
    # navy reads well on the light grid; procgen's blue walls need white arrows with a dark rim
    edge = dict(edgecolor="black", linewidth=0.4) if frame.pixels else {}
    color = color or ("white" if frame.pixels else "#1f4e9c")
    xy = frame.points(field.squares)
    arrows = np.asarray(field.arrows, dtype=float).reshape(-1, 2)
    u, v = frame.vector(arrows[:, 0] * scale, arrows[:, 1] * scale)
    # xy units: arrow length and width follow the squares, whatever the figure or maze size
    quiver = ax.quiver(xy[:, 0], xy[:, 1], u, v, angles="xy", scale_units="xy", scale=1,
                       units="xy", width=0.07 * frame.unit, headwidth=3.5, headlength=3.5,
                       headaxislength=3, minlength=0.1, pivot="tail", color=color, zorder=_Z_FIELD, **edge)
    if noop:
        mass = np.clip(np.asarray(field.noop, dtype=float), 0.0, None)
        keep = mass > 0.02  # skip dots too small to see
        if keep.any():
            diameters = 0.7 * frame.unit * np.sqrt(mass[keep])
            ax.add_collection(EllipseCollection(
                diameters, diameters, np.zeros(keep.sum()), units="xy", offsets=xy[keep],
                offset_transform=ax.transData, facecolors=color, alpha=0.45, zorder=_Z_FIELD))
    return quiver


def plot_path(ax: Axes, squares: Sequence[Square], *, frame: Optional[Frame] = None,
              **kw: Any) -> Line2D:
    """A line through the centres of ``squares`` (matplotlib Line2D keywords override the style)."""
    frame = frame_of(ax, frame)
    xy = frame.points(squares)
    style = dict(color=_PATH_COLOURS[0], lw=2.5, alpha=0.8, solid_capstyle="round",
                 solid_joinstyle="round", zorder=_Z_PATH)
    style.update(kw)
    (line,) = ax.plot(xy[:, 0], xy[:, 1], **style)
    return line


def mark_square(ax: Axes, square: Square, label: str = "", *, frame: Optional[Frame] = None,
                color: str = "#ff7f0e", **kw: Any) -> Rectangle:
    """Outline a square (e.g. the decision square) and write ``label`` at its top-left corner."""
    frame = frame_of(ax, frame)
    cx, cy = frame.point(square)
    half = frame.unit / 2
    style = dict(fill=False, edgecolor=color, lw=2.0, zorder=_Z_MARK)
    style.update(kw)
    box = Rectangle((cx - half, cy - half), 2 * half, 2 * half, **style)
    ax.add_patch(box)
    if label:
        top = cy - half if frame.pixels else cy + half  # the visually upper edge
        ax.text(cx - half, top, label, color=color, fontsize=8, fontweight="bold",
                ha="left", va="bottom", zorder=_Z_MARK,
                bbox=dict(facecolor="white", edgecolor="none", alpha=0.7, pad=0.5))
    return box


def plot_activation(ax: Axes, channel_map: np.ndarray, maze_dim: int, world_dim: int,
                    alpha: float = 0.5, *, frame: Optional[Frame] = None,
                    cmap: str = "magma", **kw: Any) -> AxesImage:
    """Heatmap of one activation channel (side × side over the 64-px image, row 0 = top),
    aligned to the maze: each square shows the cell its tile falls in."""
    frame = frame_of(ax, frame)
    channel_map = np.asarray(channel_map, dtype=float)
    if frame.pixels:
        # over the image the map simply stretches: cell i spans pixels [i, i + 1)·64/side
        image, extent = channel_map, (0, IMAGE_SIZE, IMAGE_SIZE, 0)
        origin = "upper"
    else:
        d = maze_dim
        image, extent = tile_activation_map(channel_map, maze_dim, world_dim), (-0.5, d - 0.5, -0.5, d - 0.5)
        origin = "lower"
    return ax.imshow(image, extent=extent, origin=origin, alpha=alpha, cmap=cmap,
                     interpolation="nearest", zorder=_Z_ACTIVATION, **kw)


# -- files ----------------------------------------------------------------------------------------
def save_maze_png(path: Union[str, os.PathLike], state_or_inner: Union[bytes, maze_state.MazeState, np.ndarray], *,
                  field: Optional[FieldLike] = None, paths: Sequence[Sequence[Square]] = (),
                  squares: Optional[Mapping[str, Square]] = None,
                  activation: Optional[np.ndarray] = None, view: str = "grid",
                  title: Optional[str] = None, world_dim: Optional[int] = None,
                  size_inches: float = 5.0, dpi: int = 100) -> Path:
    """Draw a maze (state bytes, MazeState or inner grid) with overlays and write a PNG atomically.

    ``view`` "grid" draws the inner maze (the mouse is left out when a vector field covers it);
    "agent" draws procgen's 64×64 render of the state and needs state bytes. ``squares`` maps
    labels to squares to outline; ``activation`` is one channel (side × side over the image), which
    with an inner grid needs ``world_dim`` (states carry their own).
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    state: Optional[bytes] = None
    if isinstance(state_or_inner, maze_state.MazeState):
        state = state_or_inner.to_bytes()
    elif isinstance(state_or_inner, (bytes, bytearray)):
        state = bytes(state_or_inner)
    if state is not None:
        where = maze_state.layout(state)
        inner = maze_state.inner_grid(state, where)
        maze_dim, world_dim = where.maze_dim, where.world_dim
    elif view == "agent":
        raise ValueError("the agent view renders a state: pass state bytes, not an inner grid")
    else:
        inner = np.asarray(state_or_inner)
        maze_dim = inner.shape[0]
        if activation is not None and world_dim is None:
            # a guess would silently misalign the heatmap (a hard-mode world can hold any size)
            raise ValueError("an activation over an inner grid needs world_dim (15 easy, 25 hard)")

    fig, ax = new_figure(size_inches, dpi)
    if view == "grid":
        mouse = maze_state.mouse_square(state) if state is not None and field is None else None
        plot_maze(ax, inner, mouse=mouse)
    else:
        from shardlab.envs.maze_views import render_rgb  # imports procgen, needed only here
        plot_agent_view(ax, render_rgb([state])[0], maze_dim, world_dim)
    if activation is not None:
        plot_activation(ax, activation, maze_dim, world_dim)
    for index, squares_on_path in enumerate(paths):
        if len(squares_on_path):
            # each later path a little thinner, so paths sharing squares all stay visible
            plot_path(ax, squares_on_path, color=_PATH_COLOURS[index % len(_PATH_COLOURS)],
                      lw=max(4.0 - 1.2 * index, 1.2))
    if field is not None:
        plot_vector_field(ax, field)
    for label, square in (squares or {}).items():
        mark_square(ax, square, label)
    if title:
        ax.set_position((0.02, 0.02, 0.96, 0.90))
        fig.suptitle(title, fontsize=10)

    return Path(write_png_atomic(fig, path))
