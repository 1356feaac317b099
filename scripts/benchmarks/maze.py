"""``benchmark.py maze``: the maze toolkit's speed on one seeded maze (``--maze-size``, default 25×25).

(a) state edits per second, ``layout`` + ``with_cheese_at`` + ``MazeEnv.set_state`` on one env, and
each part alone; (b) one vector field: ``with_mouse_at`` on every open square, one batched
``render_rgb`` and one batched ``ImpalaPolicy`` forward at scale 1 and 4; (c) ``MazeEnv`` env
steps/s with grid vs rgb observations (64 envs, random actions, both in the same run, order
alternating between repeats). Each timing runs once untimed first; medians over ``--repeats`` are
reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Callable

from benchmarks.common import finish_report, progress

NAME = "maze"
HELP = "maze toolkit: state edits/s, vector-field render + forward time, grid vs rgb env steps/s"
FORWARD_SCALES = (1, 4)


def _median_timing(function: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    """Median and all wall-clock seconds of ``repeats`` calls of ``function`` (after one untimed call)."""
    function()  # pays one-off costs: renderer creation, oneDNN primitive caching, allocator growth
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), seconds


def _measure_state_edits(state: bytes, reps: int, repeats: int) -> dict[str, Any]:
    """(a) edits/s of layout + with_cheese_at + set_state on one env, and each part alone."""
    from shardlab.envs import maze_geometry, maze_state
    from shardlab.envs.maze import MazeEnv, MazeEnvConfig

    env = MazeEnv(MazeEnvConfig(num_envs=1, rand_region=None))
    try:
        inner = maze_state.inner_grid(state)
        squares = [s for s in maze_geometry.region_squares(inner, inner.shape[0]) if s != (0, 0)]
        where = maze_state.layout(state)
        edited = maze_state.with_cheese_at(state, squares[0], where)

        def full() -> None:
            for k in range(reps):
                here = maze_state.layout(state)
                env.set_state(0, maze_state.with_cheese_at(state, squares[k % len(squares)], here))

        parts = {
            "layout": lambda: [maze_state.layout(state) for _ in range(reps)],
            "with_cheese_at": lambda: [maze_state.with_cheese_at(state, squares[k % len(squares)], where)
                                       for k in range(reps)],
            "set_state": lambda: [env.set_state(0, edited) for _ in range(reps)],
        }
        seconds, runs = _median_timing(full, repeats)
        result: dict[str, Any] = {"reps": reps, "edits_per_sec": reps / seconds,
                                  "edits_per_sec_runs": [reps / s for s in runs], "part_us": {}}
        for name, part in parts.items():
            part_seconds, _ = _median_timing(part, repeats)
            result["part_us"][name] = 1e6 * part_seconds / reps
        return result
    finally:
        env.close()


def _measure_vector_field(state: bytes, repeats: int) -> dict[str, Any]:
    """(b) seconds to render the mouse on every open square of one maze and run the policy on them."""
    import numpy as np
    import torch

    from shardlab.envs import maze_state, maze_views
    from shardlab.models.impala import ImpalaPolicy, preprocess

    where = maze_state.layout(state)
    inner = maze_state.inner_grid(state, where)
    cheese = maze_state.cheese_square(state, where)
    squares = [(int(x), int(y)) for y, x in np.argwhere(inner != maze_state.WALL) if (x, y) != cheese]
    states: list[bytes] = []

    def edit() -> None:
        states[:] = [maze_state.with_mouse_at(state, square, where) for square in squares]

    images: list[Any] = []

    def render() -> None:
        images[:] = [maze_views.render_rgb(states)]

    timings = {"edit": _median_timing(edit, repeats), "render_rgb": _median_timing(render, repeats)}
    obs = torch.from_numpy(images[0])
    for scale in FORWARD_SCALES:
        policy = ImpalaPolicy(scale=scale).eval()

        def forward() -> None:
            with torch.inference_mode():
                logits, _ = policy(preprocess(obs))
                logits.softmax(-1)

        timings[f"forward_scale{scale}"] = _median_timing(forward, repeats)
    return {"maze_dim": where.maze_dim, "squares": len(squares),
            "seconds": {name: median for name, (median, _) in timings.items()},
            "seconds_runs": {name: runs for name, (_, runs) in timings.items()}}


def _measure_env_steps(num_envs: int, steps: int, repeats: int, seed: int) -> dict[str, Any]:
    """(c) env steps/s of MazeEnv with grid vs rgb observations, random actions, alternating order."""
    import torch

    from shardlab.envs.maze import MazeEnv, MazeEnvConfig

    envs = {obs: MazeEnv(MazeEnvConfig(num_envs=num_envs, obs=obs, seed=seed)) for obs in ("grid", "rgb")}
    rates: dict[str, list[float]] = {obs: [] for obs in envs}
    generator = torch.Generator().manual_seed(seed)
    actions = torch.randint(0, 15, (steps, num_envs), generator=generator)
    try:
        for env in envs.values():
            env.reset()
            for t in range(min(20, steps)):  # warm-up
                env.step(actions[t])
        for repeat in range(repeats):
            # alternate the order so a drift of the machine does not always hit the same one
            for obs in (("grid", "rgb") if repeat % 2 == 0 else ("rgb", "grid")):
                env = envs[obs]
                start = time.perf_counter()
                for t in range(steps):
                    env.step(actions[t])
                rates[obs].append(num_envs * steps / (time.perf_counter() - start))
    finally:
        for env in envs.values():
            env.close()
    median = {obs: statistics.median(r) for obs, r in rates.items()}
    return {"num_envs": num_envs, "steps": steps, "env_steps_per_sec": median,
            "env_steps_per_sec_runs": rates, "grid_over_rgb": median["grid"] / median["rgb"]}


def format_maze_table(report: dict[str, Any]) -> str:
    """The human-readable report of ``benchmark.py maze``."""
    edits, field, steps = report["state_edits"], report["vector_field"], report["env_steps"]
    s = field["seconds"]
    lines = [
        f"maze toolkit: hard mode, torch threads {report['threads']} ({report['cpu_count']} CPUs), "
        f"median of {report['repeats']} repeat(s); load average {report['load_average']['before']:.2f} "
        f"before, {report['load_average']['after']:.2f} after",
        "",
        f"  {'measurement':<52}{'value':>12}  unit",
        f"  {'(a) layout + with_cheese_at + set_state, one env':<52}{edits['edits_per_sec']:>12,.0f}  edits/s",
    ]
    lines += [f"  {'      ' + name:<52}{us:>12.1f}  µs each" for name, us in edits["part_us"].items()]
    lines.append(f"  {'(b) vector field, ' + str(field['maze_dim']) + '×' + str(field['maze_dim']) + ' maze, ' + str(field['squares']) + ' mouse squares':<52}")
    lines.append(f"  {'      with_mouse_at on every square':<52}{s['edit']:>12.3f}  s")
    lines.append(f"  {'      render_rgb (one batch)':<52}{s['render_rgb']:>12.3f}  s")
    for scale in FORWARD_SCALES:
        lines.append(f"  {f'      ImpalaPolicy(scale={scale}) forward (one batch)':<52}"
                     f"{s[f'forward_scale{scale}']:>12.3f}  s")
    for scale in FORWARD_SCALES:
        total = s["edit"] + s["render_rgb"] + s[f"forward_scale{scale}"]
        lines.append(f"  {f'      whole field, scale {scale}':<52}{total:>12.3f}  s")
    rate = steps["env_steps_per_sec"]
    lines.append(f"  {'(c) MazeEnv, ' + str(steps['num_envs']) + ' envs, random actions: grid obs':<52}"
                 f"{rate['grid']:>12,.0f}  env steps/s")
    lines.append(f"  {'      rgb obs':<52}{rate['rgb']:>12,.0f}  env steps/s")
    lines.append(f"  {'      grid / rgb':<52}{steps['grid_over_rgb']:>12.2f}  ×")
    if report["repeats"] > 1:
        lines += ["", "  per repeat: edits/s " + ", ".join(f"{r:,.0f}" for r in edits["edits_per_sec_runs"])
                  + "; grid " + ", ".join(f"{r:,.0f}" for r in steps["env_steps_per_sec_runs"]["grid"])
                  + "; rgb " + ", ".join(f"{r:,.0f}" for r in steps["env_steps_per_sec_runs"]["rgb"])]
    return "\n".join(line.rstrip() for line in lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``benchmark.py maze``."""
    parser.add_argument("--reps", type=int, default=2000, help="state edits per timing of (a) (default 2000)")
    parser.add_argument("--steps", type=int, default=200, help="env steps per timing of (c) (default 200)")
    parser.add_argument("--num-envs", type=int, default=64, help="envs of (c) (default 64)")
    parser.add_argument("--maze-size", type=int, default=25, help="odd maze side for (a) and (b) (default 25)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per measurement; medians reported (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the maze and the env (default 0)")
    parser.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")


def run(args: argparse.Namespace) -> int:
    """Time state editing, one vector field (render + forward) and grid vs rgb env stepping."""
    import torch

    from shardlab.envs.eval_mazes import eval_mazes
    from shardlab.trainers.config import ConfigError

    if min(args.reps, args.steps, args.num_envs, args.repeats) < 1:
        raise ConfigError("--reps, --steps, --num-envs and --repeats must be >= 1")
    if args.maze_size % 2 == 0 or not 3 <= args.maze_size <= 25:
        raise ConfigError(f"--maze-size must be odd, 3 to 25; got {args.maze_size}")
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        progress(f"warning: load average is {load_before:.2f}; another process may be using the CPU")
    state = eval_mazes(1, args.seed, min_size=args.maze_size, max_size=args.maze_size)[0].state
    progress(f"(a) state edits: {args.repeats} × {args.reps}")
    edits = _measure_state_edits(state, args.reps, args.repeats)
    progress("(b) vector field")
    field = _measure_vector_field(state, args.repeats)
    progress(f"(c) env steps: {args.repeats} × {args.steps} steps of {args.num_envs} envs, grid and rgb")
    steps = _measure_env_steps(args.num_envs, args.steps, args.repeats, args.seed)
    report = {"benchmark": "maze", "repeats": args.repeats, "seed": args.seed,
              "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
              "state_edits": edits, "vector_field": field, "env_steps": steps,
              "load_average": {"before": load_before, "after": os.getloadavg()[0]}}
    return finish_report(format_maze_table(report), report, args.json)
