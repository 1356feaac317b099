"""Inputs shared by the probe, patching, scrubbing, Jacobian and ReLU-ablation evals (beside
``evals.maze.common``, which the steering evals share): seeded test mazes with the mouse
placed by rule, activation caches, the activation cells a maze covers, folded move logits, the
policy's KL and a freshly initialised network of a checkpoint's architecture.

Squares are (x, y) in inner-maze coordinates (x from the left, y from the bottom); activation
cells are (row, col) with row 0 at the top of the image.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from shardlab.envs import maze_state
from shardlab.envs.eval_mazes import EvalMaze, eval_mazes
from shardlab.evals.maze.common import TrainEnv, activation_square_cell, policy_input, train_env
from shardlab.evals.maze.vector_field import ACTION_GROUPS
from shardlab.evals.suite.context import EvalContext
from shardlab.models.hooks import HookPoint, hooked

Square = tuple[int, int]
MOUSE_PLACEMENTS = ("start", "decision", "random")
PUBLISHED_LAYER = "embedder.block2.res1.resadd_out"


def check_mouse_placement(mouse: str) -> None:
    """ValueError unless ``mouse`` is one of :data:`MOUSE_PLACEMENTS`."""
    if mouse not in MOUSE_PLACEMENTS:
        raise ValueError(f"mouse must be one of {', '.join(MOUSE_PLACEMENTS)}; got {mouse!r}")


def interp_mazes(env: TrainEnv, n: int, seed: int, mouse: str = "start", **filters) -> list[EvalMaze]:
    """``n`` seeded procgen mazes of the checkpoint's mode and sizes (cheese anywhere unless
    ``filters`` say otherwise), the mouse placed by ``mouse`` (``start``, ``decision``, ``random``)."""
    check_mouse_placement(mouse)
    if mouse == "decision":
        filters["require_decision_square"] = True
    filters.setdefault("min_size", env.min_size)
    mazes = eval_mazes(n, seed, max_size=env.max_size, mode=env.mode, **filters)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    return [_with_mouse(maze, mouse, rng) for maze in mazes]


def maze_inputs(ctx: EvalContext, n: int, mouse: str, layers: Sequence[str] = ()
                ) -> tuple[TrainEnv, list[EvalMaze], torch.Tensor]:
    """The checkpoint's env, ``ctx.count(n)`` seeded mazes with the mouse placed by ``mouse``, and
    the policy's input batch of those mazes; HookError first if the policy lacks one of ``layers``."""
    check_layers(ctx.policy, layers)  # before the mazes, which take the time
    env = train_env(ctx.train_config)
    mazes = interp_mazes(env, ctx.count(n), ctx.seed, mouse)
    return env, mazes, policy_input(ctx.policy, [m.state for m in mazes], env.obs)


def _with_mouse(maze: EvalMaze, mouse: str, rng: np.random.Generator) -> EvalMaze:
    if mouse == "start":
        return maze
    if mouse == "decision":
        square = maze.decision_square
    else:
        square = random_square(maze_state.inner_grid(maze.state), rng, avoid=(maze.cheese,))
    return EvalMaze(maze_state.with_mouse_at(maze.state, square), maze.seed, maze.index, maze.source,
                    maze.maze_dim, maze.cheese, maze.decision_square)


def open_squares(inner: np.ndarray) -> list[Square]:
    """Open (non-wall) squares of an inner grid, row by row from the bottom."""
    ys, xs = np.nonzero(inner != maze_state.WALL)
    return [(int(x), int(y)) for y, x in zip(ys, xs)]


def random_square(inner: np.ndarray, rng: np.random.Generator, avoid: Sequence[Optional[Square]] = ()
                  ) -> Optional[Square]:
    """A uniformly random open square not in ``avoid``; None if there is none."""
    choices = [s for s in open_squares(inner) if s not in avoid]
    return choices[int(rng.integers(len(choices)))] if choices else None


def hook_points(model: nn.Module) -> list[str]:
    """Names of the model's HookPoints in forward order."""
    return [name for name, module in model.named_modules() if isinstance(module, HookPoint)]


def check_layers(model: nn.Module, layers: Sequence[str]) -> None:
    """HookError (with close names) for any name in ``layers`` the model does not have."""
    with hooked(model, cache=layers):
        pass


def short_name(layer: str) -> str:
    """A layer name without the ``embedder.`` prefix, for metric names and plots."""
    return layer.removeprefix("embedder.")


def cached_activations(model: nn.Module, x: torch.Tensor, layers: Sequence[str], batch_size: int = 256
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, {layer: activation}) for the input batch ``x``, run in chunks under inference mode."""
    logits, acts = [], {layer: [] for layer in layers}
    with torch.inference_mode(), hooked(model, cache=layers) as store:
        for start in range(0, len(x), batch_size):
            out = model(x[start:start + batch_size])
            logits.append(out[0] if isinstance(out, (tuple, list)) else out)
            for layer in layers:
                acts[layer].append(store[layer])
    return torch.cat(logits), {layer: torch.cat(parts) for layer, parts in acts.items()}


def world_tile(square: Square, maze_dim: int, world_dim: int) -> tuple[int, int]:
    """The world tile (row from the top, column) of inner square (x, y)."""
    margin = (world_dim - maze_dim) // 2
    return world_dim - 1 - (margin + square[1]), margin + square[0]


def maze_cells(maze_dim: int, world_dim: int, obs: str, side: int) -> np.ndarray:
    """(side, side) bool mask of the activation cells that hold some square of the inner maze."""
    mask = np.zeros((side, side), bool)
    for y in range(maze_dim):
        for x in range(maze_dim):
            mask[activation_square_cell((x, y), maze_dim, world_dim, obs, side)] = True
    return mask


def move_logits(logits: torch.Tensor) -> torch.Tensor:
    """(N, 5) folded move logits (left, down, up, right, noop): logsumexp over each move's actions,
    so differences are log-ratios of folded move probabilities."""
    return torch.stack([logits[..., list(group)].logsumexp(-1) for group in ACTION_GROUPS], -1)


def action_kl(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-input KL(π_reference ‖ π) in nats over the 15 actions."""
    reference = torch.log_softmax(reference_logits.double(), -1)
    other = torch.log_softmax(logits.double(), -1)
    return (reference.exp() * (reference - other)).sum(-1)


def fresh_network(train_config: DictConfig, seed: int) -> nn.Module:
    """A randomly initialised network of the checkpoint's architecture (eval mode), seeded,
    without touching the global RNG."""
    from shardlab.trainers.kinds import get_kind  # evals → trainers; imported here to keep this module light

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_kind(train_config.algo).build_network(train_config).eval()
