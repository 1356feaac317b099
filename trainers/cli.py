"""The ``shardlab`` command: ``train``, ``resume`` and ``collect`` (more subcommands join as they land)."""

from __future__ import annotations

import argparse
import os
import sys

from trainers.checkpointing import CheckpointError
from trainers.config import ConfigError, check_runnable, load_config

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardlab", description="Train and evaluate toy agents "
                                     "(`shardlab eval --help` for the eval suite).")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="start a run from a YAML recipe")
    train.add_argument("config", help="YAML recipe, e.g. configs/train/maze_ppo_cpu.yaml")
    train.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. ppo.lr=3e-4")
    train.add_argument("--run-dir", help="run directory (default: runs/<name>)")
    resume = sub.add_parser("resume", help="continue a run from its last checkpoint")
    resume.add_argument("run_dir", help="a run directory made by `shardlab train`")
    resume.add_argument("overrides", nargs="*", help="overrides, e.g. trainer.total_steps=2000000")
    from trainers.collect import add_arguments as add_collect_arguments

    add_collect_arguments(sub.add_parser("collect", help="roll out a policy on MiniGrid/BabyAI and write a "
                                         "trajectory dataset (see README)"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; exit 0 on success, 2 on bad input (printed as one line)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "collect":  # every collect option is a flag; there are no overrides
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        from trainers import collect
        return collect.main(args)
    # overrides may also come after --run-dir
    unknown = [item for item in extra if "=" not in item or item.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*args.overrides, *extra]
    try:
        from trainers import run  # heavy imports only after argument parsing
        if args.command == "train":
            cfg = load_config(args.config, args.overrides)
            check_runnable(cfg)
            run_dir = args.run_dir or os.path.join("runs", cfg.name)
            run.prepare_run_dir(cfg, run_dir)
            ckpt = None
        else:
            run_dir = args.run_dir
            cfg, ckpt = run.load_run(run_dir, args.overrides)
            check_runnable(cfg)
        if not run.is_launched_worker():
            print(f"run directory: {run_dir}", file=sys.stderr)
        module = run.fit(cfg, run_dir, ckpt)
    except (ConfigError, CheckpointError) as exc:
        print(f"shardlab {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if module.global_rank == 0:
        print(f"checkpoint: {os.path.join(run_dir, 'checkpoints', 'last.ckpt')}\n"
              f"tensorboard: tensorboard --logdir {os.path.join(run_dir, 'tb')}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
