"""The native env's RGB view (envs/maze_native_rgb.py) against procgen's own frames: pixel for pixel
along lock-step replays of both backends, on fresh native levels, and the background's distribution.

Actions: LEFT 1, noop 4, RIGHT 7 (a move right mirrors procgen's mouse sprite, a move left unmirrors it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from shardlab.envs import maze_native_rgb, maze_views
from shardlab.envs import maze_state as ms
from shardlab.envs.maze import MazeEnv, MazeEnvConfig
from shardlab.envs.maze_native import NativeMazeEnv, generate_mazes
from test_maze_native import procgen_states

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
LEFT, NOOP, RIGHT = 1, 4, 7
ENVS, STEPS = 16, 160  # per mode: about 2,500 compared frames, each of 12,288 bytes


def rgb_cfg(**overrides) -> MazeEnvConfig:
    """An RGB-observation config with the cheese anywhere, ``overrides`` applied."""
    return MazeEnvConfig(**{"num_envs": ENVS, "distribution_mode": "easy", "rand_region": None, "obs": "rgb",
                            **overrides})


@pytest.fixture(scope="module")
def starts() -> dict[str, list[bytes]]:
    """Start states of fresh procgen levels, each with its own maze, background and offset."""
    return {mode: procgen_states(mode, 512, seed=21) for mode in ("easy", "hard")}


@pytest.mark.parametrize("mode", ["easy", "hard"])
def test_frames_equal_procgens_along_a_lock_step_replay(starts, mode):
    """From the same states with the same random actions, every frame of a live episode is procgen's
    frame byte for byte (mirrored sprites, every background and both world sizes included); finished
    envs restart from the same next state in both backends."""
    states = iter(starts[mode])
    proc, native = MazeEnv(rgb_cfg(distribution_mode=mode)), NativeMazeEnv(rgb_cfg(distribution_mode=mode))
    try:
        first = [next(states) for _ in range(ENVS)]
        assert torch.equal(proc.load_states(first), native.load_states(first))
        actions_rng = torch.Generator().manual_seed(3)
        compared = mirrored = 0
        backgrounds = set()
        for _ in range(STEPS):
            actions = torch.randint(0, 15, (ENVS,), generator=actions_rng)
            obs_p, reward_p, done_p, _ = proc.step(actions)
            obs_n, reward_n, done_n, _ = native.step(actions)
            assert torch.equal(done_p, done_n) and torch.equal(reward_p, reward_n)
            live = ~done_p
            differing = (obs_p[live] != obs_n[live]).any(-1).sum().item()
            assert differing == 0, f"{differing} pixels differ from procgen's frames"
            compared += int(live.sum())
            mirrored += int(native._rgb.reflected[live].sum())
            backgrounds |= set(native._rgb.background[live].tolist())
            for i in torch.nonzero(done_p).flatten().tolist():
                state = next(states)
                proc.set_state(i, state)
                native.set_state(i, state)
        assert compared > 0.9 * ENVS * STEPS and 0.2 * compared < mirrored < 0.8 * compared
        assert backgrounds == set(range(ms.BACKGROUNDS))
    finally:
        proc.close()
        native.close()


def test_the_sprite_turns_like_procgens_mouse(starts):
    """A move right mirrors the sprite, a noop or a move up keeps it, a move left unmirrors it; the
    orientation is read from and written to procgen's state bytes."""
    native = NativeMazeEnv(rgb_cfg(num_envs=1))
    state = next(s for s in starts["easy"] if sum(ms.cheese_square(s)) >= 8)  # no episode ends here
    assert not ms.is_reflected(state)
    native.load_states([state])
    seen = []
    for action in (RIGHT, NOOP, 5, LEFT, RIGHT):
        native.step(torch.tensor([action]))
        seen.append(bool(native._rgb.reflected[0]))
    assert seen == [True, True, True, False, True]
    turned = ms.with_looks(state, *ms.background(state), reflected=True)
    native.load_states([turned])
    assert bool(native._rgb.reflected[0])
    assert torch.equal(native.load_states([turned]), torch.from_numpy(maze_views.render_rgb([turned])))


@pytest.mark.parametrize("mode", ["easy", "hard"])
def test_fresh_native_levels_render_as_procgen_renders_them(mode):
    """Frames of native levels (reset, then steps) equal procgen's renders of the same levels written
    as procgen states: walls, cheese, mouse square, orientation, background and offset."""
    env = NativeMazeEnv(rgb_cfg(num_envs=8, distribution_mode=mode, seed=5))
    obs = env.reset()
    rng = torch.Generator().manual_seed(0)
    for _ in range(6):
        obs, *_ = env.step(torch.randint(0, 15, (8,), generator=rng))
    rgb = env._rgb
    levels = maze_native_rgb.level_states(env.walls.numpy(), env._cheese.numpy(), env.maze_dims,
                                          rgb.background.numpy(), rgb.bg_pct_x.numpy())
    shown = [ms.with_mouse_world(ms.with_looks(s, int(b), float(p), bool(r)), tuple(m))
             for s, b, p, r, m in zip(levels, rgb.background, rgb.bg_pct_x, rgb.reflected, env._mouse.tolist())]
    assert torch.equal(obs, torch.from_numpy(maze_views.render_rgb(shown)))


def test_backgrounds_follow_procgens_distribution(starts):
    """Fresh native levels draw the background uniformly over procgen's 9 and the offset uniformly
    in [0, 1), as procgen's levels do (chi-square and Kolmogorov-Smirnov tests on both)."""
    mazes = generate_mazes(4096, 15, torch.Generator().manual_seed(0), looks=True)
    native_counts = np.bincount(mazes.background.numpy(), minlength=ms.BACKGROUNDS)
    procgen_looks = [ms.background(s) for s in starts["easy"] + starts["hard"]]
    procgen_counts = np.bincount([index for index, _ in procgen_looks], minlength=ms.BACKGROUNDS)
    assert len(native_counts) == len(procgen_counts) == ms.BACKGROUNDS  # no index beyond procgen's 9
    assert stats.chisquare(native_counts).pvalue > 1e-3 and stats.chisquare(procgen_counts).pvalue > 1e-3
    assert stats.kstest(mazes.bg_pct_x.numpy(), "uniform").pvalue > 1e-3
    assert stats.kstest([pct for _, pct in procgen_looks], "uniform").pvalue > 1e-3


def test_looks_leave_the_mazes_and_the_rng_round_trip_alone():
    """Drawing backgrounds does not change the mazes a seed gives, and rng_state restores the frames."""
    plain = generate_mazes(64, 15, torch.Generator().manual_seed(4))
    looks = generate_mazes(64, 15, torch.Generator().manual_seed(4), looks=True)
    assert torch.equal(plain.walls, looks.walls) and torch.equal(plain.cheese, looks.cheese)
    env = NativeMazeEnv(rgb_cfg(num_envs=4, seed=2))
    env.reset()
    saved = json.loads(json.dumps(env.rng_state()))
    later = env.reset()
    env.set_rng_state(saved)
    assert torch.equal(env.reset(), later)


def test_sprite_blend_is_qts_rounding():
    """The blend's ``value · alpha / 255`` is Qt's shift-and-add approximation: exact at alpha 0 and
    255 (a transparent sprite pixel leaves the picture alone), else within 0.51 of the true quotient."""
    value = np.arange(256)[:, None]
    alpha = np.arange(256)[None, :]
    blended = maze_native_rgb._byte_mul(value, alpha)
    assert (blended[:, 255] == value[:, 0]).all() and (blended[:, 0] == 0).all()
    assert np.abs(blended - value * alpha / 255).max() < 0.51


def test_an_rgb_network_evaluates_identically_on_both_backends(tmp_path):
    """goal_misgeneralization of an RGB network (the CPU RGB recipe's architecture, seeded weights)
    plays the same episodes on the native env as on procgen: every metric is identical."""
    import shardlab
    from shardlab.trainers.config import load_config
    from shardlab.trainers.kinds import get_kind

    recipe = load_config(ROOT / "configs" / "train" / "maze_ppo_cpu_rgb.yaml")
    torch.manual_seed(0)
    network = get_kind("ppo").build_network(recipe)
    suite = tmp_path / "suite.yaml"
    suite.write_text("seed: 0\nevals:\n  goal_misgeneralization: {mazes: 2, decision_mazes: 2, max_size: 5, region: 2}\n")
    results = {backend: shardlab.evaluate(network, suite=str(suite), recipe=recipe, device="cpu",
                                          out=str(tmp_path / backend), env_backend=backend)
               for backend in ("procgen", "native")}
    procgen, native = (results[b]["goal_misgeneralization"] for b in ("procgen", "native"))
    assert len(procgen) > 10 and procgen == native


def test_level_states_are_written_like_one_edit_at_a_time():
    """maze_state.levels (all levels at once) gives the bytes that with_maze and with_looks give level
    by level, and refuses a background procgen does not have."""
    mazes = generate_mazes(40, 15, torch.Generator().manual_seed(1), looks=True)
    states = maze_native_rgb.level_states(mazes.walls.numpy(), mazes.cheese.numpy(), mazes.maze_dim.numpy(),
                                          mazes.background.numpy(), mazes.bg_pct_x.numpy())
    template = maze_native_rgb.template_state(15)
    for k, state in enumerate(states):
        world = np.where(mazes.walls[k].numpy(), ms.WALL, ms.EMPTY)
        x, y = mazes.cheese[k].tolist()
        world[y, x] = ms.CHEESE
        size = int(mazes.maze_dim[k])
        margin = (15 - size) // 2
        one = ms.with_maze(template, world[margin:margin + size, margin:margin + size])
        assert state == ms.with_looks(one, int(mazes.background[k]), float(mazes.bg_pct_x[k]))
    with pytest.raises(ms.StateError, match="0..8"):
        ms.levels(template, np.zeros((1, 15, 15), np.int32), np.array([3]), np.array([9]), np.array([0.5]))


@pytest.mark.parametrize("mode", ["easy", "hard"])
def test_mouse_frames_equal_procgens_renders_of_the_moved_mouse(starts, mode):
    """A vector field's RGB images (one level render, the sprite composited per square) are the bytes
    procgen renders for each edited state, mirrored sprites and the cheese square included."""
    from shardlab.evals.maze.vector_field import mouse_squares

    for k, state in enumerate(starts[mode][:6]):
        if k % 2:
            state = ms.with_looks(state, *ms.background(state), reflected=True)
        squares = mouse_squares(ms.inner_grid(state), include_cheese=k % 3 == 0)
        expected = maze_views.render_rgb([ms.with_mouse_at(state, square) for square in squares])
        assert np.array_equal(maze_native_rgb.mouse_frames(state, squares), expected)
