"""``shardlab collect``: sources, ε/temperature mixtures, seeding, appends and exit 2 on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shardlab import cli
from shardlab.trainers.config import build_config, to_dict
from shardlab.trainers.kinds import get_kind
from shardlab.trainers.trajectories import load_trajectories

pytestmark = pytest.mark.usefixtures("one_thread")
FORWARD = 2


def run(args: list[str], capsys) -> tuple[int, str]:
    """cli.main's exit code (argparse errors included) and stderr."""
    try:
        code = cli.main(["collect", *args])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _checkpoint(path, recipe: dict, edit=None) -> str:
    """A checkpoint in the trainer's layout holding an untrained network for ``recipe``."""
    cfg = build_config(recipe)
    module = get_kind(cfg.algo).load("module")
    model = module.build_model(cfg)
    if edit is not None:
        edit(model)
    torch.save({"state_dict": {f"{module.model_attr}.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": to_dict(cfg), "world_size": 1},
                "shardlab": {"format": 1, "kind": module.kind, module.progress_key: 0}}, path)
    return str(path)


def _always_forward(model) -> None:
    with torch.no_grad():
        model.fc_policy.weight.zero_()
        model.fc_policy.bias.zero_()
        model.fc_policy.bias[FORWARD] = 20.0


@pytest.fixture(scope="module")
def forward_ckpt(tmp_path_factory) -> str:
    recipe = {"algo": "ppo_minigrid", "env": {"env_id": "MiniGrid-Empty-5x5-v0"},
              "model": {"channels": [4], "hidden": [8]}}
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "forward.ckpt", recipe, _always_forward)


def test_random_source_is_seeded_and_documented(tmp_path, capsys):
    common = ["--env", "MiniGrid-DoorKey-5x5-v0", "--source", "random", "--episodes", "6", "--num-envs", "3",
              "--max-steps", "10", "--no-progress"]
    assert run([*common, "--out", str(tmp_path / "a.npz")], capsys)[0] == 0
    assert run([*common, "--out", str(tmp_path / "b.npz")], capsys)[0] == 0
    assert run([*common, "--seed", "1", "--out", str(tmp_path / "c.npz")], capsys)[0] == 0
    a, b, c = (load_trajectories(tmp_path / f"{x}.npz") for x in "abc")
    assert a.num_episodes == 6 and (a.episode_lengths <= 10).all()
    for name, array in a.arrays().items():
        np.testing.assert_array_equal(array, getattr(b, name))
    assert not np.array_equal(a.observations[:20], c.observations[:20])
    meta = a.metadata
    assert (meta["env_id"], meta["obs"], meta["obs_shape"], meta["num_actions"], meta["max_steps"]) == \
        ("MiniGrid-DoorKey-5x5-v0", "image", [7, 7, 3], 7, 10)
    assert meta["policy"] == "uniform random actions" and meta["seeds"] == [0]
    assert meta["episodes"] == 6 and meta["steps"] == a.num_steps
    assert set(meta["return_stats"]) == {"mean", "std", "min", "max", "success_rate"}
    assert all(m == "use the key to open the door and then get to the goal" for m in a.missions)


def test_checkpoint_source_temperature_and_epsilon(tmp_path, capsys, forward_ckpt):
    out = tmp_path / "mix.npz"
    code, err = run(["--env", "MiniGrid-Empty-5x5-v0", "--source", forward_ckpt, "--episodes", "8",
                     "--epsilon", "0,1", "--temperature", "1,1000", "--max-steps", "6", "--num-envs", "2",
                     "--out", str(out)], capsys)
    assert code == 0, err
    assert "collect" in err and "wrote" in err  # the progress bar and the summary line
    data = load_trajectories(out)
    parts = data.metadata["parts"]
    assert [(p["epsilon"], p["temperature"], p["episodes"]) for p in parts] == \
        [(0.0, 1.0, 2), (0.0, 1000.0, 2), (1.0, 1.0, 2), (1.0, 1000.0, 2)]
    assert len({p["seeds"][0] for p in parts}) == 4  # every setting sees its own layouts
    actions = [data.actions[data.episode_starts[2 * k]:][:12] for k in range(4)]
    assert (actions[0] == FORWARD).all()  # greedy enough at temperature 1: always forward
    assert (actions[1] != FORWARD).any()  # temperature 1000 flattens the softmax
    assert (actions[2] != FORWARD).any() and (actions[3] != FORWARD).any()  # ε = 1: uniform
    assert "temperature 1000" in parts[1]["policy"] and "epsilon 1" in parts[2]["policy"]


def test_every_episode_records_its_level(tmp_path, capsys):
    """level_seeds/level_indices name each episode's level: replaying them from the env alone
    (reset with the seed, and for later levels the recorded actions of the earlier episodes)
    gives the recorded first observations."""
    from shardlab.envs.minigrid import MiniGridEnvConfig, make_single
    out = tmp_path / "levels.npz"
    code, err = run(["--env", "MiniGrid-DoorKey-5x5-v0", "--source", "random", "--episodes", "5", "--epsilon", "0,1",
                     "--num-envs", "2", "--max-steps", "4", "--seed", "3", "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    data = load_trajectories(out)
    # setting 0: envs 3 and 4 play 2 and 1 episodes; setting 1 (seed 3 + 10,007): one each
    assert data.level_seeds.tolist() == [3, 3, 4, 10010, 10011] and data.level_indices.tolist() == [0, 1, 0, 0, 0]
    assert data.level_seed_ranges() == [[3, 4], [10010, 10011]]
    env = make_single(MiniGridEnvConfig("MiniGrid-DoorKey-5x5-v0", obs="image", max_steps=4))
    for e in range(data.num_episodes):
        if data.level_indices[e] == 0:
            obs, _ = env.reset(seed=int(data.level_seeds[e]))
        else:  # the env's previous episode, replayed, then its automatic reset
            env.reset(seed=int(data.level_seeds[e - 1]))
            for action in data.episode(e - 1).actions:
                env.step(int(action))
            obs, _ = env.reset()
        np.testing.assert_array_equal(obs, data.episode(e).observations[0])
    env.close()


def test_bot_source_on_babyai(tmp_path, capsys):
    out = tmp_path / "bot.npz"
    code, err = run(["--env", "BabyAI-GoToLocal-v0", "--source", "bot", "--episodes", "6", "--num-envs", "3",
                     "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    data = load_trajectories(out)
    assert data.metadata["return_stats"]["success_rate"] >= 0.8  # the expert solves GoToLocal
    assert data.metadata["bot_failures"] == 0
    assert all(str(m).startswith("go to") for m in data.missions)


def test_append_adds_parts_and_warns_on_repeated_seeds(tmp_path, capsys):
    out = str(tmp_path / "data.npz")
    common = ["--env", "MiniGrid-DoorKey-5x5-v0", "--source", "random", "--episodes", "2", "--max-steps", "5",
              "--no-progress", "--out", out]
    assert run(common, capsys)[0] == 0
    first = load_trajectories(out)
    code, err = run([*common, "--append", "--seed", "7"], capsys)
    assert code == 0 and "warning" not in err
    code, err = run([*common, "--append"], capsys)
    assert code == 0 and "already holds episodes from seed(s) [0, 1]" in err  # its two envs' seeds
    data = load_trajectories(out)
    assert data.num_episodes == 6 and [p["seeds"] for p in data.metadata["parts"]] == [[0], [7], [0]]
    np.testing.assert_array_equal(data.observations[:first.num_steps], first.observations)
    before = open(out, "rb").read()
    code, err = run(["--env", "MiniGrid-Empty-5x5-v0", *common[2:], "--append"], capsys)
    assert code == 2 and "cannot append env_id 'MiniGrid-Empty-5x5-v0'" in err
    assert open(out, "rb").read() == before


@pytest.mark.parametrize("args, message", [
    (["--epsilon", "abc"], "--epsilon must be a comma list of numbers"),
    (["--epsilon", "0,1.5"], "--epsilon values must be in [0, 1], got 1.5"),
    (["--temperature", "0"], "--temperature values must be in (0, inf)"),
    (["--episodes", "0"], "--episodes must be >= 1"),
    (["--env", "MiniGrid-Nope-v0"], "--env 'MiniGrid-Nope-v0' is not a registered MiniGrid/BabyAI env"),
    (["--source", "missing.ckpt"], "checkpoint missing.ckpt does not exist"),
    (["--source", "bot"], "the BabyAI bot plans from BabyAI instructions"),
    (["--temperature", "2"], "--temperature only applies to checkpoint sources"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_input_exits_2(tmp_path, capsys, args, message):
    base = ["--env", "MiniGrid-DoorKey-5x5-v0", "--source", "random", "--episodes", "2",
            "--out", str(tmp_path / "x.npz")]
    code, err = run([*base, *args], capsys)  # a repeated flag takes its last value
    assert code == 2
    assert message in err and len(err.strip().splitlines()) <= 3, err
    assert not (tmp_path / "x.npz").exists()


def test_files_and_checkpoints_that_do_not_fit(tmp_path, capsys, forward_ckpt):
    out = tmp_path / "x.npz"
    base = ["--env", "MiniGrid-Empty-5x5-v0", "--episodes", "2", "--no-progress"]
    out.write_bytes(b"not a zip")
    code, err = run([*base, "--source", "random", "--out", str(out)], capsys)
    assert code == 2 and "exists; pass --append to add episodes to it or --force" in err
    code, err = run([*base, "--source", "random", "--out", str(out), "--append"], capsys)
    assert code == 2 and "x.npz is truncated or corrupt" in err
    code, err = run([*base, "--source", "random", "--out", str(tmp_path)], capsys)
    assert code == 2 and "is a directory" in err
    code, err = run([*base, "--source", forward_ckpt, "--obs", "onehot", "--out", str(tmp_path / "y.npz")], capsys)
    assert code == 2 and "takes observations of shape (7, 7, 3)" in err and "gives (7, 7, 20)" in err
    maze = _checkpoint(tmp_path / "maze.ckpt", {"env": {"obs": "grid", "distribution_mode": "easy"}})
    code, err = run([*base, "--source", maze, "--out", str(tmp_path / "z.npz")], capsys)
    assert code == 2 and "is a 'ppo' run; collect needs a ppo_minigrid policy" in err
    assert out.read_bytes() == b"not a zip" and not (tmp_path / "y.npz").exists()
