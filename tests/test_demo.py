"""The demo's report: targets read from results.json, tables and PNG links, atomic write."""

from __future__ import annotations

import importlib.util
import json
import os

from omegaconf import OmegaConf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("demo", os.path.join(ROOT, "scripts", "demo.py"))
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)


def _results(values: dict[str, float]) -> dict:
    rows = []
    for key, value in values.items():
        eval_name, name = key.split(".", 1)
        rows.append({"eval": eval_name, "name": name, "value": value, "stderr": 0.01, "n": 300})
    return {"results": rows, "artifacts": {"goal_misgeneralization": [], "steering": []}}


MEASURED = {
    "goal_misgeneralization.in_region/p_cheese": 0.97, "goal_misgeneralization.greedy/in_region/p_cheese": 0.9,
    "goal_misgeneralization.p_cheese": 0.62, "goal_misgeneralization.gap/p_cheese": 0.35,
    "goal_misgeneralization.in_distribution/p_cheese": 0.96,
    "goal_misgeneralization.decision/p_corner_first": 0.37, "steering.original/p_cheese/median": 0.44,
    "steering.cheese_vector/p_cheese/median": 0.23, "steering.cheese_vector/random/p_cheese/median": 0.45,
    "steering.cheese_vector/p_cheese/change": -0.2, "steering.cheese_vector/random/p_cheese/change": -0.05,
    "steering.cheese_vector/p_cheese/log_change": -1.5, "steering.cheese_vector/random/p_cheese/log_change": -0.3,
}


def _rows(values: dict[str, float], stderr: float = 0.01) -> dict:
    return {k: {"value": v, "stderr": stderr} for k, v in values.items()}


def test_targets_are_checked_against_the_measured_values():
    checks = demo.targets(_rows(MEASURED))
    assert [met for _, _, met, _ in checks] == [True] * 5
    worse = {**MEASURED, "goal_misgeneralization.greedy/in_region/p_cheese": 0.8,
             "goal_misgeneralization.gap/p_cheese": 0.15, "steering.cheese_vector/p_cheese/change": -0.09}
    assert [met for _, _, met, _ in demo.targets(_rows(worse))] == [
        True, False, False, True, False]  # the cheese vector's effect is under twice the random one's
    # a random vector that raises P(cheese-ward) counts by its size too
    sideways = {**MEASURED, "steering.cheese_vector/p_cheese/change": -0.04,
                "steering.cheese_vector/random/p_cheese/change": 0.04}
    assert not demo.targets(_rows(sideways))[-1][2]
    # twice the random effect but inside the noise: -0.2 vs -0.05 with standard errors of 0.06
    assert demo.targets(_rows(MEASURED, stderr=0.03))[-1][2]
    assert not demo.targets(_rows(MEASURED, stderr=0.06))[-1][2]
    # an untrained policy's negligible changes do not count, however small the noise
    negligible = {**MEASURED, "steering.cheese_vector/p_cheese/change": -0.0004,
                  "steering.cheese_vector/random/p_cheese/change": -0.0001}
    assert not demo.targets(_rows(negligible, stderr=0.00001))[-1][2]
    # a missing metric is a miss, not a crash
    assert not any(met for _, _, met, _ in demo.targets({}))
    assert {verdict for *_, verdict in demo.targets({})} == {"undetermined"}


def test_corner_first_is_held_to_15_percent_per_run_with_the_interval_verdict():
    """One run needs 15% (the five-seed mean is held to 25% in the docs); the verdict word reads
    the row's interval: 0.18 [0.14, 0.23] meets 15% by its point but is undetermined."""
    key = "goal_misgeneralization.decision/p_corner_first"
    rows = _rows({**MEASURED, key: 0.18})
    rows[key].update(ci_low=0.14, ci_high=0.23)
    corner = demo.targets(rows)[3]
    assert corner[2] is True and corner[3] == "undetermined" and "≥ 15%" in corner[0]
    rows[key].update(value=0.12, ci_low=0.09, ci_high=0.16)
    assert demo.targets(rows)[3][2:] == (False, "undetermined")
    rows[key].update(value=0.30, ci_low=0.25, ci_high=0.35)
    assert demo.targets(rows)[3][2:] == (True, "held")


def test_report_is_written_with_targets_tables_and_timings(tmp_path):
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "results.json").write_text(json.dumps(_results(MEASURED)))
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"env_steps": 8192 * i, "episode/return": i, "episode/cheese_rate": 0.1 * i,
                    "episode/length": 100 - i}) + "\n" for i in range(1, 6)))
    cfg = OmegaConf.create({"model": {"scale": 1}, "env": {"max_maze_size": 7, "rand_region": 2},
                            "trainer": {"total_steps": 1_200_000}})
    path, checks = demo.write_report(str(tmp_path), cfg, {"train": 400.0, "evaluate": 60.0})
    report = open(path).read()
    assert report.count("✅") == 5 and "❌" not in report
    assert "| sampled | 0.97 | 0.62 | 0.35 |" in report
    assert "0.44 → 0.23" in report and "log P -1.50 vs -0.30" in report and "2 s.e. 0.028" in report and "total (after installation): 460 s" in report
    assert (tmp_path / "learning_curve.png").stat().st_size > 1000
    assert not (tmp_path / "report.md.tmp").exists()


def test_the_suite_plays_on_the_native_env_unless_the_run_has_a_fixed_level_set():
    from types import SimpleNamespace

    assert demo.eval_backend("native", SimpleNamespace(obs="grid", num_levels=0)) == "native"
    assert demo.eval_backend("native", SimpleNamespace(obs="rgb", num_levels=0)) == "native"
    assert demo.eval_backend("native", SimpleNamespace(obs="grid", num_levels=100)) == "procgen"
    assert demo.eval_backend("procgen", SimpleNamespace(obs="grid", num_levels=0)) == "procgen"
