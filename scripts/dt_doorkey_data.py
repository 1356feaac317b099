"""Offline data for the decision-transformer recipe: a DoorKey planner mixed with ε-random actions.

    python scripts/dt_doorkey_data.py --out data/doorkey_planner.npz [--epsilons 0 0.5 1 --episodes 600 300 100]

minigrid's BabyAI bot does not handle ``MiniGrid-DoorKey-*`` (it needs BabyAI instructions), so the
good policy here is a small planner: breadth-first search over (cell, direction) to face the key,
pick it up, face the door, open it, walk to the goal. Each ε plays ``--episodes`` seeded episodes in
which every action is uniformly random with probability ε, so the returns spread from the planner's
(≈0.96) down to failures (0). The default counts give each ε a similar number of *steps* (random
episodes are 20× longer), so the planner's behaviour is not drowned by random walks. Observations are
the agent's 7×7×3 view, as ``envs.minigrid`` gives with ``obs: image``; the file is in the trajectory
format of ``trainers/trajectories.py`` and records each episode's level seed (``--seed`` + its
index over all ε), which the decision-transformer evals keep away from.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import gymnasium as gym
import numpy as np
from minigrid.core.actions import Actions
from minigrid.wrappers import ImgObsWrapper
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from shardlab.bars import progress_kwargs  # noqa: E402
from shardlab.trainers.trajectories import Trajectories, concat, from_episodes, save_trajectories  # noqa: E402

DIRECTIONS = ((1, 0), (0, 1), (-1, 0), (0, -1))  # minigrid's agent_dir 0..3: right, down, left, up
# ε → episodes; on DoorKey-5x5 each ε then contributes roughly 10k–25k steps
DEFAULT_MIX = {0.0: 1000, 0.25: 800, 0.5: 600, 0.75: 300, 0.85: 200, 0.9: 150, 0.95: 100, 1.0: 100}


def _passable(env, cell: tuple[int, int]) -> bool:
    obj = env.grid.get(*cell)
    return obj is None or obj.can_overlap()


def plan(env, goal_cell: tuple[int, int], face: bool) -> list[int]:
    """Shortest action list that ends on ``goal_cell`` (``face``: facing it from a neighbour)."""
    start = (*env.agent_pos, env.agent_dir)
    parents = {start: None}
    queue = collections.deque([start])
    while queue:
        state = queue.popleft()
        x, y, d = state
        front = (x + DIRECTIONS[d][0], y + DIRECTIONS[d][1])
        if (front == goal_cell) if face else ((x, y) == goal_cell):
            actions = []
            while parents[state] is not None:
                state, action = parents[state]
                actions.append(action)
            return actions[::-1]
        moves = [((x, y, (d - 1) % 4), Actions.left), ((x, y, (d + 1) % 4), Actions.right)]
        if _passable(env, front):
            moves.append(((*front, d), Actions.forward))
        for nxt, action in moves:
            if nxt not in parents:
                parents[nxt] = (state, int(action))
                queue.append(nxt)
    return []


def planner_action(env) -> int:
    """The next action of the key → door → goal plan."""
    grid = env.grid
    cells = [(x, y) for x in range(grid.width) for y in range(grid.height)]
    find = lambda kind: next((c for c in cells if grid.get(*c) is not None and grid.get(*c).type == kind), None)
    key, door, goal = find("key"), find("door"), find("goal")
    if key is not None and env.carrying is None:
        steps = plan(env, key, face=True)
        return steps[0] if steps else int(Actions.pickup)
    if door is not None and not grid.get(*door).is_open:
        steps = plan(env, door, face=True)
        return steps[0] if steps else int(Actions.toggle)
    steps = plan(env, goal, face=False)
    return steps[0] if steps else int(Actions.done)


def collect(env_id: str, epsilon: float, episodes: int, seed: int) -> Trajectories:
    """``episodes`` seeded episodes of the ε-random planner."""
    env = ImgObsWrapper(gym.make(env_id, disable_env_checker=True))
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {k: [] for k in ("obs", "actions", "rewards", "terminated", "truncated", "missions")}
    for episode in tqdm(range(episodes), desc=f"ε={epsilon:g}", leave=False, **progress_kwargs()):
        obs, _ = env.reset(seed=seed + episode)
        observations, actions, rewards = [], [], []
        done = False
        while not done:
            action = int(rng.integers(env.action_space.n)) if rng.random() < epsilon else planner_action(env.unwrapped)
            observations.append(obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            actions.append(action)
            rewards.append(reward)
            done = terminated or truncated
        for key, value in zip(parts, (np.stack(observations), actions, rewards, terminated, truncated,
                                      env.unwrapped.mission)):
            parts[key].append(value)
    metadata = {"env_id": env_id, "obs": "image", "num_actions": int(env.action_space.n),
                "max_steps": int(env.unwrapped.max_steps), "policy": f"doorkey_planner(epsilon={epsilon:g})",
                "seeds": [seed, seed + episodes - 1], "source": "scripts/dt_doorkey_data.py"}
    env.close()
    # every episode resets with its own seed, so each is the first level of its seed
    return from_episodes(parts["obs"], parts["actions"], parts["rewards"], parts["terminated"],
                         parts["truncated"], parts["missions"], metadata,
                         level_seeds=list(range(seed, seed + episodes)))


def main(argv: list[str] | None = None) -> int:
    """Collect every ε and write one dataset."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output .npz")
    parser.add_argument("--env-id", default="MiniGrid-DoorKey-5x5-v0")
    parser.add_argument("--epsilons", type=float, nargs="+", default=list(DEFAULT_MIX))
    parser.add_argument("--episodes", type=int, nargs="+", default=list(DEFAULT_MIX.values()),
                        help="episodes per ε: one number for all, or one per --epsilons value")
    parser.add_argument("--seed", type=int, default=1_000_000, help="first level seed (default 1000000); "
                        "the file records every episode's seed and the DT evals play other levels")
    args = parser.parse_args(argv)
    counts = args.episodes * len(args.epsilons) if len(args.episodes) == 1 else args.episodes
    if len(counts) != len(args.epsilons) or min(counts) < 1:
        parser.error("--episodes takes one positive count, or one per --epsilons value")
    data, seed = None, args.seed
    for epsilon, count in zip(args.epsilons, counts):
        part = collect(args.env_id, epsilon, count, seed)
        seed += count
        stats = part.metadata["return_stats"]
        print(f"ε={epsilon:g}: mean return {stats['mean']:.3f}, success {stats['success_rate']:.1%}, "
              f"{part.num_steps} steps", file=sys.stderr)
        data = part if data is None else concat(data, part)
    save_trajectories(args.out, data)
    stats = data.metadata["return_stats"]
    print(f"wrote {args.out}: {data.num_episodes} episodes, {data.num_steps} steps, mean return "
          f"{stats['mean']:.3f}, success {stats['success_rate']:.1%}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
