"""The native maze generator's distribution against procgen's at 10k+ mazes per mode (the large
version of tests/test_maze_native.py's distribution test, with its statistics and tests).

Run: ``python scripts/benchmarks/maze_native_distribution.py [--samples 10240] [--seeds 0 1 2]``.
For each mode and seed it draws ``--samples`` procgen levels (forced resets of 64 envs) and as
many native mazes, and prints per statistic (maze size, BFS path start → top-right corner and
start → cheese, dead ends, whether a decision square exists) the means and the p-values of a
chi-square test (pooled bins) and, for the counts, a two-sample KS test; then the same tests for
two wrong generators (depth-first-search mazes; the cheese uniform including the start), which
must fail. Not a ``benchmark.py`` subcommand: top-level imports stay in the standard library so
that the benchmark discovery can import this module cheaply.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _test_helpers():
    """The statistics of tests/test_maze_native.py, so the script runs exactly the test's checks."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import test_maze_native

    return test_maze_native


def _negative_controls(t, reference, native, rng) -> dict[str, float]:
    """p-values of the wrong generators against procgen (both must be tiny)."""
    import numpy as np
    import torch

    from shardlab.envs import maze_geometry
    from shardlab.envs.maze_native import inner_grid

    n = len(reference)
    sizes = 3 + 2 * rng.integers(0, (int(reference[:, 0].max()) - 1) // 2, n)
    dfs_rows = []
    for size in sizes:
        inner = t.dfs_maze(int(size), rng)
        dfs_rows.append(t.maze_stats(inner, t.random_cheese(inner, rng)))
    dfs = t.compare(reference, np.array(dfs_rows))
    walls, _, dims = native
    with_start = []
    for w, d in zip(walls, dims.tolist()):
        inner = inner_grid(w, torch.tensor([-1, -1]), d)
        square = t.random_cheese(inner, rng, include_start=True)
        with_start.append(int(maze_geometry.distances_from(inner, (0, 0))[square[1], square[0]]))
    return {"dfs dead_ends": dfs["dead_ends"], "dfs corner_path": dfs["corner_path"],
            "cheese-at-start cheese_path": t.chi2_p(reference[:, 2], np.array(with_start))}


def run(samples: int, seeds: list[int]) -> int:
    """Print the comparison for every mode and seed; return 1 if a correct-generator test fails."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    t = _test_helpers()
    from shardlab.envs.maze_config import WORLD_DIM
    from shardlab.envs.maze_native import generate_mazes

    failed = False
    for mode in ("easy", "hard"):
        for seed in seeds:
            start = time.perf_counter()
            reference = t.stats_of_states(t.procgen_states(mode, samples, seed=1000 + seed))
            generator = torch.Generator().manual_seed(seed)
            batch = generate_mazes(samples, WORLD_DIM[mode], generator)
            native = (batch.walls, batch.cheese, batch.maze_dim)
            sample = t.stats_of_batch(*native)
            p_values = t.compare(reference, sample)
            print(f"\n{mode}, seed {seed}: {samples} procgen vs {samples} native mazes "
                  f"({time.perf_counter() - start:.0f} s)")
            print(f"  {'statistic':<16} {'procgen mean':>13} {'native mean':>12} {'min p (chi2, KS)':>17}")
            for k, name in enumerate(t.STAT_NAMES):
                print(f"  {name:<16} {reference[:, k].mean():>13.3f} {sample[:, k].mean():>12.3f} "
                      f"{p_values[name]:>17.3g}")
            failed |= min(p_values.values()) <= t.P_MIN
            controls = _negative_controls(t, reference, native, np.random.default_rng(seed))
            print("  wrong generators (must be < 0.001): "
                  + ", ".join(f"{name} p={p:.2g}" for name, p in controls.items()))
    print("\nall correct-generator p-values > 0.001" if not failed else "\nA CORRECT-GENERATOR TEST FAILED")
    return int(failed)


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10240, help="mazes per source, mode and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    return run(args.samples, args.seeds)


if __name__ == "__main__":
    sys.exit(main())
