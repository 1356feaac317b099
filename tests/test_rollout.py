"""envs.rollout.rollout: first-episode semantics, hooks, and equality with the hand-written loops it replaced."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from shardlab.envs.batched import BatchedEnv
from shardlab.envs.rollout import rollout

pytestmark = pytest.mark.usefixtures("one_thread")


class Scripted:
    """Env i's episodes last ``lengths[i]`` steps; the episode record is (env, episode number, return)."""

    def __init__(self, lengths):
        self.lengths = list(lengths)
        self.num_envs = len(self.lengths)
        self.clock = [0] * self.num_envs
        self.count = [0] * self.num_envs
        self.steps = 0
        self.closed = False

    def reset(self):
        return torch.zeros(self.num_envs)

    def step(self, actions):
        self.steps += 1
        done = torch.zeros(self.num_envs, dtype=torch.bool)
        finished = []
        for i in range(self.num_envs):
            self.clock[i] += 1
            if self.clock[i] == self.lengths[i]:
                finished.append((i, self.count[i], float(actions[i])))
                done[i], self.clock[i] = True, 0
                self.count[i] += 1
        return torch.tensor(self.clock, dtype=torch.float32), torch.ones(self.num_envs), done, finished

    def close(self):
        self.closed = True


def test_scripted_env_is_a_batched_env():
    assert isinstance(Scripted([1]), BatchedEnv)
    from shardlab.envs.maze import MazeEnv
    from shardlab.envs.minigrid import MiniGridEnv
    for cls in (MazeEnv, MiniGridEnv):
        assert all(callable(getattr(cls, name)) for name in ("reset", "step", "close"))


def test_first_episode_of_each_env_in_env_order():
    env = Scripted([3, 1, 5, 2])
    episodes = rollout(env, lambda obs: obs + 10)
    # env 1 finishes at every step and env 3 every other one: only their first episodes count
    assert episodes == [(0, 0, 12.0), (1, 0, 10.0), (2, 0, 14.0), (3, 0, 11.0)]
    assert env.steps == 5  # stops once the slowest env finished
    assert not env.closed  # the caller owns the env


def test_step_cap_drops_unfinished_envs():
    env = Scripted([2, 9, 1])
    assert rollout(env, lambda obs: obs, steps=4) == [(0, 0, 1.0), (2, 0, 0.0)]
    assert env.steps == 4


def test_hooks_see_every_step_and_each_first_episode_once():
    env = Scripted([2, 3])
    seen, ends = [], []

    def on_step(t, obs, actions, reward, done, finished):
        seen.append((t, obs.tolist(), actions.tolist(), reward.tolist(), done.tolist(), list(finished)))

    episodes = rollout(env, lambda obs: obs * 2, steps=6, until="steps", on_step=on_step,
                       on_episode=lambda index, episode: ends.append((index, episode)))
    assert env.steps == 6
    assert [s[0] for s in seen] == list(range(6))
    # obs is what the actions were chosen on (clock before the step)
    assert [s[1] for s in seen] == [[0, 0], [1, 1], [0, 2], [1, 0], [0, 1], [1, 2]]
    assert [s[2] for s in seen] == [[0, 0], [2, 2], [0, 4], [2, 0], [0, 2], [2, 4]]
    assert [s[4] for s in seen] == [[False, False], [True, False], [False, True], [True, False],
                                    [False, False], [True, True]]
    assert sum(len(s[5]) for s in seen) == 5  # every finished episode reaches the step hook
    assert ends == [(0, (0, 0, 2.0)), (1, (1, 0, 4.0))]
    assert episodes == [e for _, e in ends]


def test_quota_counts_each_envs_first_episodes_env_by_env():
    env = Scripted([1, 3, 2])
    ends = []
    episodes = rollout(env, lambda obs: obs, quota=[3, 1, 0], on_episode=lambda i, e: ends.append(i))
    assert episodes == [(0, 0, 0.0), (0, 1, 0.0), (0, 2, 0.0), (1, 0, 2.0)]  # env 2 wants none
    assert env.steps == 3 and ends == [0, 0, 0, 1]
    assert rollout(Scripted([1, 1]), lambda obs: obs, quota=[0, 0]) == []


def test_stop_ends_the_rollout_after_the_step_it_turns_true():
    env = Scripted([9, 9])
    seen = []
    rollout(env, lambda obs: obs, steps=20, until="steps", on_step=lambda t, *_: seen.append(t),
            stop=lambda: len(seen) == 4)
    assert env.steps == 4 and seen == [0, 1, 2, 3]


def test_bad_arguments():
    with pytest.raises(ValueError):
        rollout(Scripted([1]), lambda obs: obs, until="forever")
    with pytest.raises(ValueError):
        rollout(Scripted([1]), lambda obs: obs, until="steps")
    with pytest.raises(ValueError):
        rollout(Scripted([1, 1]), lambda obs: obs, quota=[1])


def _hand_written_first_episodes(env_cfg):
    """envs.episodes.first_episodes(None, env_cfg) as it was written before rollout()."""
    from shardlab.envs.maze import MazeEnv
    from shardlab.envs.episodes import MAX_EPISODE_STEPS

    env = MazeEnv(env_cfg)
    generator = torch.Generator().manual_seed(env_cfg.seed)
    done = torch.zeros(env.num_envs, dtype=torch.bool)
    episodes = [None] * env.num_envs
    obs = env.reset()
    try:
        for _ in range(MAX_EPISODE_STEPS + 1):
            action = torch.randint(0, 15, (env.num_envs,), generator=generator)
            obs, _, step_done, finished = env.step(action)
            for index, episode in zip(torch.nonzero(step_done).flatten().tolist(), finished):
                if not done[index]:
                    episodes[index], done[index] = episode, True
            if done.all():
                break
    finally:
        env.close()
    return [e for e in episodes if e is not None]


def test_maze_first_episodes_match_the_hand_written_loop():
    from shardlab.envs.maze import MazeEnvConfig
    from shardlab.envs.episodes import first_episodes

    cfg = MazeEnvConfig(num_envs=6, distribution_mode="hard", rand_region=5, max_maze_size=9, seed=17)
    expected = _hand_written_first_episodes(cfg)
    assert len(expected) >= 1
    assert first_episodes(None, cfg) == expected


def test_maze_observations_match_the_hand_written_loop():
    from shardlab.envs.maze import MazeEnv, MazeEnvConfig
    from shardlab.evals.sparsity.sparsity import env_observations

    env_yaml = {"num_envs": 1, "distribution_mode": "hard", "rand_region": 5, "obs": "grid"}
    n, seed, num_envs = 150, 3, 64  # three steps of 64 envs (not the run's 1), the last one cut
    got = env_observations(OmegaConf.create({"algo": "ppo", "env": env_yaml}), n, seed)
    maze = MazeEnv(MazeEnvConfig(**{**env_yaml, "num_envs": num_envs, "seed": seed}))
    generator = torch.Generator().manual_seed(seed)
    frames, obs = [], maze.reset()
    for _ in range(math.ceil(n / num_envs)):
        frames.append(obs.clone())
        obs, *_ = maze.step(torch.randint(0, 15, (num_envs,), generator=generator))
    maze.close()
    assert torch.equal(got, torch.cat(frames)[:n])


@pytest.mark.parametrize("greedy", [False, True])
def test_finished_envs_leave_the_forward_and_the_episodes_stay_the_same(greedy):
    """first_episodes forwards only the envs still in their first episode; a plain loop that forwards
    every env at every step (and samples from every row) plays the very same episodes."""
    import os

    from shardlab.envs.episodes import MAX_EPISODE_STEPS, first_episodes
    from shardlab.envs.maze import greedy_move_actions, make
    from shardlab.envs.maze_config import env_config
    from shardlab.models.impala import preprocess
    from shardlab.trainers.restore import load_trained

    trained = load_trained(os.path.join(os.path.dirname(__file__), "fixtures", "ci_policy.ckpt"))
    cfg = env_config(trained.config, num_envs=16, seed=5, backend="native")  # quicker; procgen-exact
    policy = trained.model
    rows_seen: list[int] = []
    handle = policy.register_forward_hook(lambda module, args, out: rows_seen.append(args[0].shape[0]))
    try:
        got = first_episodes(policy, cfg, greedy=greedy, channels_last=trained.config.model.channels_last)
    finally:
        handle.remove()
    assert rows_seen[0] == 16 and min(rows_seen) < 16  # envs left the batch as they finished

    env, generator, expected = make(cfg), torch.Generator().manual_seed(cfg.seed), [None] * 16
    obs = env.reset()
    try:
        with torch.inference_mode():
            for _ in range(MAX_EPISODE_STEPS + 1):
                logits, _ = policy(preprocess(obs, trained.config.model.channels_last))
                actions = (greedy_move_actions(logits) if greedy else
                           torch.multinomial(logits.float().softmax(-1), 1, generator=generator).squeeze(-1))
                obs, _, done, finished = env.step(actions)
                for index, episode in zip(done.nonzero().flatten().tolist(), finished):
                    if expected[index] is None:
                        expected[index] = episode
                if all(e is not None for e in expected):
                    break
    finally:
        env.close()
    assert got == [e for e in expected if e is not None] and len(got) >= 8
