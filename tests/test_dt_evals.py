"""Decision-transformer evals end to end on tiny checkpoints through `shardlab eval`, the rollout's
return-to-go bookkeeping, and kind checks (a maze eval refuses a dt checkpoint)."""

from __future__ import annotations

import json
import os
import textwrap
from xml.etree import ElementTree

import numpy as np
import pytest
import torch

from shardlab import cli as shardlab
from shardlab.evals.dt import rollout as dt_rollout
from tests.test_dt_trainer import RECIPE, ROOT, tiny_args, tiny_dataset
from shardlab.trainers.restore import load_trained

pytestmark = pytest.mark.usefixtures("one_thread")
SUITE = """
seed: 1
evals:
  dt_rtg: {episodes: 3, targets: [0.2, 0.9], max_steps: 6}
  dt_steering: {episodes: 2, coefficients: [0.0, 1.0], windows: 16, max_steps: 6, random_vectors: 2}
  dt_attention: {episodes: 2, windows: 8, max_steps: 6}
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("dt_evals")
    data = tiny_dataset(root / "d.npz")
    babyai = tiny_dataset(root / "babyai.npz", env_id="BabyAI-GoToLocal-v0")
    paths = {}
    for name, extra in (("dt", []), ("bc", ["model.use_rtg=false"]),
                        ("mission", ["model.use_mission=true", f"data.path={babyai}"])):
        run_dir = root / name
        assert shardlab.main(["train", RECIPE, *tiny_args(data, steps=4), *extra, "--run-dir", str(run_dir)]) == 0
        paths[name] = str(run_dir / "checkpoints" / "last.ckpt")
    return paths


def write_suite(tmp_path, text: str = SUITE) -> str:
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_dt_suite_runs_every_eval_and_writes_plots(checkpoints, tmp_path):
    out = tmp_path / "out"
    assert shardlab.main(["eval", checkpoints["dt"], "--suite", write_suite(tmp_path), "--out", str(out)]) == 0
    document = json.loads((out / "results.json").read_text())
    values = {(row["eval"], row["name"]): row for row in document["results"]}
    for target in ("0.20", "0.90"):
        for metric in ("success_rate", "mean_return", "mean_length", "truncation_rate"):
            row = values[("dt_rtg", f"target={target}/{metric}")]
            assert row["n"] == 3 and row["seed"] == 1
        assert values[("dt_rtg", f"target={target}/mean_length")]["value"] <= 6
    for name in ("calibration/slope", "calibration/return_spread", "calibration/mean_abs_error"):
        assert ("dt_rtg", name) in values
    for name in ("vector_norm", "coeff=+0.00/mean_return", "coeff=+1.00/action_kl", "coeff=+1.00/action_tv_to_b",
                 "condition_b/mean_return", "random_control/mean_return", "random_control/action_kl",
                 "random_control/action_tv_to_b"):
        assert ("dt_steering", name) in values
    assert values[("dt_steering", "random_control/success_rate")]["n"] == 4  # 2 random vectors × 2 episodes
    assert values[("dt_steering", "vector_norm")]["value"] > 0
    assert values[("dt_steering", "coeff=+0.00/action_kl")]["value"] == pytest.approx(0.0, abs=1e-6)
    shares = [values[("dt_attention", f"layer0.head{h}/to_{kind}")]["value"] for h in range(2)
              for kind in ("rtg", "state", "action")]
    assert sum(shares) == pytest.approx(2.0, abs=1e-4)  # each head's attention sums to one
    for folder, files in (("dt_rtg", ["calibration.png"]), ("dt_steering", ["steering_scan.png"]),
                          ("dt_attention", ["attention_layer0_head0.png", "attention_layer0_head1.png",
                                            "attention_shares.png"])):
        for name in files:
            assert (out / folder / name).stat().st_size > 1000
            assert str(out / folder / name) in document["artifacts"][folder]
    cases = [c.get("name") for c in ElementTree.parse(out / "junit.xml").getroot().iter("testcase")]
    assert cases == ["dt_rtg", "dt_steering", "dt_attention"]


def test_dt_results_are_reproducible(checkpoints, tmp_path):
    suite = write_suite(tmp_path)
    runs = []
    for name in ("a", "b"):
        assert shardlab.main(["eval", checkpoints["dt"], "--suite", suite, "--out", str(tmp_path / name),
                              "--only", "dt_steering"]) == 0
        runs.append([(r["name"], r["value"]) for r in json.loads((tmp_path / name / "results.json").read_text())["results"]])
    assert runs[0] == runs[1]


def test_behavioural_cloning_checkpoint_plays_but_cannot_be_rtg_steered(checkpoints, tmp_path, capsys):
    out = tmp_path / "bc"
    assert shardlab.main(["eval", checkpoints["bc"], "--suite", write_suite(tmp_path), "--out", str(out)]) == 1
    document = json.loads((out / "results.json").read_text())
    assert "behavioural cloning" in document["errors"]["dt_steering"]
    spread = [r["value"] for r in document["results"] if r["name"] == "calibration/return_spread"]
    assert spread == [0.0]  # the RTG is not an input: every target plays the same episodes


def test_mission_model_plays_babyai_with_its_mission_words(checkpoints, tmp_path):
    trained = load_trained(checkpoints["mission"])
    assert trained.config.spec.mission_vocab[:2] == ["<pad>", "<unk>"] and trained.config.spec.max_mission_tokens == 5
    assert trained.model.max_mission_tokens == 5 and "hook_embed_mission" in dict(trained.model.named_modules())
    out = tmp_path / "mission"
    suite = write_suite(tmp_path, "evals:\n  dt_attention: {episodes: 2, windows: 8, max_steps: 6}\n")
    assert shardlab.main(["eval", checkpoints["mission"], "--suite", suite, "--out", str(out)]) == 0
    rows = {r["name"]: r["value"] for r in json.loads((out / "results.json").read_text())["results"]}
    assert rows["layer0.head0/to_mission"] > 0  # BabyAI missions are real tokens the states can attend to
    total = sum(rows[f"layer0.head0/to_{kind}"] for kind in ("mission", "rtg", "state", "action"))
    assert total == pytest.approx(1.0, abs=1e-4)


def test_maze_eval_refuses_a_dt_checkpoint(checkpoints, tmp_path, capsys):
    suite = os.path.join(ROOT, "configs", "evals", "ci.yaml")
    assert shardlab.main(["eval", checkpoints["dt"], "--suite", suite, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a dt checkpoint" in err
    assert not (tmp_path / "o" / "results.json").exists()


class ScriptedEnv:
    """Three-step episodes paying 0.25 per step, to check the RTG bookkeeping of play()."""

    def __init__(self, cfg, rank: int = 0):
        self.num_envs, self.t = cfg.num_envs, 0

    def reset(self) -> torch.Tensor:
        return torch.zeros(self.num_envs, 7, 7, 3, dtype=torch.uint8)

    @property
    def missions(self) -> list[str]:
        return ["get to the goal"] * self.num_envs

    def step(self, actions):
        from shardlab.envs.minigrid import Episode
        self.t += 1
        done = torch.full((self.num_envs,), self.t % 3 == 0)
        finished = [Episode(0.75, 3, True, True, False, "get to the goal")] * self.num_envs if done[0] else []
        obs = torch.full((self.num_envs, 7, 7, 3), self.t % 3, dtype=torch.uint8)
        return obs, torch.full((self.num_envs,), 0.25), done, finished

    def close(self) -> None:
        pass


def test_play_decrements_the_return_to_go_and_windows_recorded_episodes(checkpoints, monkeypatch):
    monkeypatch.setattr(dt_rollout, "MiniGridEnv", ScriptedEnv)
    model = load_trained(checkpoints["dt"]).model
    episodes = dt_rollout.play(model, load_trained(checkpoints["dt"]).config.spec, [1.0, 0.5], seed=0, record=True)
    assert [e.ret for e in episodes] == [0.75, 0.75] and [e.target for e in episodes] == [1.0, 0.5]
    assert np.allclose(episodes[0].returns_to_go, [1.0, 0.75, 0.5])
    assert np.allclose(episodes[1].returns_to_go, [0.5, 0.25, 0.0])
    assert episodes[0].timesteps.tolist() == [0, 1, 2] and episodes[0].states[:, 0, 0, 0].tolist() == [0, 1, 2]
    window = dt_rollout.episode_windows(model, episodes[0], [1], rtg=0.3)
    assert window.step_mask.tolist() == [[False, False, True, True]]  # context 4, two real steps
    assert window.returns_to_go[0, 2:].tolist() == [pytest.approx(0.3)] * 2
