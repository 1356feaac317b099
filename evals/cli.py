"""The ``shardlab`` console script: ``eval`` here, ``train``/``resume`` from trainers.cli."""

from __future__ import annotations

import argparse
import sys

from trainers import cli as train_cli


def _eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardlab eval", description="Run an eval suite on a checkpoint.")
    parser.add_argument("checkpoint", help="a shardlab checkpoint, e.g. runs/a/checkpoints/last.ckpt, or a scripted "
                        "policy: oracle:cheese_seeker, oracle:corner_seeker, oracle:corner_then_cheese:K, oracle:uniform")
    parser.add_argument("--recipe", help="training recipe whose env a scripted policy (oracle:NAME) plays")
    parser.add_argument("--suite", default="configs/evals/ci.yaml", help="suite YAML (evals + thresholds)")
    parser.add_argument("--out", required=True, help="output folder for results.json, junit.xml and plots")
    parser.add_argument("--only", help="run only this eval of the suite")
    parser.add_argument("--limit", type=int, help="cap the number of mazes/episodes per eval (quick CI runs)")
    parser.add_argument("--seed", type=int, help="override the suite's seed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs stay short)")
    parser.add_argument("overrides", nargs="*", metavar="EVAL.KEY=VALUE",
                        help="change an eval's config, e.g. retargeting.max_steps=500 steering.mazes=200")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``shardlab eval``; everything else goes to ``trainers.cli``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] != "eval":
        return train_cli.main(argv)
    args = _eval_parser().parse_intermixed_args(argv[1:])
    from evals.runner import run_suite  # heavy imports after parsing
    return run_suite(args.checkpoint, args.suite, args.out, only=args.only, limit=args.limit, seed=args.seed,
                     progress=not args.no_progress, overrides=args.overrides, recipe=args.recipe)


if __name__ == "__main__":
    sys.exit(main())
