"""The GPU check (scripts/gpu_check.sh → scripts/benchmarks/gpu.py) in its CPU smoke mode: every stage
runs and passes with tiny sizes, and a failing stage makes the exit non-zero while the others still run."""

from __future__ import annotations

import pytest

import importlib.util
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "benchmarks", "gpu.py")
STAGES = ["ppo-fp32", "ppo-bf16", "dt", "classify", "eval", "native", "ppo-native"]


def _env(**extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **extra}
    env.pop("PYTHONPATH", None)
    return env


def _report(out) -> dict:
    with open(os.path.join(out, "gpu_check.json")) as handle:
        return json.load(handle)


@pytest.mark.slow("gpu-check")
def test_cpu_smoke_through_the_shell_script_passes_every_stage(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(["bash", os.path.join(REPO, "scripts", "gpu_check.sh"), "--cpu-smoke"], cwd=tmp_path,
                            env=_env(PYTHON=sys.executable, OUT=str(out)), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = _report(out)
    assert report["mode"] == "cpu-smoke" and report["device"] == "cpu" and report["ok"] and report["exit_code"] == 0
    stages = {stage["name"]: stage for stage in report["stages"]}
    assert list(stages) == STAGES
    for name, stage in stages.items():
        # a CPU that cannot autocast to bfloat16 skips that stage and says why
        allowed = ("ok", "skipped") if name in ("ppo-bf16", "ppo-native") else ("ok",)
        assert stage["status"] in allowed and stage["error"] is None, stage
    for name in ("ppo-fp32", "ppo-bf16", "ppo-native"):
        ppo = stages[name]["result"]
        if stages[name]["status"] == "skipped":
            assert ppo["reason"]
            continue
        assert ppo["env_steps_per_sec"] > 0 and ppo["timed_iterations"] == 1 and ppo["warmup_iterations"] == 1
        assert ppo["num_envs"] == 4 and ppo["scale"] == 1 and ppo["env_steps_per_iteration"] == 64
        split = ppo["split_seconds_per_iteration"]
        assert split["env"] > 0 and split["forward"] > 0 and split["update"] > 0
        assert abs(sum(split.values()) - ppo["seconds_per_iteration"]) < 1e-6
        assert ppo["checkpoint_written"]
    native = stages["native"]["result"]
    for view in ("grid", "rgb"):  # the native env replayed against procgen: identical frames, rewards, dones
        assert native["replays"][view]["frames"] > 0 and native["replays"][view]["differing_frames"] == 0
        assert native["replays"][view]["differing_steps"] == 0 and native["env_steps_per_sec"][view]["8"] > 0
    assert stages["dt"]["result"]["optimizer_steps"] == 10 and stages["dt"]["result"]["episodes"] == 5
    assert set(stages["classify"]["result"]["runs"]) == {"digits_dense", "digits_kwta"}
    assert stages["eval"]["result"]["exit_code"] == 0 and os.path.isfile(stages["eval"]["result"]["results"])
    assert not list(out.rglob("*.ckpt"))  # checked, then deleted: the output folder stays small
    assert (out / "gpu_check.log").is_file() and "all stages passed" in result.stdout


@pytest.mark.slow("gpu-check")
def test_a_failing_stage_fails_the_check_and_the_rest_still_runs(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, SCRIPT, "--cpu-smoke", "--out", str(out), "--stages", "dt,classify,eval",
                             "--fail-stage", "dt", "--eval-checkpoint", str(tmp_path / "missing.ckpt")],
                            cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    report = _report(out)
    stages = {stage["name"]: stage for stage in report["stages"]}
    assert list(stages) == ["dt", "classify", "eval"] and report["failed"] == ["dt", "eval"]
    assert stages["dt"]["status"] == "failed" and "on purpose" in stages["dt"]["error"]
    assert stages["classify"]["status"] == "ok"
    assert stages["eval"]["status"] == "failed" and "exited 2" in stages["eval"]["error"]
    assert "FAILED: dt, eval" in result.stdout


def test_bad_options_exit_2_and_the_module_fits_the_benchmark_dispatcher():
    result = subprocess.run([sys.executable, SCRIPT, "--stages", "ppo,nope"], env=_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and "--stages" in result.stderr
    spec = importlib.util.spec_from_file_location("gpu_check_module", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NAME == "gpu" and module.HELP and callable(module.run)
    import argparse
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    args = parser.parse_args(["--cpu-smoke", "--out", "x"])
    assert args.cpu_smoke and args.out == "x" and args.device == "auto"
