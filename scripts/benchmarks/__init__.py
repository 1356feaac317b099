"""The subcommands of ``scripts/benchmark.py``, one module each.

A subcommand module defines ``NAME`` (the subcommand), ``HELP`` (its one-line help),
``add_arguments(parser)`` and ``run(args) -> exit code``; the dispatcher finds every module here
that defines ``NAME``. Modules without it (:mod:`benchmarks.common`) are helpers. All modules are
imported to build ``--help``, so keep their top-level imports to the standard library and import
torch, Lightning and shardlab inside the functions that need them.
"""
