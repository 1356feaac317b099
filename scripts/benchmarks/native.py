"""``benchmark.py native``: the native torch maze env (``env.backend: native``) against procgen's,
measured side by side in one run.

1. Bare env: env steps/s with uniformly random actions drawn up front, hard mode, cheese anywhere,
   for each ``--sizes`` batch (the recipes use 16-64 envs) and each ``--views`` observation; native
   on the CPU (and CUDA when available) and procgen, and their ratio (targets at the recipes' batch
   sizes: grid >= 20x, RGB >= 3x); then what a finished env's reset costs natively: the generator's
   mazes/s (paid in pool batches) and, for the RGB view, procgen's renders of level pictures/s.
2. Eval: the wall time of the goal_misgeneralization eval of ``--checkpoint`` (default: the committed
   CI fixture, a ``maze_demo`` grid policy) on each backend, repeats interleaved so drifting load
   hits both alike; both play the same mazes from loaded states with the same seeded actions, so
   their metrics must be identical (checked here) and the ratio of wall times is the speed-up
   (target: >= 3x for the demo's evaluation).

The eval's time includes what does not depend on the env (the policy's forwards, BFS, bootstrap
intervals, the plot), which caps the eval's speed-up below the bare env's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any, Callable

from benchmarks.common import finish_report, progress

NAME = "native"
HELP = "native torch maze env vs procgen: bare env steps/s by batch size and the eval's wall time, with ratios"
ENV_TARGET, RGB_TARGET, EVAL_TARGET = 20.0, 3.0, 3.0
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CI_POLICY = os.path.join(REPO, "tests", "fixtures", "ci_policy.ckpt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``benchmark.py native``."""
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256, 1024],
                        help="env batch sizes of the bare-env part (default 16 64 256 1024)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per bare-env measurement")
    parser.add_argument("--views", nargs="+", choices=["grid", "rgb"], default=["grid", "rgb"],
                        help="observations of the bare-env part (default: grid rgb)")
    parser.add_argument("--checkpoint", default=CI_POLICY, help="a grid maze PPO checkpoint (default: the CI fixture)")
    parser.add_argument("--mazes", type=int, default=100, help="test mazes per maze set of the eval (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved eval timings; medians reported")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--skip-env", action="store_true", help="only the eval part")
    parser.add_argument("--skip-eval", action="store_true", help="only the bare-env part")
    parser.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")


def _steps_per_second(make: Callable[[], Any], num_envs: int, seconds: float, device: str) -> float:
    """Env steps/s of a fresh env stepped with random actions for about ``seconds`` (after warm-up)."""
    import torch

    env = make()
    try:
        actions = torch.randint(0, 15, (256, num_envs), generator=torch.Generator().manual_seed(0)).to(device)
        env.reset()
        for k in range(5):  # warm-up: allocator growth, the native generator's first pool refill
            env.step(actions[k])
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        sync()
        start, steps = time.perf_counter(), 0
        while time.perf_counter() - start < seconds or steps < 3:
            env.step(actions[steps % len(actions)])
            steps += 1
        sync()
        return steps * num_envs / (time.perf_counter() - start)
    finally:
        env.close()


def env_steps_per_second(view: str, num_envs: int, seconds: float, device: str) -> float:
    """Bare env steps/s, hard mode, random actions: the native env on ``device``, or procgen's ("procgen")."""
    from shardlab.envs.maze import MazeEnv, MazeEnvConfig
    from shardlab.envs.maze_native import NativeMazeEnv

    cfg = MazeEnvConfig(num_envs=num_envs, distribution_mode="hard", obs=view, rand_region=None)
    if device == "procgen":
        return _steps_per_second(lambda: MazeEnv(cfg), num_envs, seconds, "cpu")
    return _steps_per_second(lambda: NativeMazeEnv(cfg, device=device), num_envs, seconds, device)


def measure_env(sizes: list[int], seconds: float, views: list[str]) -> list[dict[str, Any]]:
    """One row per view and batch size: env steps/s of each backend and native-cpu / procgen."""
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for view in views:
        for n in sizes:
            progress(f"bare env, {view} view, {n} envs")
            rates = {f"native_{d}": env_steps_per_second(view, n, seconds, d) for d in devices}
            rates["procgen"] = env_steps_per_second(view, n, seconds, "procgen")
            rows.append({"obs": view, "num_envs": n, "env_steps_per_sec": rates,
                         "ratio": rates["native_cpu"] / rates["procgen"]})
    return rows


def procgen_starts(count: int, mode: str = "hard", seed: int = 0) -> list[bytes]:
    """``count`` start states of fresh procgen levels (each with its own maze, background and offset)."""
    from shardlab.envs.procgen_import import ProcgenGym3Env

    states: list[bytes] = []
    while len(states) < count:
        env = ProcgenGym3Env(num=64, env_name="maze", distribution_mode=mode, rand_seed=seed + len(states))
        try:
            states += env.callmethod("get_state")
        finally:
            env.close()
    return states[:count]


def replay(states: list[bytes], steps: int, obs: str, device: str, num_envs: int = 16, seed: int = 0) -> dict[str, int]:
    """Procgen's MazeEnv and the native env on ``device`` in lock step from the same states with the same
    random actions (finished envs restart from the next state in both): how many live frames were
    compared and how many differed anywhere, and on how many steps the rewards or dones differed."""
    import torch

    from shardlab.envs import maze_state
    from shardlab.envs.maze import MazeEnv, MazeEnvConfig
    from shardlab.envs.maze_config import MODE_OF_WORLD
    from shardlab.envs.maze_native import NativeMazeEnv

    mode = MODE_OF_WORLD[maze_state.layout(states[0]).world_dim]
    cfg = MazeEnvConfig(num_envs=num_envs, distribution_mode=mode, obs=obs, rand_region=None, seed=seed)
    proc, native = MazeEnv(cfg), NativeMazeEnv(cfg, device=device)
    supply = (states[k % len(states)] for k in range(10**9))
    try:
        first = [next(supply) for _ in range(num_envs)]
        differ = lambda a, b: int((a != b.cpu()).flatten(1).any(1).sum())  # noqa: E731
        frames, bad_frames = num_envs, differ(proc.load_states(first), native.load_states(first))
        bad_steps = 0
        actions_rng = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            actions = torch.randint(0, 15, (num_envs,), generator=actions_rng)
            obs_p, reward_p, done_p, _ = proc.step(actions)
            obs_n, reward_n, done_n, _ = native.step(actions.to(device))
            bad_steps += not (torch.equal(reward_p, reward_n.cpu()) and torch.equal(done_p, done_n.cpu()))
            live = ~done_p
            frames += int(live.sum())
            bad_frames += differ(obs_p[live], obs_n.cpu()[live])
            for i in done_p.nonzero().flatten().tolist():
                state = next(supply)
                proc.set_state(i, state)
                native.set_state(i, state)
    finally:
        proc.close()
        native.close()
    return {"frames": frames, "differing_frames": bad_frames, "differing_steps": bad_steps}


def picture_rate(count: int = 256) -> float:
    """Level pictures/s procgen renders for the native RGB view (one per finished episode)."""
    import torch

    from shardlab.envs import maze_native_rgb
    from shardlab.envs.maze_native import generate_mazes

    mazes = generate_mazes(count, 25, torch.Generator().manual_seed(0), looks=True)
    levels = [field.numpy() for field in (mazes.walls, mazes.cheese, mazes.maze_dim, mazes.background, mazes.bg_pct_x)]
    maze_native_rgb.level_pictures(maze_native_rgb.level_states(*(field[:8] for field in levels)))  # warm-up
    start = time.perf_counter()
    maze_native_rgb.level_pictures(maze_native_rgb.level_states(*levels))  # building the states is per episode too
    return count / (time.perf_counter() - start)


def generation_rates(batch: int = 2048) -> dict[str, dict[str, float]]:
    """Native mazes generated per second in batches of ``batch``, by device and mode."""
    import torch

    from shardlab.envs.maze_native import generate_mazes

    rates: dict[str, dict[str, float]] = {}
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        rates[device] = {}
        for mode, world in (("easy", 15), ("hard", 25)):
            generator = torch.Generator(device=device).manual_seed(0)
            generate_mazes(64, world, generator, device=device)  # warm-up
            start = time.perf_counter()
            generate_mazes(batch, world, generator, device=device)
            if device == "cuda":
                torch.cuda.synchronize()
            rates[device][mode] = batch / (time.perf_counter() - start)
    return rates


def measure_eval(checkpoint: str, mazes: int, repeats: int) -> dict[str, Any]:
    """Interleaved wall times of goal_misgeneralization on each backend; metrics compared."""
    from shardlab.evals.maze.goal_misgeneralization import GoalMisgeneralization
    from shardlab.evals.suite.context import EvalContext
    from shardlab.evals.suite.evaluator import with_env_backend
    from shardlab.trainers.restore import load_trained

    trained = load_trained(checkpoint)
    backends = {name: with_env_backend(trained, name) for name in ("procgen", "native")}
    cfg = GoalMisgeneralization.Config(mazes=mazes, decision_mazes=mazes)
    seconds: dict[str, list[float]] = {name: [] for name in backends}
    metrics: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as out:
        for repeat in range(repeats):
            for name, backend in backends.items():
                progress(f"eval on {name}, repeat {repeat + 1}/{repeats}")
                start = time.perf_counter()
                ctx = EvalContext(backend.model, backend.config, out, seed=0, progress=False, train_steps=backend.steps)
                result = GoalMisgeneralization(cfg).run(ctx)
                seconds[name].append(time.perf_counter() - start)
                metrics[name] = {m.name: repr(m) for m in result.metrics}
    median = {name: statistics.median(times) for name, times in seconds.items()}
    differing = sorted(key for key in metrics["procgen"] if metrics["procgen"][key] != metrics["native"].get(key))
    return {"checkpoint": checkpoint, "mazes_per_set": mazes, "seconds": seconds, "median_seconds": median,
            "ratio": median["procgen"] / median["native"], "metrics": len(metrics["procgen"]),
            "metrics_differing": differing}


def format_report(report: dict[str, Any]) -> str:
    """The printed tables."""
    lines = []
    if report.get("env"):
        columns = list(report["env"][0]["env_steps_per_sec"])
        lines.append(f"bare env, hard mode, random actions, env steps/s ({report['threads']} torch threads)")
        lines.append(f"{'view':>5} {'envs':>6} " + " ".join(f"{c:>14}" for c in columns) + f" {'native/procgen':>15}")
        for row in report["env"]:
            rates = row["env_steps_per_sec"]
            lines.append(f"{row['obs']:>5} {row['num_envs']:>6} " + " ".join(f"{rates[c]:>14,.0f}" for c in columns)
                         + f" {row['ratio']:>14.1f}x")
        lines.append(f"targets: native >= {ENV_TARGET:.0f}x procgen (grid), >= {RGB_TARGET:.0f}x (rgb) at the "
                     "recipes' batch sizes (16-64 envs)")
        for device, rates in report["generation_mazes_per_sec"].items():
            lines.append(f"native maze generation on {device}: "
                         + ", ".join(f"{mode} {rate:,.0f} mazes/s" for mode, rate in rates.items()))
        if "level_pictures_per_sec" in report:
            lines.append(f"native RGB level pictures (procgen renders, one per episode): "
                         f"{report['level_pictures_per_sec']:,.0f}/s")
    if report.get("eval"):
        ev = report["eval"]
        lines.append(f"goal_misgeneralization on {os.path.relpath(ev['checkpoint'])} ({ev['mazes_per_set']} mazes per set)")
        for name in ("procgen", "native"):
            lines.append(f"  {name:<8} median {ev['median_seconds'][name]:7.2f} s   runs "
                         + ", ".join(f"{t:.2f}" for t in ev["seconds"][name]))
        same = ("all identical" if not ev["metrics_differing"]
                else f"{len(ev['metrics_differing'])} DIFFER: {', '.join(ev['metrics_differing'][:5])}")
        lines.append(f"  speed-up {ev['ratio']:.2f}x (target >= {EVAL_TARGET:.0f}x); {ev['metrics']} metrics, {same}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Both parts (unless skipped), printed and optionally written as JSON."""
    from shardlab.trainers.config import ConfigError

    if args.mazes < 2 or args.repeats < 1 or args.seconds <= 0 or min(args.sizes) < 1:
        raise ConfigError("--mazes must be >= 2, --repeats >= 1, --seconds > 0 and every --sizes >= 1")
    if not args.skip_eval and not os.path.isfile(args.checkpoint):
        raise ConfigError(f"--checkpoint {args.checkpoint} does not exist; pass a grid maze PPO checkpoint")
    import torch

    from shardlab.evals.suite.registry import EvalError

    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"benchmark": "native", "threads": args.threads, "cpu_count": os.cpu_count()}
    if not args.skip_env:
        report["env"] = measure_env(args.sizes, args.seconds, args.views)
        report["generation_mazes_per_sec"] = generation_rates()
        if "rgb" in args.views:
            report["level_pictures_per_sec"] = picture_rate()
    if not args.skip_eval:
        try:
            report["eval"] = measure_eval(args.checkpoint, args.mazes, args.repeats)
        except EvalError as exc:  # e.g. a checkpoint of a fixed level set, which the native env cannot play
            raise ConfigError(str(exc)) from None
    report["load_average_after"] = os.getloadavg()[0]
    return finish_report(format_report(report), report, args.json)
