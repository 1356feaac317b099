"""What the explorer computes for a decision transformer: one seeded MiniGrid level played for a
number of steps at a target return (``evals.dt.rollout.play``, greedy, as the DT evals play), the
action probabilities and every head's attention pattern at the step reached (the window
``evals.dt.rollout.episode_windows`` cuts from the played episode, read through the
``evals.dt.attention.pattern_names`` hooks), and whole episodes as frames.

Levels are MiniGrid seeds: level ``seed`` is the first episode of ``env.reset(seed=seed)``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

import numpy as np
import torch

from shardlab.explore.maze_session import data_url, png_of
from shardlab.explore.validate import RequestError
from shardlab.trainers.restore import Trained

TILE_PIXELS = 24  # MiniGrid frame: pixels per grid tile


class DTSession:
    """One decision transformer served by the explorer; methods take checked request bodies and
    run one at a time (hooks are per model)."""

    kind = "dt"

    def __init__(self, trained: Trained):
        from shardlab.envs.minigrid_config import spec_env_config
        from shardlab.envs.minigrid_registry import make_single

        self.trained = trained
        self.model = trained.model.eval()
        self.spec = trained.config.spec
        self.lock = threading.Lock()
        env = make_single(spec_env_config(self.spec, num_envs=1))  # ValueError: the spec names no env
        try:
            self.env_max_steps = int(env.unwrapped.max_steps)  # the level's own step limit
        finally:
            env.close()
        self.actions = _action_names(int(self.spec.num_actions))
        self.default_seed = self._default_seed()

    def _default_seed(self) -> int:
        """The first level the DT evals would play (none the training data recorded); 0 when the
        data recorded no levels."""
        from shardlab.evals.dt.rollout import evaluation_seed

        try:
            return int(evaluation_seed(self.spec, 0, 1, "explore"))
        except ValueError:
            return 0

    def info(self) -> dict:
        """What the page needs to know about the model (GET /api/info)."""
        model = self.model
        return {"kind": self.kind, "source": self.trained.path, "recipe": str(self.trained.config.get("name", "")),
                "steps": int(self.trained.steps), "levels": str(self.spec.env_id), "obs": str(self.spec.obs),
                "max_rtg": float(self.spec.return_max), "min_rtg": float(self.spec.return_min),
                "n_layers": len(model.blocks), "n_heads": int(model.blocks[0].attn.n_heads) if len(model.blocks) else 0,
                "context": int(model.context), "use_rtg": bool(model.use_rtg),
                "mission": bool(model.max_mission_tokens), "actions": self.actions,
                "max_steps": self.env_max_steps, "default_seed": self.default_seed, "layers": []}

    def _play(self, seed: int, rtg: float, greedy: bool, max_steps: Optional[int]) -> Any:
        """The level's first episode at target ``rtg``, recorded (``evals.dt.rollout.play``)."""
        from shardlab.evals.dt.rollout import play

        return play(self.model, self.spec, [rtg], seed, greedy=greedy, record=True, max_steps=max_steps)[0]

    def _frames(self, seed: int, actions: np.ndarray, max_steps: Optional[int], every: bool) -> list[np.ndarray]:
        """MiniGrid's full-view frames of the level after each of ``actions`` (the first frame
        before any; only the last unless ``every``), replaying them in a fresh env of the same
        seed; the replay must see the observations the episode recorded."""
        from shardlab.envs.minigrid_config import spec_env_config
        from shardlab.envs.minigrid_registry import make_single

        env = make_single(spec_env_config(self.spec, num_envs=1, seed=seed, max_steps=max_steps))
        try:
            env.reset(seed=seed)
            frames = [env.unwrapped.get_frame(tile_size=TILE_PIXELS)] if every or not len(actions) else []
            for index, action in enumerate(actions):
                env.step(int(action))
                if every or index == len(actions) - 1:
                    frames.append(env.unwrapped.get_frame(tile_size=TILE_PIXELS))
            return frames
        finally:
            env.close()

    def _limit(self, steps: int) -> Optional[int]:
        """The env step limit that stops a played episode right after step ``steps`` (None: the
        level's own limit comes first). Rewards come only at the end, so the returns-to-go up
        to that step are those of the unlimited episode."""
        return steps + 1 if steps + 1 < self.env_max_steps else None

    def view(self, body: dict) -> dict:
        """Action probabilities and attention at step ``steps`` of the greedy episode (POST /api/dt/view)."""
        from shardlab.evals.dt.attention import pattern_names
        from shardlab.evals.dt.rollout import episode_windows
        from shardlab.models.hooks import hooked

        started = time.perf_counter()
        steps = body["steps"]
        if steps > self.env_max_steps - 1:
            raise RequestError(f"steps must lie in 0..{self.env_max_steps - 1} (the level's step limit is "
                               f"{self.env_max_steps}), got {steps}")
        model = self.model
        queued = time.perf_counter()
        with self.lock, torch.inference_mode():
            started += time.perf_counter() - queued  # compute time, not time queued behind another request
            limit = self._limit(steps)
            episode = self._play(body["seed"], body["rtg"], True, limit)
            current = min(steps, episode.length - 1)  # the episode may end before `steps`
            batch = episode_windows(model, episode, [current])
            batch.actions[:, -1] = 0  # the current action is not chosen yet: play feeds 0 there too
            names = pattern_names(model)
            with hooked(model, cache=names) as store:
                logits = model(**batch.inputs())[0, -1]
            probs = torch.softmax(logits.float(), -1)
            attention = self._attention(batch, [store[name][0] for name in names])
            frame = self._frames(body["seed"], episode.actions[:current], limit, every=False)[-1]
        return {"image": data_url(png_of(frame)), "probs": probs.tolist(), "actions": self.actions,
                "action": self.actions[int(probs.argmax())], "attention": attention, "mission": episode.mission,
                "step": int(current), "ended": bool(current < steps), "rtg": float(episode.returns_to_go[current]),
                "ms": round(1000 * (time.perf_counter() - started), 2)}

    def _attention(self, batch: Any, patterns: list[torch.Tensor]) -> dict:
        """Every layer's and head's pattern (L × H × T × T) over the window's real tokens (the
        padding and padded mission words left out), labelled with their episode timesteps."""
        model = self.model
        missions = batch.missions
        M = 0 if missions is None else missions.shape[1]
        K = batch.step_mask.shape[1]
        keep, labels = [], []
        for index, label in enumerate(model.token_labels(K, M)):
            position = int(label[1:])
            if label[0] == "m":
                word = int(missions[0, position])
                if word != 0:
                    keep.append(index)
                    labels.append(f"m:{model.mission_vocab[word]}")
            elif bool(batch.step_mask[0, position]):
                keep.append(index)
                labels.append(f"{label[0]}{int(batch.timesteps[0, position])}")
        rows = torch.tensor(keep, dtype=torch.long)
        weights = torch.stack([pattern[:, rows][:, :, rows] for pattern in patterns])  # (L, H, T, T)
        return {"layers": int(weights.shape[0]), "heads": int(weights.shape[1]), "tokens": labels,
                "weights": weights.float().tolist()}

    def play(self, body: dict) -> dict:
        """A whole episode of the level at target ``rtg`` as frames (POST /api/dt/play)."""
        started = time.perf_counter()
        max_steps = body["max_steps"]
        if max_steps is not None and max_steps > self.env_max_steps:
            raise RequestError(f"max_steps must lie in 1..{self.env_max_steps} (the level's own step limit), "
                               f"got {max_steps}")
        with self.lock, torch.inference_mode():
            episode = self._play(body["seed"], body["rtg"], body["greedy"], max_steps)
            frames = self._frames(body["seed"], episode.actions, max_steps, every=True)
        return {"frames": [data_url(png_of(frame)) for frame in frames],
                "actions": [self.actions[int(a)] for a in episode.actions], "return": float(episode.ret),
                "length": int(episode.length), "success": bool(episode.success), "truncated": bool(episode.truncated),
                "mission": episode.mission, "ms": round(1000 * (time.perf_counter() - started), 2)}


def _action_names(count: int) -> list[str]:
    """MiniGrid's action names (left, right, forward, pickup, drop, toggle, done) for its 7 actions."""
    from minigrid.core.actions import Actions

    names = [action.name for action in Actions]
    return names[:count] if count <= len(names) else [*names, *(f"action{i}" for i in range(len(names), count))]
