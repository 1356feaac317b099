"""``benchmark.py demo``: wall time of each stage of `make demo` on this machine.

Stages: install (a fresh clone of the repo gets its own .venv through `make install`; only with
``--install``, as it downloads the packages again), train, evaluate and report (scripts/demo.py in
a fresh run directory). The budget is 15 minutes for all of them on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks.common import REPO, finish_report

NAME = "demo"
HELP = "wall time per stage of `make demo` (install with --install, train, evaluate, report)"
BUDGET_SECONDS = 15 * 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``benchmark.py demo``."""
    parser.add_argument("--install", action="store_true",
                        help="also time `make install` in a fresh clone (downloads the packages)")
    parser.add_argument("--steps", type=int, help="env steps to train (default: the demo recipe's)")
    parser.add_argument("--keep", metavar="DIR", help="run the demo in DIR and keep it (default: a temp dir)")
    parser.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")


def _install_seconds(repo: str, workdir: str) -> float:
    """Clone the committed repo and time `make install` there."""
    clone = os.path.join(workdir, "clone")
    subprocess.run(["git", "clone", "--quiet", repo, clone], check=True)
    start = time.perf_counter()
    subprocess.run(["make", "install"], cwd=clone, check=True)
    return time.perf_counter() - start


def measure(args: argparse.Namespace, repo: str) -> dict[str, Any]:
    """Run the demo stages; returns the report with seconds per stage."""
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as workdir:
        if args.install:
            timings["install"] = _install_seconds(repo, workdir)
        run_dir = args.keep or os.path.join(workdir, "demo")
        command = [sys.executable, os.path.join(repo, "scripts", "demo.py"), "--run-dir", run_dir]
        if args.steps:
            command += ["--steps", str(args.steps)]
        start = time.perf_counter()
        subprocess.run(command, cwd=repo, check=True)
        wall = time.perf_counter() - start
        with open(os.path.join(run_dir, "timings.json")) as handle:
            timings.update(json.load(handle))
        # interpreter start-up and imports: what the demo's own clock does not see
        timings["start-up"] = max(0.0, wall - sum(v for k, v in timings.items() if k != "install"))
        with open(os.path.join(run_dir, "evals", "results.json")) as handle:
            rows = {f"{r['eval']}.{r['name']}": r["value"] for r in json.load(handle)["results"]}
    return {"benchmark": "demo", "seconds": timings, "total_seconds": sum(timings.values()),
            "budget_seconds": BUDGET_SECONDS, "install_timed": args.install, "cpu_count": os.cpu_count(),
            "headline": {k: rows.get(k) for k in (
                "goal_misgeneralization.in_region/p_cheese", "goal_misgeneralization.greedy/in_region/p_cheese",
                "goal_misgeneralization.p_cheese", "goal_misgeneralization.gap/p_cheese",
                "goal_misgeneralization.decision/p_corner_first", "steering.original/p_cheese/median",
                "steering.cheese_vector/p_cheese/median")}}


def format_report(report: dict[str, Any]) -> str:
    """The printed table."""
    lines = [f"{'stage':<10} {'seconds':>8}"]
    lines += [f"{stage:<10} {seconds:>8.0f}" for stage, seconds in report["seconds"].items()]
    total = report["total_seconds"]
    scope = "" if report["install_timed"] else " (installation not timed; add --install)"
    lines.append(f"{'total':<10} {total:>8.0f}   budget {report['budget_seconds']} s{scope}")
    lines += [f"{name}: {value:.3f}" if value is not None else f"{name}: —"
              for name, value in report["headline"].items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the demo in a fresh run directory and print its stage times."""
    report = measure(args, REPO)
    return finish_report(format_report(report), report, args.json)
