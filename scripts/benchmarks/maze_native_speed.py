"""Env steps per second of the native torch maze (envs/maze_native.py) against the procgen-backed
MazeEnv, both with the grid observation, bare (no policy: uniformly random actions drawn up front).

Run: ``python scripts/benchmarks/maze_native_speed.py [--sizes 16 64 256 1024] [--seconds 2]``.
For each batch size it times native on CPU (and CUDA when available) and procgen, with the cheese
anywhere (``rand_region: null``) and in the top-right 5×5 (``rand_region: 5``, which makes the
procgen backend edit and re-read the state of every finished env); then the native maze
generator's throughput (the cost of a done env's reset, paid in pool batches). Each timing first
plays untimed warm-up steps; torch runs ``--threads`` intra-op threads (procgen its own 4 workers).
Not a ``benchmark.py`` subcommand: top-level imports stay in the standard library.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable


def _steps_per_second(make: Callable[[], Any], num_envs: int, seconds: float, device: str) -> float:
    """Env steps/s of a fresh env stepped with random actions for about ``seconds``."""
    import torch

    env = make()
    try:
        generator = torch.Generator().manual_seed(0)
        actions = torch.randint(0, 15, (256, num_envs), generator=generator).to(device)
        env.reset()
        for k in range(5):  # warm-up: allocator growth, first pool refill
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


def _generation_rate(world_dim: int, device: str, batch: int = 2048) -> float:
    """Native mazes generated per second in pool batches of ``batch``."""
    import torch

    from shardlab.envs.maze_native import generate_mazes

    generator = torch.Generator(device=device).manual_seed(0)
    generate_mazes(64, world_dim, generator, device=device)  # warm-up
    start = time.perf_counter()
    generate_mazes(batch, world_dim, generator, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return batch / (time.perf_counter() - start)


def run(sizes: list[int], seconds: float, threads: int) -> int:
    """Print the steps/s table and the generator's throughput."""
    import torch

    from shardlab.envs.maze import MazeEnv, MazeEnvConfig
    from shardlab.envs.maze_native import NativeMazeEnv

    torch.set_num_threads(threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    def cfg(n: int, region: Any) -> MazeEnvConfig:
        return MazeEnvConfig(num_envs=n, distribution_mode="hard", obs="grid", rand_region=region)

    columns = [f"native {d}" for d in devices] + ["procgen", "procgen r=5", "native cpu / procgen"]
    print(f"hard mode, grid obs, random actions, env steps/s (torch threads: {threads})")
    print(f"{'envs':>6} " + " ".join(f"{c:>20}" for c in columns))
    for n in sizes:
        native = [_steps_per_second(lambda: NativeMazeEnv(cfg(n, None), device=d), n, seconds, d) for d in devices]
        procgen = _steps_per_second(lambda: MazeEnv(cfg(n, None)), n, seconds, "cpu")
        procgen_region = _steps_per_second(lambda: MazeEnv(cfg(n, 5)), n, seconds, "cpu")
        row = [*native, procgen, procgen_region]
        print(f"{n:>6} " + " ".join(f"{v:>20,.0f}" for v in row) + f" {native[0] / procgen:>19.1f}x", flush=True)
    for device in devices:
        rates = {mode: _generation_rate(world, device) for mode, world in (("easy", 15), ("hard", 25))}
        print(f"native maze generation on {device}: " + ", ".join(f"{mode} {rate:,.0f} mazes/s"
                                                                for mode, rate in rates.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    return run(args.sizes, args.seconds, args.threads)


if __name__ == "__main__":
    sys.exit(main())
