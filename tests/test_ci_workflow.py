"""The GitHub Actions workflow (.github/workflows/ci.yml) and scripts/ci_local.py, which runs it
locally: `make test` then the eval step on the committed fixture policy against the committed
baseline, with only files the repository has. The eval step itself is left to the workflow (it runs
right after `make test`); here ci_local hands it to bash as written, and its inputs are checked."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("ci_local", os.path.join(ROOT, "scripts", "ci_local.py"))
ci_local = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ci_local)

CHECKPOINT = os.path.join(ROOT, "tests", "fixtures", "ci_policy.ckpt")
BASELINE = os.path.join(ROOT, "tests", "fixtures", "ci_baseline.json")
EVAL_OUTPUTS = ("junit.xml", "results.json", "report.md", "report.html")


def _eval_command() -> list[str]:
    commands = [shlex.split(step["run"]) for step in ci_local.run_steps(ci_local.load_workflow())]
    evals = [words for words in commands if words[:2] == [ci_local.VENV_SHARDLAB, "eval"]]
    assert len(evals) == 1, commands
    return evals[0]


def _option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def test_workflow_runs_make_test_then_the_eval_suite_against_the_baseline():
    steps = ci_local.run_steps(ci_local.load_workflow())
    assert [step["run"].split()[:2] for step in steps] == [["make", "test"], [ci_local.VENV_SHARDLAB, "eval"]]
    assert steps[0]["env"]["CI"] == "true"
    words = _eval_command()
    assert words[2] == "tests/fixtures/ci_policy.ckpt"
    assert (_option(words, "--suite"), _option(words, "--limit")) == ("ci", "50")
    assert _option(words, "--baseline") == "tests/fixtures/ci_baseline.json"
    assert _option(words, "--summary") == "$GITHUB_STEP_SUMMARY" and "--no-progress" in words


def test_workflow_names_only_files_the_repository_has():
    workflow = ci_local.load_workflow()
    words = _eval_command()
    out = _option(words, "--out")
    missing = []
    for step in ci_local.run_steps(workflow):
        tokens = shlex.split(step["run"])
        if tokens == ["make", "test"]:
            with open(os.path.join(ROOT, "Makefile")) as handle:
                assert re.search(r"^test:", handle.read(), re.M), "the Makefile has no test target"
            continue
        for previous, token in zip([""] + tokens, tokens):
            if previous == "--out" or token.startswith(("-", "$", ".venv/")):  # outputs; .venv is made by make test
                continue
            if previous == "--suite" and "/" not in token:
                token = os.path.join("configs", "evals", token + ".yaml")
            if "/" in token and not os.path.exists(os.path.join(ROOT, token)):
                missing.append(token)
    assert not missing, f"the workflow names files the repository lacks: {missing}"
    # the uploaded files are what the eval step writes into its --out folder
    uploads = [step for job in workflow["jobs"].values() for step in job["steps"]
               if str(step.get("uses", "")).startswith("actions/upload-artifact")]
    assert len(uploads) == 1 and uploads[0].get("if") == "always()"
    paths = uploads[0]["with"]["path"].split()
    assert sorted(paths) == sorted(f"{out}/{name}" for name in EVAL_OUTPUTS)
    # the fixture pair is committed (*.ckpt is ignored except under tests/fixtures) and small
    assert os.path.getsize(CHECKPOINT) < 3 * 2**20
    with open(os.path.join(ROOT, ".gitignore")) as handle:
        assert "!tests/fixtures/*.ckpt" in handle.read().split()
    with open(os.path.join(ROOT, ".ci", "run")) as handle:
        assert "make test" in handle.read()


def test_ci_local_stops_at_the_first_failing_step(tmp_path):
    workflow = tmp_path / "ci.yml"
    workflow.write_text("jobs:\n  test:\n    steps:\n      - uses: actions/checkout@v4\n"
                        "      - run: make test\n      - run: echo \"## hello\" >> \"$GITHUB_STEP_SUMMARY\"\n"
                        "      - run: exit 3\n      - run: touch after\n")
    summary = tmp_path / "summary.md"
    assert ci_local.main(["--workflow", str(workflow), "--skip-make-test", "--summary", str(summary),
                          "--workdir", str(tmp_path / "work")]) == 3
    assert summary.read_text() == "## hello\n"
    assert not (tmp_path / "work" / "after").exists()


def test_ci_local_hands_the_eval_step_to_bash_as_the_workflow_writes_it(tmp_path, monkeypatch):
    """scripts/ci_local.py runs the eval step's command in the work folder with CI=true and the step
    summary file, and the command is one ``shardlab eval`` accepts. The eval itself is not run here:
    the workflow's next step runs it, right after `make test` (which runs this file), and fails the
    job when a threshold is missed or a metric regressed against the baseline."""
    import subprocess
    import sys
    from types import SimpleNamespace

    ran = []

    def record(argv, **kwargs):
        ran.append((argv, kwargs))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(ci_local, "subprocess", SimpleNamespace(run=record))
    summary, work = tmp_path / "summary.md", tmp_path / "work"
    assert ci_local.main(["--skip-make-test", "--summary", str(summary), "--workdir", str(work)]) == 0
    [(argv, kwargs)] = ran  # make test skipped, the eval step handed over, nothing else
    assert argv[:-1] == ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c"] and kwargs["cwd"] == str(work)
    env = kwargs["env"]
    assert env["CI"] == "true" and env["GITHUB_STEP_SUMMARY"] == str(summary) and env["GITHUB_WORKSPACE"] == str(work)
    words, workflow_words = shlex.split(argv[-1]), _eval_command()
    executable = words[:words.index("eval")]
    assert executable in ([ci_local.VENV_SHARDLAB], [sys.executable, "-m", "shardlab"]), executable
    assert words[len(executable):] == workflow_words[1:]
    for name in ("tests", "configs", "scripts"):  # the relative paths resolve in the work folder
        assert os.path.samefile(work / name, os.path.join(ROOT, name))
    # shardlab eval's own parser takes the step's options
    from shardlab import cli

    args = cli.parser().parse_args([word.replace("$GITHUB_STEP_SUMMARY", str(summary)) for word in workflow_words[1:]])
    assert (args.command, args.checkpoint, args.suite, args.limit, args.baseline, args.summary) == (
        "eval", "tests/fixtures/ci_policy.ckpt", "ci", 50, "tests/fixtures/ci_baseline.json", str(summary))


@pytest.mark.skipif(not os.path.isfile(CHECKPOINT), reason="run scripts/make_ci_checkpoint.py")
def test_the_committed_baseline_is_the_committed_checkpoints_at_the_workflows_limit():
    """What the eval step's --baseline needs, checked without running the eval: the baseline is
    this checkpoint's (same sha256), at the step's --limit, without errors, and it matches the
    config, seed and eval version that the ci suite runs now (else the eval step exits 2)."""
    import hashlib

    from shardlab.evals.suite.baseline import prepare_baseline

    words = _eval_command()
    with open(BASELINE) as handle:
        old = json.load(handle)
    with open(CHECKPOINT, "rb") as handle:
        assert old["checkpoint_sha256"] == hashlib.sha256(handle.read()).hexdigest()
    assert old["limit"] == int(_option(words, "--limit")) == 50 and not old["errors"]
    baseline = prepare_baseline(os.path.join(ROOT, _option(words, "--baseline")), None, None, _option(words, "--suite"))
    assert baseline is not None and baseline.doc["checkpoint_sha256"] == old["checkpoint_sha256"]


def test_readme_shows_the_workflow_commands():
    with open(os.path.join(ROOT, "README.md")) as handle:
        readme = handle.read()
    section = readme[readme.index("### The eval suite in CI"):]
    section = section[:section.index("\n### ", 1)]
    shown = {line.strip() for line in section.splitlines()}
    for step in ci_local.run_steps(ci_local.load_workflow()):
        assert step["run"] in shown, step["run"]


def test_a_slow_marker_must_name_its_category(tmp_path):
    """`make test-fast` leaves out `slow` tests; a bare @pytest.mark.slow is refused at collection."""
    import shutil
    import subprocess
    import sys

    shutil.copy(os.path.join(ROOT, "tests", "conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_bare.py").write_text("import pytest\n\n@pytest.mark.slow\ndef test_x():\n    pass\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode != 0 and "needs one category" in done.stdout + done.stderr
