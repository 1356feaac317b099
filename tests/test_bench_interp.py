"""Smoke test of ``scripts/benchmark.py interp`` on a tiny setting: it runs end to end, checks the
HookPoint-free forward against the model and writes every way's rate; bad options exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "benchmark.py")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, "interp", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_interp_benchmark_reports_every_way(tmp_path):
    out = tmp_path / "interp.json"
    result = _run("--scales", "1", "--batch-sizes", "1", "3", "--image-size", "15", "--repeats", "2",
                  "--min-time", "0.01", "--threads", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(row["scale"], row["batch"]) for row in report["rows"]] == [(1, 1), (1, 3)]
    for row in report["rows"]:
        assert set(row["forwards_per_sec"]) == {"no_hookpoints", "unhooked", "hooked", "hooked_per_call"}
        assert all(rate > 0 for rate in row["forwards_per_sec"].values())
        assert all(len(runs) == 2 for runs in row["overhead_runs"].values())
        assert set(row["component_us"]) == {"hookpoint_calls", "hook_fire", "context"}
        assert row["component_us"]["context"] > 0 and row["overhead_from_parts"]["hooked_per_call"] > 0
    assert "worst hook overhead" in result.stdout and "HookPoints" in result.stdout


def test_interp_benchmark_bad_option_exits_2():
    result = _run("--batch-sizes", "0")
    assert result.returncode == 2 and "--batch-sizes" in result.stderr
