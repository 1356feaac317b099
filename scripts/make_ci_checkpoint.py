"""Train the CI fixture policy and its baseline: ``python scripts/make_ci_checkpoint.py [--steps N]``.

Trains ``configs/train/maze_demo.yaml`` for ``--steps`` env steps on one CPU thread with fixed seeds
(``trainer.seed``/``env.seed`` 0), runs the CI suite on it with ``--limit 50`` (the CI workflow's
command) and, only if every threshold holds, writes ``tests/fixtures/ci_policy.ckpt`` and its
results.json as ``tests/fixtures/ci_baseline.json``. Both files are written under temporary names
first and then renamed, so an interrupted or failing run leaves the old pair in place.

The workflow (.github/workflows/ci.yml) evaluates the committed checkpoint against the committed
baseline, so rerun this script whenever an eval or the policy format changes
(``--baseline-only`` keeps the committed checkpoint and rewrites only the baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

RECIPE = os.path.join(ROOT, "configs", "train", "maze_demo.yaml")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
STEPS = 196_608  # 24 PPO iterations of 64 envs × 128 steps; chosen in README, "The eval suite in CI"
LIMIT = 50  # the workflow's --limit
MAX_BYTES = 3 * 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=STEPS, help=f"env steps to train (default {STEPS})")
    parser.add_argument("--out", default=FIXTURES, help="folder for ci_policy.ckpt and ci_baseline.json")
    parser.add_argument("--keep-run", metavar="DIR", help="train into DIR and keep it (default: a temporary folder)")
    parser.add_argument("--baseline-only", action="store_true",
                        help="keep the committed checkpoint and rewrite only its baseline (after an eval changed)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")

    import importlib

    import torch

    torch.set_num_threads(1)  # one thread: the same checkpoint bit for bit, run after run
    importlib.import_module("shardlab.api")  # a broken eval import fails now, not after training
    from shardlab import cli
    from shardlab.atomic import atomic_write
    from shardlab.evals.suite import evaluator
    from shardlab.evals.suite.request import EvalRequest

    work = tempfile.mkdtemp(prefix="ci-checkpoint-")
    try:
        run_dir = args.keep_run or os.path.join(work, "run")
        start = time.perf_counter()
        if args.baseline_only:
            trained = os.path.join(args.out, "ci_policy.ckpt")
        else:
            code = cli.main(["train", RECIPE, "name=ci_policy", "trainer.seed=0", "env.seed=0",
                             f"trainer.total_steps={args.steps}", f"trainer.checkpoint_every={args.steps}",
                             "trainer.keep_checkpoints=0", "trainer.progress_bar=false", "trainer.loggers=[]",
                             "--run-dir", run_dir])
            if code != 0:
                return code
            trained = os.path.join(run_dir, "checkpoints", "last.ckpt")
        train_seconds = time.perf_counter() - start
        # evaluate a copy named like the fixture, so the baseline is what `shardlab eval` writes for it
        candidate = os.path.join(work, "ci_policy.ckpt")
        shutil.copyfile(trained, candidate)
        size = os.path.getsize(candidate)
        if size >= MAX_BYTES:
            print(f"error: the checkpoint is {size / 2**20:.2f} MiB, over the 3 MiB fixture limit", file=sys.stderr)
            return 1
        start = time.perf_counter()
        code = evaluator.run(EvalRequest(checkpoint=candidate, suite="ci", out=os.path.join(work, "evals"), limit=LIMIT))
        eval_seconds = time.perf_counter() - start
        if code != 0:
            print(f"error: the CI suite does not pass at {args.steps} steps (exit {code}); nothing written",
                  file=sys.stderr)
            return 1
        os.makedirs(args.out, exist_ok=True)
        checkpoint = os.path.join(args.out, "ci_policy.ckpt")
        baseline = os.path.join(args.out, "ci_baseline.json")
        with open(os.path.join(work, "evals", "results.json")) as handle:
            document = json.load(handle)
        document["checkpoint"] = os.path.abspath(checkpoint)
        # both files under temporary names in the destination folder first, then two renames (an
        # exception in either removes both temp files and leaves the old pair)
        with atomic_write(checkpoint, "wb") as checkpoint_out, atomic_write(baseline, "w") as baseline_out:
            with open(candidate, "rb") as source:
                shutil.copyfileobj(source, checkpoint_out)
            baseline_out.write(json.dumps(document, indent=2, allow_nan=False) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{checkpoint} ({size / 2**20:.2f} MiB, {args.steps:,} env steps, trained in {train_seconds:.0f} s)\n"
          f"{baseline} (CI suite, --limit {LIMIT}, {eval_seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
