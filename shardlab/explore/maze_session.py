"""What the explorer computes for a maze policy (a PPO checkpoint, published weights or a scripted
policy): mazes from seeds and ASCII, the vector field under steering and retargeting edits, one
layer's activations, the decision square and paths, and played episodes.

Every number comes from the evals' own functions: the field is
``evals.maze.vector_field.vector_field`` (one batched forward over every open square), the
steering vector ``evals.maze.steering.cheese_vector``, the retargeting edit
``evals.maze.retargeting.target_edit`` with the channels and values the retargeting eval chooses
(``evals.maze.common.cheese_channel_scores`` / ``choose_channels``,
``retargeting.cheese_activation_means`` over its channel mazes), the geometry
``envs.maze_geometry``, and activation cells ``evals.maze.common.activation_square_cell``.
Squares are (x, y) in inner-maze coordinates, y = 0 at the bottom.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Optional

import numpy as np
import torch

from shardlab.envs import maze_geometry, maze_state
from shardlab.envs.maze_build import make_env_from_maze, parse_ascii, to_ascii
from shardlab.envs.maze_state import WALL, StateError
from shardlab.explore.validate import RequestError, check_choice, check_square
from shardlab.trainers.restore import ORACLE_PREFIX, Trained

START = maze_geometry.START
OBSERVATION_PIXELS = 256  # the observation PNG is upscaled (nearest) to about this side
_CACHE_SIZE = 16  # mazes whose unedited field, cheese vector... a session keeps


def data_url(png: bytes) -> str:
    """A PNG as a data URL."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_of(image: np.ndarray, scale: int = 1) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 image, upscaled ``scale`` times by nearest neighbour."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)  # speed over size: it travels once, locally
    return buffer.getvalue()


@dataclass(frozen=True)
class Field:
    """One batched forward over the maze: the vector field, the value at every square (K,) and
    layers' activations (C, H, W) with the mouse where it is, by layer name (filled as they are asked for)."""

    field: Any  # evals.maze.vector_field.VectorField
    values: np.ndarray
    activations: dict[str, np.ndarray]

    def at(self, square: tuple[int, int]) -> int:
        """The batch row of the mouse on ``square``."""
        return self.field.squares.index(tuple(square))


class _Cache(OrderedDict):
    """A small least-recently-used map."""

    def __init__(self, size: int = _CACHE_SIZE):
        super().__init__()
        self.size = size

    def get_or_make(self, key: Any, make: Callable[[], Any]) -> Any:
        """The value of ``key``, made (and kept) when missing."""
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        if len(self) > self.size:
            self.popitem(last=False)
        return value


class MazeSession:
    """One maze policy served by the explorer; every method takes a checked request body and is
    safe to call from several threads (one forward pass at a time: hooks are per model)."""

    kind = "maze"

    def __init__(self, trained: Trained):
        from shardlab.evals.maze import common
        from shardlab.evals.maze.retargeting import Retargeting

        self.trained = trained
        self.policy = trained.model.eval()
        self.env = common.train_env(trained.config)
        self.obs, self.mode, self.world_dim = self.env.obs, self.env.mode, self.env.world_dim
        self.channels_last = bool(trained.config.model.get("channels_last", True))
        self.retarget_config = Retargeting.Config()  # the eval's defaults: top channels, value multiple, mazes
        self.lock = threading.Lock()
        self._base, self._vectors, self._retarget = _Cache(), _Cache(), _Cache(8)
        self._images = _Cache()  # a maze's field observations, rendered once for every edit of it
        with torch.inference_mode():
            self.template = self._template_state()
            self.layers = self._layer_shapes()
        self.default_layer = (common.DEFAULT_LAYER if common.DEFAULT_LAYER in self.layers
                              else next(iter(self.layers), None))
        self.value_site = "fc_value" if isinstance(getattr(self.policy, "fc_value", None), torch.nn.Module) else None

    # -- per-session setup -----------------------------------------------------------------------
    def _template_state(self) -> bytes:
        """A procgen maze state of the training mode, to build every maze into."""
        from shardlab.envs.maze import MazeEnv, MazeEnvConfig

        env = MazeEnv(MazeEnvConfig(num_envs=1, distribution_mode=self.mode, rand_region=None))
        try:
            return env.get_state(0)
        finally:
            env.close()

    def _layer_shapes(self) -> dict[str, tuple[int, int, int]]:
        """(C, H, W) of every 4-D hook point of the network, from one forward of the template."""
        from shardlab.evals.maze.common import policy_input
        from shardlab.evals.maze.inputs import hook_points
        from shardlab.models.hooks import run_with_cache

        names = hook_points(self.policy)
        if not names:  # a scripted policy: no activations
            return {}
        _, acts = run_with_cache(self.policy, policy_input(self.policy, [self.template], self.obs), names)
        return {name: tuple(int(n) for n in acts[name].shape[1:]) for name in names if acts[name].dim() == 4}

    @property
    def max_size(self) -> int:
        """The largest maze the training world holds."""
        return self.world_dim

    def info(self) -> dict:
        """What the page needs to know about the network (GET /api/info)."""
        return {"kind": self.kind, "source": self.trained.path, "recipe": str(self.trained.config.get("name", "")),
                "obs": self.obs, "mode": self.mode, "scripted": self.trained.path.startswith(ORACLE_PREFIX),
                "steps": int(self.trained.steps),
                "layers": [{"name": name, "channels": shape[0], "side": shape[-1]}
                           for name, shape in self.layers.items()],
                "default_layer": self.default_layer, "max_size": self.max_size, "world_dim": self.world_dim,
                "train_min_size": self.env.min_size, "train_max_size": self.env.max_size, "default_seed": 0,
                "actions": list(_folded_actions())}

    # -- mazes -----------------------------------------------------------------------------------
    def state_of(self, text: str, where: str = "ascii") -> bytes:
        """The procgen state of an ASCII maze; RequestError when parse_ascii or the world refuses it."""
        try:
            inner, mouse = parse_ascii(text)
        except StateError as exc:
            raise RequestError(f"{where}: {exc}") from None
        if inner.shape[0] > self.max_size:
            raise RequestError(f"{where}: a {inner.shape[0]}×{inner.shape[0]} maze does not fit the "
                               f"{self.world_dim}×{self.world_dim} world this network was trained in; "
                               f"use a side of at most {self.max_size}")
        try:
            return maze_state.with_maze(self.template, inner, mouse)
        except StateError as exc:
            raise RequestError(f"{where}: {exc}") from None

    def new_maze(self, body: dict) -> dict:
        """A seeded procgen maze of the asked size (``envs.eval_mazes``, cheese anywhere), mouse on the start."""
        from shardlab.envs.eval_mazes import eval_mazes

        size = body["size"]
        if size > self.max_size:
            raise RequestError(f"size must be at most {self.max_size} (the {self.world_dim}×{self.world_dim} "
                               f"training world), got {size}")
        with self.lock:
            maze = eval_mazes(1, body["seed"], cheese="anywhere", min_size=size, max_size=size, mode=self.mode)[0]
        return {"ascii": to_ascii(maze.state), "cheese": list(maze.cheese),
                "decision_square": None if maze.decision_square is None else list(maze.decision_square)}

    def import_maze(self, body: dict) -> dict:
        """ASCII back from ASCII (checked) or from procgen state bytes."""
        if body["ascii"] is not None:
            return {"ascii": to_ascii(self.state_of(body["ascii"]))}
        try:
            maze_state.layout(body["state"])
            text = to_ascii(body["state"])
        except StateError as exc:
            raise RequestError(f"state: {exc}") from None
        except Exception as exc:  # struct errors of bytes that merely look like a state
            raise RequestError(f"state is not a procgen maze state ({type(exc).__name__})") from None
        self.state_of(text, "state")  # the maze must fit this network's world
        return {"ascii": text}

    def export_maze(self, body: dict) -> dict:
        """The maze as ASCII, procgen state bytes (base64) and a PNG picture."""
        from shardlab.evals.maze.render import new_figure, plot_maze
        from shardlab.figures import png_bytes

        state = self.state_of(body["ascii"])
        fig, ax = new_figure(4.0, dpi=80)
        plot_maze(ax, maze_state.inner_grid(state), mouse=maze_state.mouse_square(state))
        return {"ascii": to_ascii(state), "state": base64.b64encode(state).decode("ascii"),
                "png": data_url(png_bytes(fig))}

    # -- the network on one maze -----------------------------------------------------------------
    def _layer(self, body: dict) -> Optional[str]:
        """The layer a request names (the default when it names none); None for a network without layers."""
        if not self.layers:
            if body.get("layer") is not None or body.get("steer") or body.get("retarget"):
                raise RequestError(f"{self.trained.path} is a scripted policy: it has no activations to show, "
                                   "steer or retarget; leave out layer, steer and retarget")
            return None
        return check_choice(body.get("layer"), list(self.layers), "layer", self.default_layer)

    def _forward(self, state: bytes, layer: Optional[str], edits: Optional[dict]) -> Field:
        """The vector field (one batched forward over every open square) with ``edits``, reading
        the layer's activations and the value head on the way."""
        from shardlab.evals.maze.common import policy_input
        from shardlab.evals.maze.vector_field import field_observations, vector_field
        from shardlab.models.hooks import hooked

        cache = [name for name in (layer, self.value_site) if name]
        images = self._images.get_or_make(state, lambda: field_observations(state, self.obs))
        with hooked(self.policy, edits=edits, cache=cache) as acts:
            field = vector_field(self.policy, state, obs=self.obs, images=images)
            if self.value_site:
                values = acts[self.value_site].reshape(-1).float().numpy()
            else:  # no value head module (a scripted policy): a plain forward of the same batch
                states = [maze_state.with_mouse_at(state, square) for square in field.squares]
                values = self.policy(policy_input(self.policy, states, self.obs))[1].reshape(-1).float().cpu().numpy()
        mouse = field.squares.index(maze_state.mouse_square(state))
        return Field(field, values, {layer: acts[layer][mouse].float().numpy()} if layer else {})

    def _unedited(self, state: bytes, layer: Optional[str]) -> Field:
        """The unedited forward, kept for the next requests on the same maze (a slider drag, a layer
        switch: another layer's activations then take one forward of the maze as it is, not the field's)."""
        from shardlab.evals.maze.common import policy_input
        from shardlab.models.hooks import run_with_cache

        base = self._base.get_or_make(state, lambda: self._forward(state, layer, None))
        if layer and layer not in base.activations:
            _, acts = run_with_cache(self.policy, policy_input(self.policy, [state], self.obs), [layer])
            base.activations[layer] = acts[layer][0].float().numpy()
        return base

    def _cheese_vector(self, state: bytes, layer: str) -> torch.Tensor:
        """This maze's cheese vector at ``layer`` (1, C, H, W), as the steering eval computes it."""
        from shardlab.evals.maze.steering import cheese_vector

        if maze_state.cheese_square(state) is None:
            raise RequestError("steer needs a cheese in the maze: the cheese vector is the activations with the "
                               "cheese minus without it; add a C")
        if maze_state.inner_grid(state)[START[1], START[0]] == WALL:
            raise RequestError("steer needs the start square (0, 0) open: the cheese vector is computed with the "
                               "mouse there")
        key = (maze_state.with_mouse_at(state, START), layer)  # the vector does not depend on the mouse
        return self._vectors.get_or_make(key, lambda: cheese_vector(self.policy, [state], self.obs, layer))

    def _retarget_defaults(self, layer: str) -> tuple[list[int], np.ndarray]:
        """The retargeting eval's channels (best first) and each channel's mean activation at the
        cheese's cell, on its seeded channel mazes (cheese anywhere), for ``layer``."""
        from shardlab.evals.maze import common
        from shardlab.evals.maze.retargeting import cheese_activation_means, choice_mazes

        def make() -> tuple[list[int], np.ndarray]:
            cfg = self.retarget_config
            # the eval's channel mazes at seed 0, of the checkpoint's sizes and mode
            states = [m.state for m in choice_mazes(cfg.channel_mazes, 0, self.env.max_size, self.mode)]
            scores = common.cheese_channel_scores(self.policy, states, self.obs, layer)
            sign = cfg.value if cfg.value is not None else cfg.value_multiple
            ranked = common.choose_channels(scores, cfg.top_channels, sign)
            return ranked, cheese_activation_means(self.policy, states, self.obs, layer)
        return self._retarget.get_or_make(layer, make)

    def _edits(self, state: bytes, layer: Optional[str], body: dict, batch: int) -> tuple[Optional[dict], dict]:
        """The hook edits a request asks for (steer, retarget) at ``layer`` for a batch of
        ``batch`` forwards of this maze, and what they are (for the answer)."""
        from shardlab.evals.maze.retargeting import edit_cells, target_edit, written_values
        from shardlab.models.hooks import add, compose

        parts, shown = [], {}
        steer, retarget = body.get("steer"), body.get("retarget")
        if steer is not None:
            vector = self._cheese_vector(state, layer)
            parts.append(add(vector, steer["coefficient"]))
            shown["steer"] = {"coefficient": steer["coefficient"], "norm": float(vector.flatten().norm())}
        if retarget is not None:
            inner = maze_state.inner_grid(state)
            size = inner.shape[0]
            target = check_square(retarget["target"], size, lambda x, y: inner[y, x] == WALL, "retarget.target")
            count, _, side = self.layers[layer]
            channels = retarget["channels"]
            if channels is not None and max(channels) >= count:
                raise RequestError(f"retarget.channels must lie in 0..{count - 1} ({layer} has {count} channels), "
                                   f"got {max(channels)}")
            means = None
            if channels is None or retarget["value"] is None:
                ranked, means = self._retarget_defaults(layer)
                channels = list(ranked) if channels is None else list(channels)
            values = written_values(channels, self.retarget_config.value_multiple, retarget["value"], means)
            edit, _ = target_edit([state] * batch, [target] * batch, self.obs, side, channels, values,
                                  retarget["radius"])
            parts.append(edit)
            cells = edit_cells(state, target, self.obs, side, retarget["radius"])
            shown["retarget"] = {"target": list(target), "channels": [int(c) for c in channels],
                                 "values": [float(v) for v in values], "radius": retarget["radius"],
                                 "cells": [list(cell) for cell in cells]}
        if not parts:
            return None, shown
        return {layer: parts[0] if len(parts) == 1 else compose(*parts)}, shown

    def view(self, body: dict) -> dict:
        """Everything the page draws for one maze (POST /api/maze/view)."""
        from shardlab.evals.maze.vector_field import mouse_squares

        started = time.perf_counter()
        state = self.state_of(body["ascii"])
        where = maze_state.layout(state)
        inner = maze_state.inner_grid(state, where).copy()
        mouse, cheese = maze_state.mouse_square(state, where), maze_state.cheese_square(state, where)
        layer = self._layer(body)
        channel = body.get("channel") or 0
        if layer is not None and channel >= self.layers[layer][0]:
            raise RequestError(f"channel must lie in 0..{self.layers[layer][0] - 1} ({layer} has "
                               f"{self.layers[layer][0]} channels), got {channel}")
        queued = time.perf_counter()
        with self.lock, torch.inference_mode():
            started += time.perf_counter() - queued  # "ms" is compute time, not time queued behind another request
            edits, shown = self._edits(state, layer, body, len(mouse_squares(inner)))
            base = self._unedited(state, layer)
            result = base if edits is None else self._forward(state, layer, edits)
            observation = self._observation(state)
        answer = {"ascii": to_ascii(state), "size": int(where.maze_dim), "mouse": list(mouse),
                  "cheese": None if cheese is None else list(cheese), "observation": observation,
                  "field": _field_json(result), "at_mouse": _at(result, mouse)}
        if edits is not None:
            answer["base_field"] = _field_json(base)
            answer["base_at_mouse"] = _at(base, mouse)
            answer["edits"] = shown
        answer.update(self._geometry(inner, mouse, cheese))
        answer["activation"] = None if layer is None else self._activation(result, layer, channel, where)
        answer["ms"] = round(1000 * (time.perf_counter() - started), 2)
        return answer

    def _observation(self, state: bytes) -> str:
        """What the network sees for ``state`` as a PNG data URL, upscaled by nearest neighbour."""
        from shardlab.evals.maze.vector_field import observations

        image = observations([state], self.obs)[0]
        return data_url(png_of(image, max(1, OBSERVATION_PIXELS // image.shape[0])))

    @staticmethod
    def _geometry(inner: np.ndarray, mouse: tuple[int, int], cheese: Optional[tuple[int, int]]) -> dict:
        """The decision square (from the start square, as the evals define it) and the shortest
        paths from the mouse to the cheese and to the top-right corner."""
        decision = None if cheese is None else maze_geometry.decision_square(inner, cheese)
        to_cheese = [] if cheese is None else maze_geometry.shortest_path(inner, mouse, cheese)
        to_corner = maze_geometry.shortest_path(inner, mouse, maze_geometry.corner(inner))
        return {"decision_square": None if decision is None else list(decision),
                "path_to_cheese": [list(s) for s in to_cheese], "path_to_corner": [list(s) for s in to_corner]}

    def _activation(self, result: Field, layer: str, channel: int, where: maze_state.Layout) -> dict:
        """Channel ``channel`` of ``layer`` with the mouse where it is, per maze square: the cell
        that holds each square (``common.activation_square_cell``), rows from y = 0 (bottom)."""
        side = self.layers[layer][-1]
        rows, cols = _square_cells(where.maze_dim, where.world_dim, self.obs, side)
        grid = result.activations[layer][channel][rows, cols]
        return {"layer": layer, "channel": channel, "grid": grid.tolist(), "min": float(grid.min()),
                "max": float(grid.max()), "side": side}

    # -- episodes --------------------------------------------------------------------------------
    def play(self, body: dict) -> dict:
        """One episode from this maze (POST /api/maze/play): the mouse's square after every step,
        greedy moves or actions sampled with the seeded generator, the edits at every step."""
        from shardlab.envs.episodes import actor
        from shardlab.envs.rollout import rollout
        from shardlab.models.hooks import hooked

        started = time.perf_counter()
        state = self.state_of(body["ascii"])
        inner = maze_state.inner_grid(state).copy()
        mouse = maze_state.mouse_square(state)
        layer = self._layer(body)
        frames: list[list[int]] = [list(mouse)]
        ended: list = []
        total = [0.0]
        act = actor(self.policy, 1, torch.Generator().manual_seed(body["seed"]), body["greedy"], self.channels_last)

        with self.lock, torch.inference_mode():
            edits, shown = self._edits(state, layer, body, 1)
            env = make_env_from_maze(inner, mouse, mode=self.mode, obs=self.obs)
            try:
                obs = env.load_states([state])

                def on_step(t: int, obs: Any, actions: Any, reward: torch.Tensor, done: torch.Tensor,
                            finished: list) -> None:
                    total[0] += float(reward[0])
                    if bool(done[0]):  # procgen has already started its next level: the episode's end square
                        ended.append(finished[0])
                        frames.append(list(finished[0].end_square))
                    else:
                        frames.append(list(env.mouse_squares[0]))

                with hooked(self.policy, edits=edits):
                    rollout(env, act, obs=obs, steps=body["max_steps"], on_step=on_step)
            finally:
                env.close()
        corner = list(maze_geometry.corner(inner))
        if ended:
            episode = ended[0]
            reached = "cheese" if episode.reached_cheese else "corner" if episode.reached_corner else "ended"
        else:
            reached = "corner" if corner in frames[1:] else "timeout"
        answer = {"frames": frames, "reached": reached, "length": len(frames) - 1, "reward": total[0],
                  "ms": round(1000 * (time.perf_counter() - started), 2)}
        if shown:
            answer["edits"] = shown
        return answer


@lru_cache(maxsize=64)
def _square_cells(maze_dim: int, world_dim: int, obs: str, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols), each (maze_dim, maze_dim) indexed [y, x]: the activation cell of every inner square."""
    from shardlab.evals.maze.common import activation_square_cell

    cells = [[activation_square_cell((x, y), maze_dim, world_dim, obs, side) for x in range(maze_dim)]
             for y in range(maze_dim)]
    array = np.array(cells, dtype=np.int64)
    return array[..., 0], array[..., 1]


def _folded_actions() -> tuple[str, ...]:
    from shardlab.evals.maze.vector_field import FOLDED_ACTIONS

    return FOLDED_ACTIONS


def _field_json(result: Field) -> dict:
    return {"squares": [list(square) for square in result.field.squares], "probs": result.field.probs.tolist()}


def _at(result: Field, mouse: tuple[int, int]) -> dict:
    row = result.at(mouse)
    return {"probs": result.field.probs[row].tolist(), "value": float(result.values[row])}

