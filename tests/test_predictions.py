"""scripts/predictions.py: each published prediction is judged from results.json rows as stated."""

from __future__ import annotations

import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("predictions", os.path.join(ROOT, "scripts", "predictions.py"))
predictions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(predictions)

VALUES = {
    "probes.conv/best_min_over_sizes": (0.95, None), "probes.cell/best_min_over_sizes": (0.5, None),
    "probes.outcome/block2.res1.resadd_out/accuracy": (0.8, None),
    "probes.outcome/block2.res1.resadd_out/chance": (0.68, None),
    "finetune_to_cheese.steps_to_target/fraction_of_training": (0.05, None), "finetune_to_cheese.confirmed": (1.0, None),
    "retargeting.success_at_under_10pct/top_left": (0.2, None),
    "retargeting.success_at_under_10pct/bottom_right": (0.4, None),
    "steering.original/p_cheese/median": (0.8, None), "steering.cheese_vector/p_cheese/median": (0.1, None),
    "steering.cheese_vector/p_cheese/change": (-0.5, 0.05), "steering.cheese_vector/random/p_cheese/change": (-0.1, 0.05),
    "goal_misgeneralization.p_cheese/quadrant=top_left": (0.2, 0.05),
    "goal_misgeneralization.p_cheese/quadrant=bottom_left": (0.25, 0.05),
    "goal_misgeneralization.p_cheese/quadrant=bottom_right": (0.1, 0.05),
}


def _rows(values: dict) -> dict:
    return {key: {"value": value, "stderr": stderr} for key, (value, stderr) in values.items()}


def _held(values: dict) -> list[str]:
    lines = predictions.table([("a", _rows(values))]).splitlines()[2:]
    return [line.rstrip(" |").rsplit("| ", 1)[-1] for line in lines]


def test_each_prediction_is_judged_as_stated():
    assert _held(VALUES) == ["yes", "yes", "yes", "no", "yes", "yes", "yes"]
    worse = {**VALUES, "probes.conv/best_min_over_sizes": (0.89, None),
             "finetune_to_cheese.confirmed": (0.0, None),  # chosen on its own mazes, not confirmed
             "steering.cheese_vector/p_cheese/change": (-0.15, 0.05),  # within noise of the random vector
             "goal_misgeneralization.p_cheese/quadrant=bottom_left": (0.31, 0.05)}
    assert _held(worse) == ["no", "yes", "no", "no", "yes", "no", "no"]
    assert _held({}) == ["—"] * 7  # nothing measured: no verdict, no crash


def test_table_from_results_files(tmp_path, capsys):
    rows = [{"eval": key.split(".", 1)[0], "name": key.split(".", 1)[1], "value": value, "stderr": stderr}
            for key, (value, stderr) in VALUES.items()]
    for name in ("seed0", "seed1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"results": rows}))
    assert predictions.main(["--results", str(tmp_path / "seed0" / "results.json"),
                             str(tmp_path / "seed1" / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "| seed0 | held | seed1 | held |" in out and "95.0% (conv probe" in out
    assert predictions.main(["--results", str(tmp_path / "missing.json")]) == 2
