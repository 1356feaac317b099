"""``benchmark.py learn``: does the recipe learn? Train it (or resume the run directory), then
evaluate every step-N checkpoint, sampled and greedy, and a random policy on the same held-out
mazes (the first episode of each seeded env), and print the learning curve.

With ``--seeds 0,1,2 --compare trainer.precision=bf16-mixed`` it checks learning parity instead:
the recipe and the recipe plus the compared overrides, each trained on every seed, their sampled
held-out return at each ``--at`` step count (mean ± standard error over seeds), the difference with
its combined standard error, and each setting's training env steps/s.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import asdict

from benchmarks.common import write_json_report

NAME = "learn"
HELP = "does the recipe learn? train, then evaluate each checkpoint against a random policy"
DEFAULT_CONFIG = os.path.join("configs", "train", "maze_ppo_cpu.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``learn``."""
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="training recipe")
    parser.add_argument("--run-dir", default="runs/bench-learn", help="run directory (resumed if it exists)")
    parser.add_argument("--steps", type=int, default=300_000, help="env steps to train")
    parser.add_argument("--checkpoint-every", type=int, default=50_000, help="env steps between evaluated checkpoints")
    parser.add_argument("--episodes", type=int, default=200, help="held-out episodes per policy and checkpoint")
    parser.add_argument("--json", help="write the curve as JSON here")
    parser.add_argument("--seeds", help="comma-separated seeds: learning parity of the recipe and --compare")
    parser.add_argument("--compare", default="", help="comma-separated overrides of the compared setting, "
                        "e.g. trainer.precision=bf16-mixed (with --seeds)")
    parser.add_argument("--at", default="1000000,2000000",
                        help="env step counts where --seeds compares held-out returns (default 1M,2M)")
    parser.add_argument("overrides", nargs="*", help="config overrides")


def _mean_se(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def run_parity(args: argparse.Namespace) -> int:
    """Train both settings on every seed and compare held-out returns at the --at step counts."""
    from shardlab import cli
    from shardlab.envs.episodes import first_episodes, summarise
    from shardlab.envs.maze_config import env_config
    from shardlab.models.weights import load_policy_weights
    from shardlab.trainers.checkpointing import step_checkpoints
    from shardlab.trainers.config import ConfigError, load_config
    from shardlab.trainers.kinds import get_kind

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    at = [int(float(s)) for s in args.at.split(",") if s.strip()]
    compare = [o.strip() for o in args.compare.split(",") if o.strip()]
    if not seeds or not at or not compare:
        raise ConfigError("--seeds needs seeds, --at step counts and --compare overrides (e.g. trainer.precision=bf16-mixed)")
    steps = max(at)
    settings = {"baseline": [], "compared": compare}
    results: dict[str, dict] = {}
    for name, extra in settings.items():
        returns: dict[int, list[float]] = {a: [] for a in at}
        seconds, trained = 0.0, 0
        for seed in seeds:
            run_dir = os.path.join(args.run_dir, name, f"seed{seed}")
            length = [f"trainer.total_steps={steps}", f"trainer.checkpoint_every={args.checkpoint_every}",
                      "trainer.keep_checkpoints=1000"]
            start = time.perf_counter()
            if os.path.isfile(os.path.join(run_dir, "config.yaml")):
                code = cli.main(["resume", run_dir, *length])
            else:
                code = cli.main(["train", args.config, *args.overrides, *extra, f"trainer.seed={seed}",
                                 f"env.seed={seed}", *length, "--run-dir", run_dir])
            if code:
                return code
            cfg = load_config(os.path.join(run_dir, "config.yaml"), length)
            seconds += time.perf_counter() - start
            trained += steps
            held_out = env_config(cfg, num_envs=args.episodes, seed=987_654)
            found = step_checkpoints(os.path.join(run_dir, "checkpoints"))
            for target in at:
                path = next((p for s, p in found if s >= target), None)
                if path is None:
                    raise ConfigError(f"{run_dir} has no checkpoint at or after {target:,} env steps")
                policy = load_policy_weights(get_kind(cfg.algo).build_network(cfg), path).eval()
                returns[target].append(summarise(first_episodes(policy, held_out)).mean_return)
        results[name] = {"overrides": extra, "returns": returns,
                         "env_steps_per_sec": trained / seconds if seconds else float("nan")}
    print(f"\nlearning parity: {args.config} {' '.join(args.overrides)}; compared: {' '.join(compare)}; "
          f"seeds {seeds}; {args.episodes} held-out mazes, sampled moves")
    print(f"  {'env steps':>10}  {'baseline':>14}  {'compared':>14}  {'difference':>16}  parity")
    rows = []
    for target in at:
        b = _mean_se(results["baseline"]["returns"][target])
        c = _mean_se(results["compared"]["returns"][target])
        diff, se = c[0] - b[0], math.hypot(b[1], c[1])
        ok = abs(diff) <= se
        rows.append({"env_steps": target, "baseline": b, "compared": c, "difference": diff, "se": se, "parity": ok})
        print(f"  {target:>10,}  {b[0]:>7.2f} ± {b[1]:<4.2f}  {c[0]:>7.2f} ± {c[1]:<4.2f}  {diff:>+8.2f} ± {se:<5.2f}  "
              f"{'yes' if ok else 'no'}")
    print("  training env steps/s (wall, start-up included): "
          + ", ".join(f"{n} {r['env_steps_per_sec']:,.0f}" for n, r in results.items()))
    if args.json:
        write_json_report(args.json, {"benchmark": "learn-parity", "config": args.config, "seeds": seeds,
                                      "settings": results, "rows": rows})
    return 0 if all(r["parity"] for r in rows) else 1


def run(args: argparse.Namespace) -> int:
    """Train the recipe, evaluate every step-N checkpoint and a random policy on the same held-out mazes."""
    if args.seeds:
        return run_parity(args)
    from shardlab import cli
    from shardlab.envs.episodes import first_episodes, summarise
    from shardlab.envs.maze_config import env_config
    from shardlab.models.weights import load_policy_weights
    from shardlab.trainers.checkpointing import step_checkpoints
    from shardlab.trainers.config import load_config
    from shardlab.trainers.kinds import get_kind

    start = time.perf_counter()
    length = [f"trainer.total_steps={args.steps}", f"trainer.checkpoint_every={args.checkpoint_every}",
              "trainer.keep_checkpoints=1000"]
    if os.path.isfile(os.path.join(args.run_dir, "config.yaml")):
        code = cli.main(["resume", args.run_dir, *length])
    else:
        code = cli.main(["train", args.config, *args.overrides, *length, "--run-dir", args.run_dir])
    if code:
        return code
    train_seconds = time.perf_counter() - start
    cfg = load_config(os.path.join(args.run_dir, "config.yaml"), length)
    held_out = env_config(cfg, num_envs=args.episodes, seed=987_654)
    rows = [{"env_steps": 0, "policy": "random", **asdict(summarise(first_episodes(None, held_out)))}]
    for steps, path in step_checkpoints(os.path.join(args.run_dir, "checkpoints")):
        policy = load_policy_weights(get_kind(cfg.algo).build_network(cfg), path).eval()
        for greedy in (False, True):
            summary = summarise(first_episodes(policy, held_out, greedy=greedy))
            rows.append({"env_steps": steps, "policy": "greedy" if greedy else "sampled", **asdict(summary)})
    print(f"\nlearning curve: {args.config}, {args.episodes} held-out mazes per row "
          f"(first episode of each seeded env, cheese region {cfg.env.rand_region}), "
          f"training took {train_seconds / 60:.1f} min")
    print(f"  {'env steps':>10}  {'policy':<8} {'mean return':>14} {'cheese':>7} {'corner':>7} {'length':>7}")
    for row in rows:
        print(f"  {row['env_steps']:>10,}  {row['policy']:<8} {row['mean_return']:>7.2f} ± {row['return_stderr']:<4.2f} "
              f"{row['cheese_rate']:>7.1%} {row['corner_rate']:>7.1%} {row['mean_length']:>7.0f}")
    if args.json:
        write_json_report(args.json, {"benchmark": "learn", "config": args.config, "train_seconds": train_seconds,
                                      "rows": rows})
    return 0
