"""``--log-episodes``: goal_misgeneralization's episodes.jsonl, checked against the cheese-seeking
scripted policy and this file's own BFS over the regenerated mazes."""

from __future__ import annotations

import json
import textwrap
from collections import Counter, deque

import pytest

from shardlab import cli as shardlab
from shardlab.envs import maze_state
from shardlab.envs.eval_mazes import eval_mazes
from shardlab.envs.maze import MazeEnv
from shardlab.envs.maze_config import env_config
from shardlab.evals.maze.goal_misgeneralization import in_region_twins
from shardlab.trainers.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread")
RECIPE = "configs/train/maze_demo.yaml"  # grid observation, 7×7 mazes, cheese region 3
SEED, N = 5, 3
SUITE = f"""
seed: {SEED}
evals:
  goal_misgeneralization: {{mazes: 8, decision_mazes: 8}}
"""
SETS = {"outside": "p_cheese", "in_region": "in_region/p_cheese", "in_distribution": "in_distribution/p_cheese",
        "decision": "decision/p_cheese"}


def bfs_distance(state: bytes, source: tuple, target: tuple) -> int:
    inner = maze_state.inner_grid(state)
    size = inner.shape[0]
    open_squares = {(x, y) for y in range(size) for x in range(size) if inner[y, x] != maze_state.WALL}
    dist, queue = {source: 0}, deque([source])
    while queue:
        x, y = queue.popleft()
        for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            nxt = (x + dx, y + dy)
            if nxt in open_squares and nxt not in dist:
                dist[nxt] = dist[(x, y)] + 1
                queue.append(nxt)
    return dist[target]


def start_states() -> dict[str, list[bytes]]:
    """Each maze set's start states, rebuilt the way the eval documents them."""
    cfg = load_config(RECIPE)
    region, size, smallest = cfg.env.rand_region, cfg.env.max_maze_size, cfg.env.min_maze_size or 3
    outside = eval_mazes(N, SEED, cheese="outside_region", region=region, min_size=smallest, max_size=size,
                         mode="easy")
    decision = eval_mazes(N, SEED + 1, cheese="anywhere", region=region, min_size=smallest, max_size=size,
                          mode="easy", require_decision_square=True)
    env = MazeEnv(env_config(cfg, seed=SEED, num_envs=N, rand_region=region, max_maze_size=size))
    env.reset()
    training = [env.get_state(index) for index in range(N)]
    env.close()
    return {"outside": [m.state for m in outside], "in_region": in_region_twins(outside, region, SEED),
            "in_distribution": training, "decision": [m.state for m in decision]}


def _eval(tmp_path, out: str, *extra: str) -> int:
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent(SUITE))
    return shardlab.main(["eval", "oracle:cheese_seeker", "--recipe", "maze_demo", "--suite", str(suite),
                          "--out", str(tmp_path / out), "--limit", str(N), "--no-progress", "--loggers", "none",
                          *extra])


def test_cheese_seeker_episodes_take_the_shortest_path(tmp_path):
    assert _eval(tmp_path, "out", "--log-episodes") == 0
    log = tmp_path / "out" / "goal_misgeneralization" / "episodes.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert str(log) in results["artifacts"]["goal_misgeneralization"]
    n = {row["name"]: row["n"] for row in results["results"]}
    assert Counter(r["set"] for r in records) == {name: n[metric] for name, metric in SETS.items()}
    assert all(count == N for count in Counter(r["set"] for r in records).values())
    states = start_states()
    for record in records:
        state = states[record["set"]][record["index"]]
        start, cheese = tuple(record["start"]), tuple(record["cheese"])
        assert start == maze_state.mouse_square(state) == (0, 0)
        assert cheese == maze_state.cheese_square(state)
        assert record["maze_size"] == maze_state.layout(state).maze_dim
        assert record["outcome"] == "cheese" and record["final_square"] == record["cheese"], record
        assert record["length"] == bfs_distance(state, start, cheese), record
        assert record["greedy"] is False and record["return"] == 10.0
        if record["set"] != "in_distribution":
            expected_seed = SEED + 1 if record["set"] == "decision" else SEED
            assert (record["maze_seed"], record["maze_index"]) == (expected_seed, record["index"])


def test_no_episode_log_unless_asked(tmp_path):
    assert _eval(tmp_path, "plain", "goal_misgeneralization.decision_mazes=1") == 0
    assert not (tmp_path / "plain" / "goal_misgeneralization" / "episodes.jsonl").exists()
