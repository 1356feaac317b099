"""Smoke test of ``scripts/benchmark.py ppo`` on a tiny config: it runs end to end and writes JSON."""

from __future__ import annotations

import pytest

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "benchmark.py")
TINY = ["env.num_envs=4", "ppo.num_steps=16", "ppo.minibatch_size=32", "ppo.epochs=1"]


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    """Run the benchmark script in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow("benchmark")
def test_ppo_benchmark_writes_three_positive_rates(tmp_path):
    out = tmp_path / "bench.json"
    # overrides on both sides of an option, as users type them
    result = run_benchmark("ppo", TINY[0], "--iterations", "1", *TINY[1:], "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["rates"]) == {"trainer", "plain", "ceiling"}
    assert all(rate > 0 for rate in report["rates"].values()), report["rates"]
    assert report["ratios"]["trainer_over_plain"] > 0 and report["ratios"]["trainer_over_ceiling"] > 0
    assert report["config"]["num_envs"] == 4 and report["config"]["batch"] == 64
    assert [run["env_steps"] for run in report["runs"]] == [64, 64, 64]
    assert "trainer / plain" in result.stdout and "network-only ceiling" in result.stdout


def test_ppo_benchmark_bad_override_exits_2():
    result = run_benchmark("ppo", "ppo.num_envs=4")
    assert result.returncode == 2
    assert "env.num_envs" in result.stderr  # the config error names the right key


@pytest.mark.slow("benchmark")
def test_evals_benchmark_plays_the_same_episodes(tmp_path):
    out = tmp_path / "evals.json"
    result = run_benchmark("evals", "--mazes", "3", "--repeats", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    # both play the three maze sets of the eval: out of region, in distribution, decision squares
    assert report["episodes"]["eval"] == report["episodes"]["bare"] == 9
    assert report["ratio"] > 0 and "ratio eval/bare" in result.stdout


def test_evals_benchmark_bad_argument_exits_2():
    result = run_benchmark("evals", "--mazes", "1")
    assert result.returncode == 2 and "--mazes" in result.stderr


def test_help_lists_every_subcommand():
    result = run_benchmark("--help")
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("ppo", "learn", "maze", "native", "evals", "demo", "dt", "interp", "explore"):
        assert f"    {name} " in result.stdout, name


@pytest.mark.slow("benchmark")
def test_native_benchmark_times_both_backends_and_their_evals_agree(tmp_path):
    out = tmp_path / "native.json"
    result = run_benchmark("native", "--sizes", "4", "--seconds", "0.05", "--mazes", "3", "--repeats", "1",
                           "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(row["obs"], row["num_envs"]) for row in report["env"]] == [("grid", 4), ("rgb", 4)]
    for row in report["env"]:
        assert {"native_cpu", "procgen"} <= set(row["env_steps_per_sec"])
        assert row["ratio"] == row["env_steps_per_sec"]["native_cpu"] / row["env_steps_per_sec"]["procgen"]
    assert set(report["generation_mazes_per_sec"]["cpu"]) == {"easy", "hard"}
    assert report["level_pictures_per_sec"] > 0
    # the same episodes on both backends: every metric of the eval is identical
    assert report["eval"]["metrics"] > 10 and report["eval"]["metrics_differing"] == []
    assert report["eval"]["ratio"] > 0 and "speed-up" in result.stdout


def test_native_benchmark_bad_options_exit_2(tmp_path):
    result = run_benchmark("native", "--mazes", "1")
    assert result.returncode == 2 and "--mazes" in result.stderr
    result = run_benchmark("native", "--skip-env", "--checkpoint", str(tmp_path / "none.ckpt"))
    assert result.returncode == 2 and "does not exist" in result.stderr
