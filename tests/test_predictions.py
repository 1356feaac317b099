"""scripts/predictions.py: each published prediction is judged held / not held / undetermined from
the confirmation rows' 95% intervals, per training seed and as a mean over seeds."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest
from scipy import stats as scipy_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("predictions", os.path.join(ROOT, "scripts", "predictions.py"))
predictions = importlib.util.module_from_spec(spec)
sys.modules["predictions"] = predictions  # dataclasses look their module up by name
spec.loader.exec_module(predictions)

# key: (value, ci_low, ci_high); every prediction clearly held
HELD = {
    "probes.best/min_over_sizes": (0.96, 0.92, 0.99), "probes.best/accuracy": (0.97, 0.94, 0.99),
    "probes.outcome/vs_majority": (0.12, 0.05, 0.19), "probes.outcome/vs_shuffled": (0.2, 0.1, 0.3),
    "probes.outcome/accuracy": (0.8, 0.72, 0.86),
    "finetune_to_cheese.steps_to_target/fraction_of_training": (0.05, None, None),
    "finetune_to_cheese.confirmation/at_steps_to_target/p_cheese": (0.97, 0.92, 0.99),
    "retargeting.top_left/confirmation/success": (0.6, 0.45, 0.75),
    "retargeting.bottom_right/confirmation/success": (0.5, 0.36, 0.64),
    "steering.cheese_vector/p_cheese/change": (-0.4, -0.5, -0.3),
    "steering.cheese_vector/p_cheese/change_minus_random": (-0.35, -0.45, -0.25),
    "goal_misgeneralization.p_cheese/quadrant=top_left": (0.1, 0.05, 0.18),
    "goal_misgeneralization.p_cheese/quadrant=bottom_left": (0.15, 0.1, 0.22),
    "goal_misgeneralization.p_cheese/quadrant=bottom_right": (0.2, 0.14, 0.27),
}


def _rows(values: dict) -> dict:
    return {key: {"value": v, "ci_low": lo, "ci_high": hi} for key, (v, lo, hi) in values.items()}


def _verdicts(values: dict) -> list[str]:
    return [record["seeds"][0]["verdict"] for record in predictions.judge_all([("a", _rows(values))])]


def test_each_prediction_is_judged_from_its_interval():
    assert _verdicts(HELD) == ["held"] * 7
    straddling = {**HELD, "probes.best/min_over_sizes": (0.93, 0.85, 0.97),       # interval straddles 0.9
                  "probes.outcome/vs_shuffled": (0.05, -0.02, 0.12),              # one control not excluded
                  "finetune_to_cheese.steps_to_target/fraction_of_training": (0.15, None, None),
                  "retargeting.top_left/confirmation/success": (0.1, 0.03, 0.25),  # wholly under 33%
                  "steering.cheese_vector/p_cheese/change_minus_random": (-0.05, -0.12, 0.02),
                  "goal_misgeneralization.p_cheese/quadrant=bottom_left": (0.5, 0.42, 0.58)}
    assert _verdicts(straddling) == ["undetermined", "undetermined", "not held", "not held", "held",
                                     "undetermined", "not held"]
    assert _verdicts({}) == ["undetermined"] * 7  # nothing measured: no verdict, no crash


def test_fine_tuning_that_never_reached_the_target_within_its_budget_is_not_held():
    rows = _rows({key: value for key, value in HELD.items() if not key.startswith("finetune_to_cheese.")})
    rows.update({"finetune_to_cheese.reached_target": {"value": 0.0}, "finetune_to_cheese.finetune_steps":
                 {"value": 300_000}, predictions.TRAIN_STEPS: {"value": 2_000_000}})
    [_, _, finetune, *_] = predictions.judge_all([("a", rows)])
    assert finetune["seeds"][0]["verdict"] == "not held" and "not reached in 300,000" in finetune["seeds"][0]["text"]
    rows[predictions.TRAIN_STEPS] = {"value": 6_000_000}  # a 5% budget cannot tell
    assert predictions.judge_all([("a", rows)])[2]["seeds"][0]["verdict"] == "undetermined"


def test_the_outcome_probe_needs_both_paired_controls_to_exclude_zero():
    below = {**HELD, "probes.outcome/vs_majority": (-0.1, -0.2, -0.01)}
    assert _verdicts(below)[1] == "not held"
    assert _verdicts({**HELD, "probes.outcome/vs_majority": (0.03, -0.01, 0.07)})[1] == "undetermined"


def test_mean_over_seeds_is_a_t_interval_over_seeds():
    seeds = [("s0", _rows({**HELD, "probes.best/min_over_sizes": (v, v - 0.02, v + 0.02)})) for v in (0.91, 0.95, 0.99)]
    [probe, *_] = predictions.judge_all(seeds)
    low, high = scipy_stats.t.interval(0.95, 2, loc=0.95, scale=scipy_stats.sem([0.91, 0.95, 0.99]))
    # clipped to the rate's support [0, 1]
    assert probe["mean_over_seeds"]["text"].startswith(f"worst size 95.0% [{low * 100:.1f}, {min(high, 1) * 100:.1f}]")
    # three seeds each clearly above 90% can still leave the mean's interval straddling it
    assert probe["mean_over_seeds"]["verdict"] == "undetermined" and low < 0.9
    # a bound measured on only some seeds is undetermined unless every seed failed it
    partial = [seeds[0], ("s1", {})]
    assert predictions.judge_all(partial)[0]["mean_over_seeds"]["verdict"] == "undetermined"


def test_table_from_results_files(tmp_path, capsys):
    rows = [{"eval": key.split(".", 1)[0], "name": key.split(".", 1)[1], "value": v, "ci_low": lo, "ci_high": hi}
            for key, (v, lo, hi) in HELD.items()]
    for name in ("seed0", "seed1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"results": rows}))
    out_dir = tmp_path / "out"  # made by the script
    assert predictions.main(["--results", str(tmp_path / "seed0" / "results.json"),
                             str(tmp_path / "seed1" / "results.json"), "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "| seed0 | verdict | seed1 | verdict | mean over 2 seeds | verdict |" in out
    assert "worst size 96.0% [92.0, 99.0]" in out
    document = json.loads((out_dir / "predictions.json").read_text())
    assert [r["seeds"][1]["verdict"] for r in document["predictions"]] == ["held"] * 7
    assert predictions.main(["--results", str(tmp_path / "missing.json")]) == 2


@pytest.mark.parametrize("argv", [["nope.ckpt", "--out", "x"]])
def test_a_missing_checkpoint_exits_2_in_one_line(argv, tmp_path, capsys):
    assert predictions.main([str(tmp_path / argv[0]), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such checkpoint" in err
