"""``benchmark.py evals``: test-maze episodes/s of the goal_misgeneralization eval against a bare
batched rollout of the same policy on the same mazes with the same seeded actions.

The eval's time includes everything it does (test-maze generation with BFS and decision squares,
env construction, per-episode bookkeeping, the logistic regression and its PNG); the bare rollout
gets its maze states ready-made and only loads them, steps the policy and counts finished envs.
Both play identical episodes (same states, same sampling generator), so the ratio of episodes/s
is the ratio of wall times. Repeats interleave the two so drifting load hits both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any, Optional

from benchmarks.common import finish_report, progress

NAME = "evals"
HELP = "goal_misgeneralization eval episodes/s vs a bare batched rollout (target ratio >= 0.8)"
TARGET_RATIO = 0.8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``benchmark.py evals``."""
    parser.add_argument("--checkpoint", help="a maze PPO checkpoint (default: a random-init policy of --config)")
    parser.add_argument("--config", default=os.path.join("configs", "train", "maze_ppo_cpu.yaml"),
                        help="training recipe for the random-init policy (default: the CPU recipe)")
    parser.add_argument("--mazes", type=int, default=200, help="test mazes per maze set (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timings; medians reported (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")


def _policy(args: argparse.Namespace) -> tuple[Any, Any, int]:
    """(policy, training config, training steps) from --checkpoint or a random-init --config."""
    from shardlab.trainers.config import load_config
    from shardlab.trainers.kinds import get_kind
    from shardlab.trainers.restore import load_trained

    if args.checkpoint:
        trained = load_trained(args.checkpoint)
        return trained.model, trained.config, trained.steps
    cfg = load_config(args.config)
    return get_kind(cfg.algo).build_network(cfg).eval(), cfg, 0


def bare_rollout(policy: Any, env_cfg: Any, states: Optional[list[bytes]], channels_last: bool) -> int:
    """Play the first episode of every env with seeded sampled actions; returns episodes played."""
    import torch

    from shardlab.envs.episodes import MAX_EPISODE_STEPS
    from shardlab.envs.maze import make
    from shardlab.models.impala import preprocess

    env = make(env_cfg)  # the config's env.backend, as the eval plays it
    generator = torch.Generator().manual_seed(env_cfg.seed)
    done = torch.zeros(env.num_envs, dtype=torch.bool)
    try:
        obs = env.reset() if states is None else env.load_states(states)
        with torch.inference_mode():
            for _ in range(MAX_EPISODE_STEPS + 1):
                logits, _ = policy(preprocess(obs, channels_last))
                action = torch.multinomial(logits.float().softmax(-1), 1, generator=generator).squeeze(-1)
                obs, _, step_done, _ = env.step(action)
                done |= step_done
                if done.all():
                    break
    finally:
        env.close()
    return int(done.sum())


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved timings of the eval and the bare rollout; returns the report."""
    import torch
    from shardlab.envs.eval_mazes import eval_mazes
    from shardlab.envs.maze_config import env_config
    from shardlab.evals.maze.goal_misgeneralization import GoalMisgeneralization
    from shardlab.evals.suite.context import EvalContext

    policy, cfg, steps = _policy(args)
    eval_cfg = GoalMisgeneralization.Config(mazes=args.mazes, decision_mazes=args.mazes)
    train_env = cfg.env
    region = train_env.rand_region if train_env.rand_region is not None else 5
    max_size = train_env.max_maze_size or (15 if train_env.distribution_mode == "easy" else 25)
    base = dict(num_envs=args.mazes, seed=args.seed)
    # the three maze sets the eval plays, built here outside the bare rollout's clock
    outside = [m.state for m in eval_mazes(args.mazes, args.seed, cheese="outside_region", region=region,
                                           max_size=max_size, mode=train_env.distribution_mode)]
    decision = [m.state for m in eval_mazes(args.mazes, args.seed + 1, cheese="anywhere", region=region,
                                            max_size=max_size, require_decision_square=True,
                                            mode=train_env.distribution_mode)]
    anywhere = {**base, "rand_region": None, "max_maze_size": None, "min_maze_size": None}
    sets = [(env_config(cfg, **anywhere), outside),
            (env_config(cfg, **base, rand_region=region, max_maze_size=max_size), None),
            (env_config(cfg, **{**anywhere, "num_envs": len(decision), "seed": args.seed}), decision)]
    channels_last = cfg.model.channels_last
    timings: dict[str, list[float]] = {"eval": [], "bare": []}
    episodes = {}
    with tempfile.TemporaryDirectory() as out:
        for repeat in range(args.repeats):
            start = time.perf_counter()
            ctx = EvalContext(policy, cfg, out, seed=args.seed, progress=False, train_steps=steps)
            result = GoalMisgeneralization(eval_cfg).run(ctx)
            timings["eval"].append(time.perf_counter() - start)
            episodes["eval"] = sum(m.n for m in result.metrics
                                   if m.name in ("p_cheese", "in_distribution/p_cheese", "decision/p_cheese"))
            start = time.perf_counter()
            episodes["bare"] = sum(bare_rollout(policy, env_cfg, states, channels_last) for env_cfg, states in sets)
            timings["bare"].append(time.perf_counter() - start)
    rates = {name: [episodes[name] / t for t in times] for name, times in timings.items()}
    median = {name: statistics.median(values) for name, values in rates.items()}
    return {"benchmark": "evals", "checkpoint": args.checkpoint, "config": None if args.checkpoint else args.config,
            "mazes_per_set": args.mazes, "episodes": episodes, "seconds": timings,
            "episodes_per_sec": rates, "median_episodes_per_sec": median,
            "ratio": median["eval"] / median["bare"], "target_ratio": TARGET_RATIO,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "load_average_after": os.getloadavg()[0]}


def format_report(report: dict[str, Any]) -> str:
    """The printed table."""
    median, rates = report["median_episodes_per_sec"], report["episodes_per_sec"]
    lines = [f"goal_misgeneralization eval vs bare batched rollout ({report['mazes_per_set']} mazes × 3 sets, "
             f"{report['threads']} threads)",
             f"{'':<8} {'episodes':>9} {'median ep/s':>12}   runs"]
    for name in ("eval", "bare"):
        lines.append(f"{name:<8} {report['episodes'][name]:>9} {median[name]:>12.1f}   "
                     + ", ".join(f"{r:.1f}" for r in rates[name]))
    verdict = "meets" if report["ratio"] >= TARGET_RATIO else "misses"
    lines.append(f"ratio eval/bare = {report['ratio']:.3f} ({verdict} the target >= {TARGET_RATIO})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Time the eval against the bare rollout, interleaved."""
    from shardlab.trainers.config import ConfigError

    if args.mazes < 2 or args.repeats < 1:
        raise ConfigError("--mazes must be >= 2 and --repeats >= 1")
    progress(f"goal_misgeneralization eval vs bare rollout: {args.repeats} interleaved repeats")
    report = measure(args)
    return finish_report(format_report(report), report, args.json)
