"""Run the CI workflow's commands on this machine: ``python scripts/ci_local.py [--skip-make-test]``.

Reads ``.github/workflows/ci.yml`` and runs the ``run:`` commands of its steps in order, the way
GitHub Actions does (``bash -eo pipefail``, the workflow's, job's and step's ``env``, ``CI=true``),
stopping at the first that fails and exiting with its status. ``$GITHUB_STEP_SUMMARY`` is a
temporary file (``--summary FILE`` to keep it). Steps that only ``uses:`` an action (checkout,
setup-python, upload-artifact) are skipped. ``--skip-make-test`` skips ``make test`` (the test
suite calls this script from inside ``make test``); then, when there is no ``.venv/bin/shardlab``,
``.venv/bin/shardlab`` runs as ``python -m shardlab`` with this interpreter. ``--workdir DIR``
runs the commands in DIR, which gets links to the checkout's top-level files and folders, so that
outputs such as ``ci-evals/`` land there instead of in the checkout.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(ROOT, ".github", "workflows", "ci.yml")
VENV_SHARDLAB = ".venv/bin/shardlab"


def load_workflow(path: str = WORKFLOW) -> dict:
    with open(path) as handle:
        workflow = yaml.safe_load(handle)
    if not isinstance(workflow, dict) or not isinstance(workflow.get("jobs"), dict):
        raise ValueError(f"{path}: not a GitHub Actions workflow (no jobs)")
    return workflow


def run_steps(workflow: dict) -> list[dict]:
    """The steps with a ``run:`` command, in order (jobs in file order): each as
    ``{"job", "name", "run", "env"}``, env merged from the workflow, job and step."""
    steps = []
    for job_name, job in workflow["jobs"].items():
        for index, step in enumerate(job.get("steps", [])):
            if "run" not in step:
                continue
            env = {**(workflow.get("env") or {}), **(job.get("env") or {}), **(step.get("env") or {})}
            steps.append({"job": job_name, "name": step.get("name", f"step {index + 1}"), "run": step["run"].strip(),
                          "env": {key: str(value) for key, value in env.items()}})
    return steps


def is_make_test(command: str) -> bool:
    return shlex.split(command) == ["make", "test"]


def command_for_here(command: str, workdir: str) -> str:
    """``.venv/bin/shardlab`` as this interpreter's ``-m shardlab`` where make test made no .venv."""
    if command.startswith(VENV_SHARDLAB + " ") and not os.path.exists(os.path.join(workdir, VENV_SHARDLAB)):
        return f"{shlex.quote(sys.executable)} -m shardlab" + command[len(VENV_SHARDLAB):]
    return command


def link_checkout(workdir: str) -> None:
    """Links in ``workdir`` to each top-level entry of the checkout (the commands' relative paths)."""
    os.makedirs(workdir, exist_ok=True)
    for entry in os.listdir(ROOT):
        target = os.path.join(workdir, entry)
        if not os.path.lexists(target):
            os.symlink(os.path.join(ROOT, entry), target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", default=WORKFLOW, help="the workflow file (default .github/workflows/ci.yml)")
    parser.add_argument("--skip-make-test", action="store_true", help="skip `make test` steps")
    parser.add_argument("--summary", metavar="FILE", help="the $GITHUB_STEP_SUMMARY file (default: a temporary one)")
    parser.add_argument("--workdir", metavar="DIR", help="run in DIR (links to the checkout) instead of the checkout")
    args = parser.parse_args(argv)

    steps = run_steps(load_workflow(args.workflow))
    workdir = ROOT
    if args.workdir:
        workdir = os.path.abspath(args.workdir)
        link_checkout(workdir)
    summary = args.summary
    if summary is None:
        handle, summary = tempfile.mkstemp(prefix="step-summary-", suffix=".md")
        os.close(handle)
    base_env = {**os.environ, "CI": "true", "GITHUB_WORKSPACE": workdir}
    skipped = 0
    for step in steps:
        if args.skip_make_test and is_make_test(step["run"]):
            print(f"--- {step['name']}: skipped (make test)", flush=True)
            skipped += 1
            continue
        command = command_for_here(step["run"], workdir)
        print(f"--- {step['name']}\n$ {command}", flush=True)
        env = {**base_env, **step["env"], "GITHUB_STEP_SUMMARY": summary}
        code = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", command],
                              cwd=workdir, env=env).returncode
        if code != 0:
            print(f"--- {step['name']}: failed with exit status {code}", file=sys.stderr)
            return code
    print(f"--- {len(steps) - skipped} run steps passed ({skipped} skipped); step summary: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
