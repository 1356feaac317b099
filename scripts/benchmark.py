"""Throughput benchmarks: ``python scripts/benchmark.py SUBCOMMAND [options]``.

Each subcommand is a module of ``scripts/benchmarks/`` whose docstring explains what it measures
and how to read it: ``ppo`` (Lightning trainer vs the plain loop of ``scripts/ppo_reference.py`` vs
the network alone), ``learn``, ``maze``, ``native``, ``evals``, ``demo``, ``dt``, ``interp``,
``explore`` and ``gpu``. This file only finds them, parses the command line and runs one; ``--help``
lists them all.

To add a benchmark, add a module to ``scripts/benchmarks/`` that defines

* ``NAME``: the subcommand, and ``HELP``: its one-line help (an argparse help string: ``%%`` for %);
* ``add_arguments(parser)``: its options on an ``argparse.ArgumentParser``;
* ``run(args) -> int``: the benchmark, returning the exit code (``benchmarks.common.EXIT_OK``).

Modules without ``NAME`` (``common``) are helpers. Every module is imported to build the parser,
so top-level imports stay in the standard library. A ``ConfigError`` raised by ``run`` exits 2 with
its message; a subcommand with an ``overrides`` positional also takes ``key=value`` overrides between
its options.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from types import ModuleType

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(SCRIPTS)
sys.path.insert(0, REPO)
sys.path.insert(0, SCRIPTS)  # the benchmarks package and ppo_reference.py beside this file

from benchmarks.common import EXIT_BAD_INPUT  # noqa: E402

SUBCOMMAND_API = ("NAME", "HELP", "add_arguments", "run")


def discover() -> dict[str, ModuleType]:
    """The subcommand modules of scripts/benchmarks/ (those defining NAME), by subcommand name."""
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules([os.path.join(SCRIPTS, "benchmarks")]):
        module = importlib.import_module(f"benchmarks.{info.name}")
        if not hasattr(module, "NAME"):
            continue  # a helper module
        missing = [attribute for attribute in SUBCOMMAND_API if not hasattr(module, attribute)]
        if missing:
            raise ImportError(f"{module.__file__} defines NAME but not {', '.join(missing)}")
        if module.NAME in found:
            raise ImportError(f"benchmark {module.NAME!r} is defined by both {found[module.NAME].__file__} "
                              f"and {module.__file__}")
        found[module.NAME] = module
    return dict(sorted(found.items()))


SUBCOMMANDS = discover()


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per subcommand, sorted by name."""
    parser = argparse.ArgumentParser(prog="benchmark.py", description="Throughput benchmarks for shardlab.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for name, module in SUBCOMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.HELP))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, dispatch to the subcommand, and turn config errors into exit code 2."""
    parser = build_parser()
    # overrides may sit between options (``ppo a=1 --iterations 1 b=2``), which plain argparse
    # refuses for a nargs="*" positional; collect the stragglers that look like overrides
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        if not hasattr(args, "overrides"):
            parser.error(f"{args.command} takes no overrides: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    from shardlab.trainers.allocator import keep_freed_memory
    # the trainer does this at start-up; doing it here gives all measurements the same allocator
    keep_freed_memory()
    try:
        return SUBCOMMANDS[args.command].run(args)
    except Exception as exc:
        from shardlab.trainers.config import ConfigError
        if isinstance(exc, ConfigError):
            print(f"benchmark {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise


if __name__ == "__main__":
    sys.exit(main())
