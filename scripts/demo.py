"""`make demo`: train the CPU maze recipe for a few minutes, compare it with a random policy on
held-out mazes, and write runs/demo/report.md with the learning curve.

Running it again resumes runs/demo (finishing at once if it is complete) and rewrites the report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from trainers import cli  # noqa: E402

RECIPE = "configs/train/maze_ppo_cpu.yaml"


def plot_curve(metrics_path: str, out: str) -> None:
    """Return, cheese rate and episode length of finished training episodes against env steps."""
    with open(metrics_path) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    rows = [r for r in rows if "episode/return" in r]
    steps = [r["env_steps"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    panels = [("episode/return", "return"), ("episode/cheese_rate", "cheese rate"),
              ("episode/length", "episode length")]
    for ax, (key, label) in zip(axes, panels):
        values = [r[key] for r in rows]
        # iterations finish few episodes each, so a running mean shows the trend
        window = max(1, len(values) // 15)
        smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                  for i in range(len(values))]
        ax.plot(steps, values, alpha=0.3)
        ax.plot(steps, smooth)
        ax.set(xlabel="env steps", ylabel=label)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    fig.suptitle("training episodes (finished within each iteration)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> int:
    """Train (or resume), evaluate, report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", default="runs/demo")
    parser.add_argument("--steps", type=int, default=600_000, help="env steps to train (~4 min on 2 cores)")
    parser.add_argument("--episodes", type=int, default=128, help="held-out episodes per policy")
    args = parser.parse_args()
    start = time.time()
    overrides = [f"trainer.total_steps={args.steps}", "name=demo"]
    if os.path.isfile(os.path.join(args.run_dir, "checkpoints", "last.ckpt")):
        code = cli.main(["resume", args.run_dir, f"trainer.total_steps={args.steps}"])
    else:
        code = cli.main(["train", RECIPE, *overrides, "--run-dir", args.run_dir])
    if code != 0:
        return code
    trained_at = time.time()

    from omegaconf import OmegaConf

    from envs.maze import MazeEnvConfig
    from models.weights import load_policy_weights
    from trainers.episodes import first_episodes, summarise
    from trainers.ppo import build_policy
    from trainers.config import load_config

    cfg = load_config(os.path.join(args.run_dir, "config.yaml"))
    policy = load_policy_weights(build_policy(cfg), os.path.join(args.run_dir, "checkpoints", "last.ckpt"))
    policy.eval()
    held_out = MazeEnvConfig(**{**OmegaConf.to_container(cfg.env), "num_envs": args.episodes, "seed": 10_007})
    print(f"evaluating on {args.episodes} held-out mazes (sampled actions) ...", file=sys.stderr)
    trained = summarise(first_episodes(policy, held_out, progress=True))
    random_policy = summarise(first_episodes(None, held_out))
    plot_curve(os.path.join(args.run_dir, "metrics.jsonl"), os.path.join(args.run_dir, "learning_curve.png"))
    rows = [("trained (sampled)", trained), ("random", random_policy)]
    table = ["| policy | episodes | mean return | cheese rate | top-right corner rate | mean length |",
             "|---|---|---|---|---|---|"]
    table += [f"| {name} | {s.episodes} | {s.mean_return:.2f} ± {s.return_stderr:.2f} | {s.cheese_rate:.1%} | "
              f"{s.corner_rate:.1%} | {s.mean_length:.0f} |" for name, s in rows]
    report = "\n".join([
        "# shardlab demo", "",
        f"Recipe `{RECIPE}` trained for {cfg.trainer.total_steps:,} env steps "
        f"(cheese in the top-right {cfg.env.rand_region}×{cfg.env.rand_region} region during training).", "",
        "Held-out mazes, same region rule, first episode of each seeded env:", "", *table, "",
        "![learning curve](learning_curve.png)", "",
        f"Wall time: training {trained_at - start:.0f} s, evaluation {time.time() - trained_at:.0f} s.", ""])
    with open(os.path.join(args.run_dir, "report.md"), "w") as handle:
        handle.write(report)
    print("\n".join(table))
    from evals.runner import run_suite

    suite_code = run_suite(os.path.join(args.run_dir, "checkpoints", "last.ckpt"), "configs/evals/ci.yaml",
                           os.path.join(args.run_dir, "evals"))
    if suite_code == 2:
        return suite_code
    print(f"\nreport:      {os.path.join(args.run_dir, 'report.md')}\n"
          f"eval suite:  {os.path.join(args.run_dir, 'evals', 'results.json')}\n"
          f"checkpoint:  {os.path.join(args.run_dir, 'checkpoints', 'last.ckpt')}\n"
          f"tensorboard: tensorboard --logdir {os.path.join(args.run_dir, 'tb')}\n"
          f"continue:    shardlab resume {args.run_dir} trainer.total_steps={4 * args.steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
