"""The ``shardlab`` command: one parser for train, resume, collect, eval, explore, compare, list and config.

Every subcommand exits 0 on success and 2 on bad input (one line on stderr, nothing written);
``eval`` exits 1 when a threshold is missed, an eval crashes or a metric regressed against
``--baseline``; ``compare`` exits 1 on a regression. ``train`` and ``resume`` stopped by Ctrl-C or
SIGTERM exit 130 or 143, keeping the last complete checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys

from shardlab import __version__

EXIT_OK, EXIT_BAD_INPUT = 0, 2
ORACLES = "oracle:cheese_seeker, oracle:corner_seeker, oracle:corner_then_cheese:K, oracle:uniform"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _add_tolerances(command: argparse.ArgumentParser) -> None:
    command.add_argument("--tolerance", type=_non_negative_float, metavar="K",
                         help="a regression is a change the bad way beyond K combined standard errors (default 3)")
    command.add_argument("--min-effect", type=_non_negative_float, metavar="E",
                         help="... and beyond E in the metric's units (default 0.02)")


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give one or more eval names separated by commas")
    return names


def _logger_names(text: str) -> list[str]:
    if text.strip() == "none":
        return []
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give logger names separated by commas (tensorboard, csv, wandb) or none")
    return names


def parser() -> argparse.ArgumentParser:
    """The full command line."""
    top = _Parser(prog="shardlab", description="Train toy agents and transformers, then test what they learned.")
    top.add_argument("--version", action="version", version=f"shardlab {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    train = sub.add_parser("train", help="start a run from a recipe (a shipped name such as maze_demo, or a YAML path)")
    train.add_argument("config", metavar="RECIPE", help="recipe name (`shardlab list recipes`) or YAML path")
    train.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. ppo.lr=3e-4")
    train.add_argument("--run-dir", help="run directory (default: runs/<name>)")

    resume = sub.add_parser("resume", help="continue a run from its last checkpoint")
    resume.add_argument("run_dir", help="a run directory made by `shardlab train`")
    resume.add_argument("overrides", nargs="*", help="overrides, e.g. trainer.total_steps=2000000")

    from shardlab.trainers.collect_arguments import add_arguments as add_collect_arguments
    add_collect_arguments(sub.add_parser("collect", help="roll out a policy on MiniGrid/BabyAI and write a "
                                         "trajectory dataset"))

    ev = sub.add_parser("eval", help="run an eval suite on a checkpoint, a scripted policy or published weights")
    ev.add_argument("checkpoint", nargs="?", help=f"a shardlab checkpoint, a training run directory (evaluates its "
                    f"checkpoints: a sweep), or a scripted policy: {ORACLES}")
    ev.add_argument("--suite", default="ci", help="suite name (`shardlab list suites`) or YAML path (default: ci)")
    ev.add_argument("--out", help="output folder for results.json, junit.xml, report.md, report.html and plots")
    ev.add_argument("--recipe", help="training recipe for a scripted policy or a --weights file")
    ev.add_argument("--weights", help="a published weights file (e.g. procgen-tools' maze .pth), with --recipe")
    ev.add_argument("--only", type=_names, help="run only these evals of the suite, comma-separated")
    ev.add_argument("--limit", type=_positive_int, help="cap the number of mazes/episodes per eval (quick CI runs)")
    ev.add_argument("--seed", type=int, help="override the suite's seed")
    ev.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    ev.add_argument("--loggers", type=_logger_names, default=["tensorboard"],
                    help="where metrics and PNGs also go under --out: tensorboard (default), csv, wandb; "
                         "comma-separated, or none")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars (logs stay short)")
    ev.add_argument("--every", type=_positive_int, metavar="N",
                    help="with a run directory: only the first checkpoint at or after each multiple of N steps")
    ev.add_argument("--shard", metavar="K/N",
                    help="with a run directory: evaluate every N-th checkpoint from the K-th (0-based) and write "
                         "this shard's part; under a SLURM job array or torchrun K/N come from the environment")
    ev.add_argument("--merge", metavar="DIR",
                    help="write DIR/sweep.json from the parts of a sharded sweep (the last shard does it itself)")
    ev.add_argument("--log-episodes", action="store_true",
                    help="evals that play maze episodes also write <out>/<eval>/episodes.jsonl, one line per episode")
    ev.add_argument("--env-backend", metavar="procgen|native",
                    help="play the maze evals on this env backend instead of the checkpoint's env.backend; native "
                         "(the torch re-implementation, faster) takes grid checkpoints only")
    ev.add_argument("--baseline", metavar="OLD/results.json",
                    help="compare every shared metric with an earlier run's results.json; exit 1 on a regression")
    _add_tolerances(ev)
    ev.add_argument("--summary", metavar="FILE",
                    help="also append the Markdown report to FILE, e.g. \"$GITHUB_STEP_SUMMARY\"")
    ev.add_argument("overrides", nargs="*", metavar="EVAL.KEY=VALUE",
                    help="change an eval's config, e.g. retargeting.max_steps=500 steering.mazes=200")

    explore = sub.add_parser("explore", help="open a checkpoint in the browser: move the cheese, steer, retarget, "
                             "watch the vector field and activations (pip install 'shardlab[explore]')")
    explore.add_argument("checkpoint", nargs="?", help=f"a shardlab checkpoint or a scripted policy: {ORACLES}")
    explore.add_argument("--recipe", help="training recipe for a scripted policy or a --weights file")
    explore.add_argument("--weights", help="a published weights file (e.g. procgen-tools' maze .pth), with --recipe")
    explore.add_argument("--host", default="127.0.0.1",
                         help="address to listen on (default 127.0.0.1: this machine only)")
    explore.add_argument("--port", type=_port, default=8765, help="port (default 8765; 0: any free port)")

    compare = sub.add_parser("compare", help="compare two results.json metric by metric; exit 1 on a regression")
    compare.add_argument("old", metavar="OLD", help="the baseline results.json (or the eval --out folder holding it)")
    compare.add_argument("new", metavar="NEW", help="the results.json to check against it")
    _add_tolerances(compare)

    listing = sub.add_parser("list", help="list the shipped recipes, suites or the registered evals")
    listing.add_argument("what", choices=["recipes", "suites", "evals"])

    config = sub.add_parser("config", help="print a recipe's resolved config (defaults and overrides filled in)")
    config.add_argument("config", metavar="RECIPE", help="recipe name or YAML path")
    config.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    return top


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand and return its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    top = parser()
    if argv and argv[0] == "eval":  # overrides may sit between the options
        args = _parse_eval(top, argv)
    else:
        args, extra = top.parse_known_args(argv)
        if extra:
            if args.command in ("train", "resume", "config") and all("=" in e and not e.startswith("-") for e in extra):
                args.overrides = [*args.overrides, *extra]
            else:
                top.error(f"unrecognized arguments: {' '.join(extra)}")
    handler = {"train": _train, "resume": _train, "collect": _collect, "eval": _eval, "explore": _explore, "list": _list,
               "config": _config, "compare": _compare}[args.command]
    return handler(args)


def _parse_eval(top: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    subparsers = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    args = subparsers.choices["eval"].parse_intermixed_args(argv[1:])
    args.command = "eval"
    return args


def _train(args: argparse.Namespace) -> int:
    from shardlab.trainers.checkpointing import CheckpointError
    from shardlab.trainers.config import ConfigError, check_runnable, load_config

    try:
        if args.command == "train":  # a bad recipe or override is refused before Lightning's seconds of import
            cfg = load_config(_recipe(args.config), args.overrides)
            check_runnable(cfg)
        from shardlab.trainers import run  # heavy imports only after the config is known to be good
        if args.command == "train":
            run_dir = args.run_dir or os.path.join("runs", cfg.name)
            run.check_run_dir(run_dir, cfg.trainer.loggers)
            module = run.build_module(cfg)  # reads the data: its problems stop the run before the folder exists
            run.prepare_run_dir(cfg, run_dir)
            resume = None
        else:
            run_dir = args.run_dir
            cfg, resume = run.load_run(run_dir, args.overrides)
            check_runnable(cfg)
            module = run.build_module(cfg)
        if not run.is_launched_worker():
            print(f"run directory: {run_dir}", file=sys.stderr)
        module = run.fit(cfg, run_dir, resume, module=module)
    except (ConfigError, CheckpointError) as exc:
        print(f"shardlab {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if module.global_rank == 0:
        print(f"checkpoint: {os.path.join(run_dir, 'checkpoints', 'last.ckpt')}\n"
              f"tensorboard: tensorboard --logdir {os.path.join(run_dir, 'tb')}", file=sys.stderr)
    return EXIT_OK


def _recipe(name_or_path: str) -> str:
    from shardlab import configs
    from shardlab.trainers.config import ConfigError

    try:
        return configs.resolve("recipe", name_or_path)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None


def _collect(args: argparse.Namespace) -> int:
    from shardlab.trainers import collect

    return collect.main(args)


def _eval(args: argparse.Namespace) -> int:
    from shardlab.evals.suite import evaluator, sweep  # heavy imports after parsing
    from shardlab.evals.suite.request import EvalRequest

    try:
        if args.merge is not None:
            given = [name for name, value in (("a checkpoint", args.checkpoint), ("--out", args.out),
                                              ("--shard", args.shard), ("--every", args.every)) if value]
            if given:
                raise evaluator.EvalError(f"--merge DIR takes no {', '.join(given)}: it only combines the parts "
                                          "the shards wrote to DIR")
            return sweep.merge(args.merge)
        if args.checkpoint and "=" in args.checkpoint and not os.path.exists(args.checkpoint):
            args.overrides, args.checkpoint = [args.checkpoint, *args.overrides], None  # an override, not a file
        if args.out is None:
            raise evaluator.EvalError("--out is required: the folder results.json, junit.xml and the reports go to")
        request = EvalRequest(checkpoint=args.checkpoint, suite=args.suite, only=args.only, limit=args.limit,
                              seed=args.seed, device=args.device, out=args.out, recipe=args.recipe,
                              weights=args.weights, overrides=args.overrides, progress=not args.no_progress,
                              log_episodes=args.log_episodes, env_backend=args.env_backend,
                              loggers=args.loggers, baseline=args.baseline,
                              tolerance=args.tolerance, min_effect=args.min_effect, summary=args.summary,
                              every=args.every, shard=args.shard)
    except evaluator.BAD_INPUT as exc:
        print(f"shardlab eval: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return sweep.run_sweep(request) if request.sweep else evaluator.run(request)


def _explore(args: argparse.Namespace) -> int:
    try:
        from shardlab.explore import app
    except ImportError as exc:  # starlette/uvicorn are an extra
        print(f"shardlab explore: error: {exc.name or exc} is not installed; pip install 'shardlab[explore]'",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        session = app.open_source(args.checkpoint, args.weights, args.recipe)
    except app.SOURCE_ERRORS as exc:
        print(f"shardlab explore: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.host != "127.0.0.1":
        print(f"shardlab explore: listening on {args.host}, not only this machine: anyone who can reach it "
              "can use the loaded network", file=sys.stderr)
    return app.serve(session, host=args.host, port=args.port)


def _compare(args: argparse.Namespace) -> int:
    from shardlab.evals.suite.baseline import main as compare_results  # no torch: compares two files

    return compare_results(args.old, args.new, args.tolerance, args.min_effect)


def _list(args: argparse.Namespace) -> int:
    if args.what == "evals":
        from shardlab.evals.suite.registry import available, get

        rows = [(name, _first_line(get(name).__doc__)) for name in available()]
    else:
        from shardlab import configs

        rows = [(entry.name, entry.summary) for entry in configs.shipped(args.what[:-1])]
    width = max((len(name) for name, _ in rows), default=0)
    for name, summary in rows:
        print(f"{name:<{width}}  {summary}".rstrip())
    return EXIT_OK


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


def _config(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from shardlab.trainers.config import ConfigError, load_config

    try:
        cfg = load_config(_recipe(args.config), args.overrides)
    except ConfigError as exc:
        print(f"shardlab config: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(OmegaConf.to_yaml(cfg), end="")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
