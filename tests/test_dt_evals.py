"""Decision-transformer evals end to end on tiny checkpoints through `shardlab eval`, on levels their
data did not record; the calibration statistics against scripted return-conditioned policies whose
slope is known by construction; the rollout's return-to-go bookkeeping, and kind checks (a maze
eval refuses a dt checkpoint)."""

from __future__ import annotations

import json
import os
import textwrap
from typing import Callable, Optional
from xml.etree import ElementTree

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from shardlab import cli as shardlab
from shardlab.evals.dt import rollout as dt_rollout
from shardlab.evals.dt.attention import DTAttention
from shardlab.evals.dt.rtg import DTReturnConditioning, calibration
from shardlab.evals.dt.steering import DTSteering, steering_effect
from shardlab.evals.minigrid.minigrid_return import LEVEL_OFFSET
from shardlab.evals.suite import stats
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.results import Threshold
from tests.test_dt_trainer import RECIPE, ROOT, tiny_args, tiny_dataset
from tests.tiny_suites import assert_rows_have_intervals
from shardlab.trainers.restore import load_trained
from shardlab.trainers.trajectories import load_trajectories, save_trajectories

pytestmark = pytest.mark.usefixtures("one_thread")
SUITE = """
seed: 1
evals:
  dt_rtg: {episodes: 3, targets: [0.2, 0.9], max_steps: 6}
  dt_steering: {episodes: 2, coefficients: [0.0, 1.0], windows: 16, max_steps: 6, random_vectors: 2}
  dt_attention: {episodes: 2, windows: 8, max_steps: 6}
"""


def seeded_dataset(path, **kwargs) -> str:
    """tiny_dataset recording its levels: half at seeds 0, 1, … (as `shardlab collect --seed 0` would),
    half at the first seeds the evals would play with suite seed 1, which they must then skip."""
    data = load_trajectories(tiny_dataset(path, **kwargs))
    half = data.num_episodes // 2
    data.level_seeds = np.concatenate([np.arange(half), LEVEL_OFFSET + 1 + np.arange(data.num_episodes - half)])
    data.level_indices = np.zeros(data.num_episodes, np.int64)
    save_trajectories(path, data)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("dt_evals")
    data = seeded_dataset(root / "d.npz")
    babyai = seeded_dataset(root / "babyai.npz", env_id="BabyAI-GoToLocal-v0")
    paths = {"data": data}
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


def test_dt_suite_runs_every_eval_on_levels_outside_its_data(checkpoints, tmp_path, monkeypatch):
    played: list[int] = []  # every level seed any eval's env starts from

    class RecordingEnv(dt_rollout.MiniGridEnv):
        def __init__(self, cfg, rank: int = 0):
            super().__init__(cfg, rank)
            played.extend(range(self.seed, self.seed + self.num_envs))

    monkeypatch.setattr(dt_rollout, "MiniGridEnv", RecordingEnv)
    out = tmp_path / "out"
    assert shardlab.main(["eval", checkpoints["dt"], "--suite", write_suite(tmp_path), "--out", str(out)]) == 0
    recorded = set(load_trajectories(checkpoints["data"]).level_seeds.tolist())
    assert played and not set(played) & recorded  # never a level the model was trained (or validated) on
    document = json.loads((out / "results.json").read_text())
    assert_rows_have_intervals(document["results"])
    values = {(row["eval"], row["name"]): row for row in document["results"]}
    # the suite's seed 1 starts at LEVEL_OFFSET + 1, which the data recorded: the levels move past them
    assert values[("dt_rtg", "levels/first_seed")]["value"] == LEVEL_OFFSET + 13 == max(recorded) + 1
    for target in ("0.20", "0.90"):
        for metric in ("success_rate", "mean_return", "mean_length", "truncation_rate"):
            row = values[("dt_rtg", f"target={target}/{metric}")]
            assert row["n"] == 3 and row["unit"] == "levels" and row["seed"] == 1 and row["eval_version"] == 2
        assert values[("dt_rtg", f"target={target}/mean_length")]["value"] <= 6
    for name in ("calibration/slope", "calibration/spearman", "calibration/return_spread",
                 "calibration/mean_abs_error"):
        assert ("dt_rtg", name) in values and values[("dt_rtg", name)]["n"] == 3
    assert values[("dt_rtg", "data/return_max")]["kind"] == "data"
    for name in ("vector_norm", "coeff=+0.00/mean_return", "coeff=+1.00/action_kl", "coeff=+1.00/action_tv_to_b",
                 "condition_b/mean_return", "random_control/mean_return", "random_control/action_kl",
                 "random_control/action_tv_to_b"):
        assert ("dt_steering", name) in values
    # 2 random vectors × 2 episodes on the same 2 levels: 2 independent units, not 4
    assert values[("dt_steering", "random_control/success_rate")]["n"] == 2
    assert values[("dt_steering", "vector_norm")]["value"] > 0
    assert values[("dt_steering", "coeff=+0.00/action_kl")]["value"] == pytest.approx(0.0, abs=1e-6)
    assert values[("dt_steering", "coeff=+1.00/action_kl")]["unit"] == "levels"
    effect = values[("dt_steering", "steering_effect")]
    returns = {name: values[("dt_steering", f"{name}/mean_return")]["value"]
               for name in ("condition_a", "condition_b", "coeff=+1.00")}
    gap = returns["condition_b"] - returns["condition_a"]
    if abs(gap) > 1e-9:  # the ratio of the rows' own mean returns
        assert effect["value"] == pytest.approx((returns["coeff=+1.00"] - returns["condition_a"]) / gap)
    else:
        assert effect["value"] is None and effect["note"] == "conditions A and B give the same mean return"
    shares = [values[("dt_attention", f"layer0.head{h}/to_{kind}")]["value"] for h in range(2)
              for kind in ("rtg", "state", "action")]
    assert sum(shares) == pytest.approx(2.0, abs=1e-4)  # each head's attention sums to one
    assert values[("dt_attention", "layer0.head0/to_rtg")]["unit"] == "levels"
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


def test_dt_evals_refuse_a_checkpoint_whose_data_recorded_no_levels(checkpoints, tmp_path):
    """Data collected before levels were recorded (schema 1) trains, but its evals cannot avoid its levels."""
    trained = load_trained(checkpoints["dt"])
    config = OmegaConf.create(OmegaConf.to_container(trained.config))
    config.spec.level_seeds = []
    ctx = EvalContext(trained.model, config, str(tmp_path), progress=False)
    for eval_class, settings in ((DTReturnConditioning, {"episodes": 1}), (DTSteering, {"episodes": 1}),
                                 (DTAttention, {"episodes": 1})):
        with pytest.raises(ValueError, match=f"{eval_class.name}: the checkpoint's training data recorded no level "
                                             "seeds") as info:
            eval_class(eval_class.Config(**settings)).run(ctx)
        assert "\n" not in str(info.value) and "re-collect the data and retrain" in str(info.value)


def test_evaluation_levels_skip_every_recorded_range():
    assert dt_rollout.free_block([[0, 11], [20, 29]], start=5, n=3) == 12
    assert dt_rollout.free_block([[0, 11], [14, 29]], start=5, n=3) == 30  # 12, 13 leave no room for 3
    assert dt_rollout.free_block([[5, 30], [10, 20]], start=0, n=10) == 31  # nested ranges
    assert dt_rollout.free_block([[100, 200]], start=0, n=100) == 0
    spec = OmegaConf.create({"level_seeds": [[LEVEL_OFFSET + 2, LEVEL_OFFSET + 4]]})
    assert dt_rollout.evaluation_seed(spec, seed=0, n=2, name="x") == LEVEL_OFFSET
    assert dt_rollout.evaluation_seed(spec, seed=0, n=3, name="x") == LEVEL_OFFSET + 5


def test_doorkey_planner_data_records_each_episodes_level(tmp_path):
    import importlib.util

    import gymnasium as gym
    from minigrid.wrappers import ImgObsWrapper
    spec = importlib.util.spec_from_file_location("dt_doorkey_data", os.path.join(ROOT, "scripts", "dt_doorkey_data.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "mix.npz"
    assert script.main(["--out", str(out), "--epsilons", "0", "1", "--episodes", "2", "--seed", "9"]) == 0
    data = load_trajectories(out)
    assert data.level_seeds.tolist() == [9, 10, 11, 12] and data.level_indices.tolist() == [0, 0, 0, 0]
    env = ImgObsWrapper(gym.make("MiniGrid-DoorKey-5x5-v0", disable_env_checker=True))
    for e, seed in enumerate(data.level_seeds):  # the recorded seed gives the episode's first view
        np.testing.assert_array_equal(env.reset(seed=int(seed))[0], data.episode(e).observations[0])
    env.close()


# -- the calibration statistics against policies whose answer is known ------------------------------
class WaitingDT(torch.nn.Module):
    """A scripted return-conditioned policy for MiniGrid-Empty-Random-5x5 with the full view. On
    levels whose agent starts in ``column`` (every level when None) it first turns left
    ``wait(target)`` times (a multiple of 4: it ends facing where it started), then walks to the
    goal: forward when facing the way to it (east while left of it, else south), else turn right.
    A level's return is 1 − 0.9·(walk + wait)/max_steps, its walk independent of the target, so the
    slope of achieved on target return follows from ``wait`` and the levels alone."""

    use_rtg, max_mission_tokens = True, 0

    def __init__(self, wait: Callable[[float], int], column: Optional[int] = None):
        super().__init__()
        self.wait, self.column, self.context = wait, column, 1
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, states, actions, returns_to_go, timesteps, step_mask, missions=None) -> torch.Tensor:
        logits = torch.full((len(states), states.shape[1], 7), -1e9)
        for b, grid in enumerate(states[:, -1]):  # (x, y, 3): the agent cell is (10, 0, direction)
            x, y = (grid[..., 0] == 10).nonzero()[0].tolist()
            gx, _ = (grid[..., 0] == 8).nonzero()[0].tolist()
            waits = self.column is None or x == self.column  # waiting never moves the agent
            if waits and int(timesteps[b, -1]) < self.wait(float(returns_to_go[b, -1])):
                action = 0  # left
            else:
                action = 2 if int(grid[x, y, 2]) == (0 if x < gx else 1) else 1  # forward, else right
            logits[b, -1, action] = 0.0
        return logits


MAX_STEPS, TARGETS = 40, [0.0, 0.25, 0.5, 0.75, 1.0]
wait_steps = lambda target: 4 * round(2 * (1 - target))  # noqa: E731 — 8, 8, 4, 0, 0 turns at TARGETS


def run_rtg(model: torch.nn.Module, tmp_path, levels: int) -> dict:
    """dt_rtg's rows (name → Metric) for a scripted model on ``levels`` Empty-Random-5x5 levels."""
    config = OmegaConf.create({"spec": {"env_id": "MiniGrid-Empty-Random-5x5-v0", "obs": "full", "return_min": 0.0,
                                        "return_max": 1.0, "return_mean": 0.5, "success_rate": 1.0,
                                        "level_seeds": [[0, 99]]}})
    ctx = EvalContext(model, config, str(tmp_path), progress=False)
    result = DTReturnConditioning(DTReturnConditioning.Config(targets=TARGETS, episodes=levels,
                                                              max_steps=MAX_STEPS)).run(ctx)
    assert_rows_have_intervals(result.metrics)
    return {m.name: m for m in result.metrics}


def test_a_policy_that_ignores_the_return_has_slope_zero_and_no_spearman(tmp_path):
    rows = run_rtg(WaitingDT(lambda target: 0), tmp_path, levels=12)
    slope = rows["calibration/slope"]
    assert slope.value == 0 and slope.ci_low <= 0 <= slope.ci_high and slope.n == 12 and slope.unit == "levels"
    assert rows["target=0.00/success_rate"].value == 1  # it walks to the goal on every level
    spearman = rows["calibration/spearman"]
    assert spearman.undefined and spearman.note == "every target return gave the same mean return"
    threshold = Threshold("dt_rtg.calibration/spearman", min=0.8)  # undetermined, not missed
    assert not threshold.missed(spearman) and threshold.verdict(spearman) == stats.UNDETERMINED
    assert rows["calibration/return_spread"].value == 0


def test_the_slope_of_a_policy_with_a_known_answer_and_its_interval_over_levels(tmp_path):
    levels = 24
    rows = run_rtg(WaitingDT(wait_steps, column=1), tmp_path, levels)
    # which levels wait: the agent's start column, read from the env itself
    first = int(rows["levels/first_seed"].value)
    env = dt_rollout.MiniGridEnv(dt_rollout.spec_env_config(OmegaConf.create(
        {"env_id": "MiniGrid-Empty-Random-5x5-v0", "obs": "full"}), num_envs=levels, seed=first))
    env.reset()
    waits = np.array([e.unwrapped.agent_pos[0] == 1 for e in env.envs])
    env.close()
    assert 0 < waits.sum() < levels
    # per level the slope is −0.9/max_steps · slope(targets, wait) if it waits, else 0; the slope of the
    # mean is the mean of those, and its level bootstrap should match their t interval
    per_level = np.where(waits, -0.9 / MAX_STEPS * np.polyfit(TARGETS, [wait_steps(t) for t in TARGETS], 1)[0], 0.0)
    slope, expected = rows["calibration/slope"], stats.mean(per_level, "levels")
    assert slope.value == pytest.approx(expected.value, abs=1e-9) and slope.method == "bootstrap"
    width = expected.ci_high - expected.ci_low
    assert abs(slope.ci_low - expected.ci_low) < 0.2 * width and abs(slope.ci_high - expected.ci_high) < 0.2 * width
    assert rows["calibration/spearman"].value > 0.8


def test_calibration_intervals_come_from_the_levels_not_the_regression():
    """Means exactly linear in the target (no regression residual) while levels disagree: only the
    level bootstrap sees the uncertainty; levels that all agree give a zero-width interval."""
    rng = np.random.default_rng(0)
    targets = np.array([0.0, 0.5, 1.0])
    per_level = rng.normal(0.5, 0.3, 40)
    returns = rng.random(40)[None, :] + per_level[None, :] * targets[:, None]  # (targets, levels)
    slope = calibration(targets, returns)["slope"]
    expected = stats.mean(per_level, "levels")
    assert slope.value == pytest.approx(expected.value) and slope.n == 40
    width = expected.ci_high - expected.ci_low
    assert abs(slope.ci_low - expected.ci_low) < 0.15 * width and abs(slope.ci_high - expected.ci_high) < 0.15 * width
    agreeing = calibration(targets, rng.random(40)[None, :] + 0.7 * targets[:, None])["slope"]
    assert agreeing.value == pytest.approx(0.7) and agreeing.ci_high - agreeing.ci_low == pytest.approx(0, abs=1e-12)
    one_target = calibration([0.5], returns[:1])
    assert not one_target["slope"].defined and "two different target returns" in one_target["slope"].note


def test_steering_effect_is_the_paired_ratio_of_mean_returns():
    clean, reference = np.array([0.0, 0.2, 0.0, 0.1]), np.array([1.0, 0.8, 0.9, 1.0])
    edited = np.array([0.5, 0.6, 0.4, 0.3])
    effect = steering_effect(edited, clean, reference)
    assert effect.value == pytest.approx((edited.mean() - clean.mean()) / (reference.mean() - clean.mean()))
    assert effect.n == 4 and effect.ci_low <= effect.value <= effect.ci_high
    assert steering_effect(edited, clean, clean).note == "conditions A and B give the same mean return"
