"""MiniGrid envs, the MiniGrid actor-critic and the ppo_minigrid training kind."""

from __future__ import annotations

import json
import os

import pytest
import torch

from shardlab.envs.minigrid import MiniGridEnv, MiniGridEnvConfig, check_config, num_actions, observation_shape
from shardlab import cli as shardlab
from shardlab.models.hooks import hook_names, hooked
from shardlab.models.minigrid_policy import MiniGridPolicy, preprocess
from shardlab import cli
from shardlab.trainers.checkpointing import load_checkpoint
from shardlab.trainers.config import ConfigError, build_config, load_config, read_yaml
from shardlab.trainers.restore import load_trained

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "train", "minigrid_ppo_doorkey.yaml")
# 4 envs × 32 steps = 128 env steps and 2 optimizer steps per iteration
TINY = ["env.num_envs=4", "ppo.num_steps=32", "ppo.minibatch_size=64", "ppo.epochs=1",
        "trainer.checkpoint_every=128", "trainer.progress_bar=false", "model.hidden=[32]", "model.channels=[8]",
        "env.max_steps=20"]


def _rollout(env: MiniGridEnv, steps: int, seed: int = 0) -> list:
    generator = torch.Generator().manual_seed(seed)
    out = [env.reset()]
    for _ in range(steps):
        obs, reward, done, finished = env.step(torch.randint(0, 7, (env.num_envs,), generator=generator))
        out += [obs, reward, done, [(e.ret, e.length) for e in finished]]
    return out


def test_seeded_envs_repeat_and_ranks_differ():
    cfg = MiniGridEnvConfig("MiniGrid-DoorKey-8x8-v0", num_envs=3, obs="full", seed=5, max_steps=20)
    first, again = _rollout(MiniGridEnv(cfg), 45), _rollout(MiniGridEnv(cfg), 45)
    for a, b in zip(first, again):
        assert a.equal(b) if isinstance(a, torch.Tensor) else a == b
    other_rank = MiniGridEnv(cfg, rank=1).reset()
    other_seed = MiniGridEnv(MiniGridEnvConfig(**{**cfg.__dict__, "seed": 6})).reset()
    assert not first[0].equal(other_rank)
    assert first[0][1].equal(other_seed[0])  # env i starts from seed + i
    assert not first[0][0].equal(first[0][1])


@pytest.mark.parametrize("obs, shape", [("image", (7, 7, 3)), ("onehot", (7, 7, 20)), ("full", (5, 5, 3))])
def test_observation_shapes(obs, shape):
    cfg = MiniGridEnvConfig("MiniGrid-DoorKey-5x5-v0", num_envs=2, obs=obs)
    assert observation_shape(cfg) == shape and num_actions(cfg) == 7
    env = MiniGridEnv(cfg)
    first = env.reset()
    assert first.shape == (2, *shape) and first.dtype == torch.uint8
    after, reward, done, _ = env.step(torch.zeros(2, dtype=torch.long))
    assert after.shape == (2, *shape) and reward.dtype == torch.float32 and done.dtype == torch.bool
    if obs == "onehot":
        assert set(first.unique().tolist()) <= {0, 1}
    if obs == "full":  # the agent is on the grid as object 10
        assert (first[..., 0] == 10).sum(dim=(1, 2)).tolist() == [1, 1]


def test_success_reward_and_auto_reset():
    """Empty-5x5: the agent starts at (1, 1) facing east, the goal is at (3, 3)."""
    env = MiniGridEnv(MiniGridEnvConfig("MiniGrid-Empty-5x5-v0", num_envs=1))
    env.reset()
    forward, right = 2, 1
    for action in (forward, forward, right, forward):
        _, reward, done, finished = env.step(torch.tensor([action]))
        assert not done[0] and not finished and reward[0] == 0
    obs, reward, done, finished = env.step(torch.tensor([forward]))
    max_steps = env.envs[0].unwrapped.max_steps
    assert done[0] and reward[0] == pytest.approx(1 - 0.9 * 5 / max_steps)
    (episode,) = finished
    assert episode.success and episode.terminated and not episode.truncated and episode.length == 5
    assert episode.ret == pytest.approx(float(reward[0]))
    assert env.envs[0].unwrapped.step_count == 0  # already reset: obs is the next episode's first
    assert episode.mission == "get to the green goal square"


def test_time_limit_truncates():
    env = MiniGridEnv(MiniGridEnvConfig("MiniGrid-DoorKey-5x5-v0", num_envs=2, max_steps=3))
    env.reset()
    left = torch.zeros(2, dtype=torch.long)  # turning never finishes an episode
    for _ in range(2):
        assert not env.step(left)[2].any()
    _, reward, done, finished = env.step(left)
    assert done.all() and len(finished) == 2 and (reward == 0).all()
    assert all(e.truncated and not e.success and e.length == 3 and e.ret == 0 for e in finished)
    assert env.last_truncated.all() and not env.last_terminated.any()


def test_babyai_missions_and_rng_state():
    env = MiniGridEnv(MiniGridEnvConfig("BabyAI-GoToLocal-v0", num_envs=2, seed=1))
    env.reset()
    assert all(m.startswith("go to") for m in env.missions)
    state = env.rng_state()
    json.dumps(state)  # checkpoints store it as JSON
    draws = [e.unwrapped.np_random.integers(1000) for e in env.envs]
    env.set_rng_state(state)
    assert [e.unwrapped.np_random.integers(1000) for e in env.envs] == draws


@pytest.mark.parametrize("env_id, obs, message", [
    ("MiniGrid-DoorKey-5x5-v9", "image", "did you mean MiniGrid-DoorKey-5x5-v0"),
    ("CartPole-v1", "image", "not a registered MiniGrid/BabyAI env"),
    ("MiniGrid-DoorKey-5x5-v0", "rgb", "env.obs must be one of image, onehot, full"),
])
def test_bad_env_config(env_id, obs, message):
    with pytest.raises(ValueError, match=message):
        check_config(MiniGridEnvConfig(env_id, obs=obs))


@pytest.mark.parametrize("kind, shape", [("cnn", (7, 7, 3)), ("cnn", (5, 5, 3)), ("mlp", (7, 7, 20))])
def test_policy_shapes_and_hooks(kind, shape):
    policy = MiniGridPolicy(shape, 7, kind=kind, channels=(8, 16), hidden=(32, 24))
    obs = torch.randint(0, 2, (5, *shape), dtype=torch.uint8)
    logits, value = policy(preprocess(obs))
    assert logits.shape == (5, 7) and value.shape == (5,)
    names = hook_names(policy)
    expected = ["embedder.fc1_out", "embedder.fc2_out"]
    if kind == "cnn":
        expected = ["embedder.conv1_out", "embedder.conv2_out", *expected]
    assert [n for n in names if n.endswith("_out")] == expected
    with hooked(policy, cache=expected) as acts:
        policy(preprocess(obs))
    assert acts["embedder.fc2_out"].shape == (5, 24) and (acts["embedder.fc2_out"] >= 0).all()
    if kind == "cnn":
        assert acts["embedder.conv2_out"].shape == (5, 16, shape[0], shape[1])


@pytest.mark.parametrize("shape", [(7, 7, 3), (7, 7, 20)])
def test_sparse_impala_policy_on_the_grid(shape):
    torch.manual_seed(0)
    options = {"percent_on": 0.2, "boost_strength": 1.0}
    policy = MiniGridPolicy(shape, 7, kind="impala", activation="kwta", activation_options=options,
                            sparse_layers=["*relu2_out", "embedder.relufc_out"])
    obs = torch.randint(0, 3, (4, *shape), dtype=torch.uint8)
    names = ["embedder.block2.res1.relu2_out", "embedder.block2.res1.relu1_out", "embedder.relufc_out"]
    with hooked(policy, cache=names) as acts:
        logits, value = policy(preprocess(obs))
    assert logits.shape == (4, 7) and value.shape == (4,)
    nonzero = {name: (acts[name] != 0).float().mean().item() for name in names}
    assert nonzero["embedder.relufc_out"] == pytest.approx(round(256 * 0.2) / 256)  # k-WTA
    assert nonzero["embedder.block2.res1.relu2_out"] == pytest.approx(0.2, abs=0.02)  # over C·H·W
    assert type(policy.embedder.block2.res1.act1).__name__ == "NoneType"  # relu1 stays a plain ReLU
    with pytest.raises(ValueError, match="square grid"):
        MiniGridPolicy((5, 7, 3), 7, kind="impala")


def test_ppo_minigrid_config_errors():
    with pytest.raises(ConfigError, match="model.kind must be one of cnn, mlp, impala"):
        build_config({"algo": "ppo_minigrid", "model": {"kind": "resnet"}})
    with pytest.raises(ConfigError, match="match no ReLU of the IMPALA embedder"):
        build_config({"algo": "ppo_minigrid", "model": {"kind": "impala", "activation": "kwta",
                                                        "sparse_layers": ["conv9"]}})
    with pytest.raises(ConfigError, match="model.percent_on must be in"):
        build_config({"algo": "ppo_minigrid", "model": {"activation": "kwta", "percent_on": 0}})
    with pytest.raises(ConfigError, match="env.env_id 'MiniGrid-Nope-v0' is not a registered"):
        build_config({"algo": "ppo_minigrid", "env": {"env_id": "MiniGrid-Nope-v0"}})
    with pytest.raises(ConfigError, match="unknown config key 'env.rand_region'"):
        build_config({"algo": "ppo_minigrid", "env": {"rand_region": 3}})
    with pytest.raises(ConfigError, match="ppo.minibatch_size 100 must divide"):
        load_config(RECIPE, ["ppo.minibatch_size=100"])
    assert load_config(RECIPE).env.env_id == "MiniGrid-DoorKey-5x5-v0"


def test_ppo_minigrid_trains_resumes_and_reloads(tmp_path):
    run_dir = tmp_path / "mg"
    assert cli.main(["train", RECIPE, *TINY, "trainer.total_steps=256", "--run-dir", str(run_dir)]) == 0
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["shardlab"]["kind"] == "ppo_minigrid" and ckpt["shardlab"]["env_steps"] == 256
    assert ckpt["global_step"] == 4
    assert cli.main(["resume", str(run_dir), "trainer.total_steps=512"]) == 0
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["shardlab"]["env_steps"] == 512 and ckpt["global_step"] == 8
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [row["env_steps"] for row in rows] == [128, 256, 384, 512]
    assert all("episode/cheese_rate" not in row for row in rows)
    assert any("episode/success_rate" in row for row in rows)
    trained = load_trained(run_dir / "checkpoints" / "last.ckpt")
    assert trained.kind == "ppo_minigrid" and trained.steps == 512
    assert isinstance(trained.model, MiniGridPolicy) and trained.model.obs_shape == (7, 7, 3)
    weights = {k[len("policy."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("policy.")}
    for name, tensor in trained.model.state_dict().items():
        assert tensor.equal(weights[name]), name
    # a resumed run keeps its env
    assert cli.main(["resume", str(run_dir), "env.env_id=MiniGrid-Empty-5x5-v0", "trainer.total_steps=1024"]) == 2


def test_sparse_impala_ppo_minigrid_trains_and_reloads(tmp_path):
    run_dir = tmp_path / "sparse"
    args = ["model.kind=impala", "model.activation=kwta", "model.percent_on=0.2", *TINY, "trainer.total_steps=256"]
    assert cli.main(["train", RECIPE, *args, "--run-dir", str(run_dir)]) == 0
    trained = load_trained(run_dir / "checkpoints" / "last.ckpt")
    assert trained.kind == "ppo_minigrid" and trained.steps == 256
    act = trained.model.embedder.actfc
    assert type(act).__name__ == "KWinners" and act.learning_iterations.item() > 0  # duty cycles were trained
    with hooked(trained.model, cache=["embedder.relufc_out"]) as acts:
        trained.model(preprocess(torch.randint(0, 3, (6, 7, 7, 3), dtype=torch.uint8)))
    assert ((acts["embedder.relufc_out"] != 0).sum(1) <= 51).all()
    suite = tmp_path / "suite.yaml"
    suite.write_text("evals:\n  sparsity: {samples: 64, noise_levels: [0, 0.5], pixel_noise_levels: [0, 0.2]}\n"
                     "  minigrid_return: {episodes: 5, greedy: true}\n")
    out = tmp_path / "eval"
    assert shardlab.main(["eval", str(run_dir / "checkpoints" / "last.ckpt"), "--suite", str(suite), "--out", str(out),
                     "--no-progress"]) == 0
    rows = {r["name"]: r["value"] for r in json.loads((out / "results.json").read_text())["results"]}
    assert rows["density/relufc_out"] == pytest.approx(51 / 256)
    assert rows["noise_agreement/sigma=0"] == 1.0 and 0 <= rows["pixel_noise_score"] <= 1
    assert 0 <= rows["success_rate"] <= 1 and rows["length"] >= 1


class ScriptedPolicy(torch.nn.Module):
    """Always the same action (for counting episodes without training)."""

    def __init__(self, action: int):
        super().__init__()
        self.action, self.weight = action, torch.nn.Parameter(torch.zeros(1))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.full((len(obs), 7), -1e9)
        logits[:, self.action] = 0.0
        return logits, torch.zeros(len(obs))


def test_minigrid_return_plays_each_level_once():
    from shardlab.evals.minigrid.minigrid_return import play_levels
    cfg = MiniGridEnvConfig("MiniGrid-Empty-5x5-v0", max_steps=6)
    # turning left forever never reaches the goal: every level times out after exactly 6 steps
    episodes = play_levels(ScriptedPolicy(0), cfg, episodes=3, seed=0, greedy=True)
    assert [(e.length, e.truncated, e.success) for e in episodes] == [(6, True, False)] * 3


class WallFollower(torch.nn.Module):
    """Forward unless a wall is in front (then turn right): on Empty-5x5, from (1, 1) facing east, the
    goal in 5 steps (forward, forward, right, forward, forward)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        front = obs[:, 3, 5, 0]  # the view is indexed (x, y): the agent sits at (3, 6) looking at (3, 5)
        logits = torch.full((len(obs), 7), -1e9)
        logits[torch.arange(len(obs)), torch.where(front == 2, 1, 2)] = 0.0  # object 2 is a wall
        return logits, torch.zeros(len(obs))


def documented_seed_bound() -> int:
    """Above every env seed a documented command trains or collects MiniGrid levels on (generously)."""
    import math
    import re

    from shardlab.envs.seeding import RANK_SEED_STRIDE
    from shardlab.trainers.collect import SETTING_SEED_STRIDE
    bounds = []
    # `shardlab collect --seed S`: setting k's env i starts from S + 10,007·k + i (here ≤ 64 settings, 1,024 envs)
    documented = ("scripts/make_doorkey_data.sh", "docs/minigrid-and-dt.md", "README.md", "configs/train/dt_doorkey.yaml")
    for path in documented:
        with open(os.path.join(ROOT, path)) as handle:
            bounds += [int(s) + 64 * SETTING_SEED_STRIDE + 1024 for s in re.findall(r"--seed[ =](\d+)", handle.read())]
    # scripts/dt_doorkey_data.py: one seed per episode from its --seed default (3,250 episodes by default)
    with open(os.path.join(ROOT, "scripts", "dt_doorkey_data.py")) as handle:
        default = re.search(r'"--seed", type=int, default=([\d_]+)', handle.read()).group(1)
    bounds.append(int(default.replace("_", "")) + 100_000)
    # PPO: env i of DDP rank r, (re)started at iteration k, starts from env.seed + 7,919·k + i + 1,000,003·r
    folder = os.path.join(ROOT, "configs", "train")
    for name in sorted(os.listdir(folder)):
        if read_yaml(os.path.join(folder, name)).get("algo") == "ppo_minigrid":
            cfg = load_config(os.path.join(folder, name))
            iterations = math.ceil(cfg.trainer.total_steps / (cfg.env.num_envs * cfg.ppo.num_steps))
            bounds.append(cfg.env.seed + 7919 * iterations + cfg.env.num_envs + 63 * RANK_SEED_STRIDE)  # 64 ranks
    assert len(bounds) >= 5  # the collect lines, the planner script and the DoorKey PPO recipe
    return max(bounds)


def test_minigrid_eval_levels_are_none_a_documented_command_trains_or_collects_on():
    from shardlab.evals.minigrid.minigrid_return import LEVEL_OFFSET
    suite = read_yaml(os.path.join(ROOT, "configs", "evals", "minigrid.yaml"))
    assert LEVEL_OFFSET + suite["seed"] > documented_seed_bound()


def test_minigrid_return_rows_over_levels_against_known_answers(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from shardlab.evals.minigrid import minigrid_return
    from shardlab.evals.suite.context import EvalContext
    from tests.tiny_suites import assert_rows_have_intervals
    started = []

    class RecordingEnv(minigrid_return.MiniGridEnv):
        def __init__(self, cfg, rank: int = 0):
            super().__init__(cfg, rank)
            started.append((self.seed, self.num_envs))

    monkeypatch.setattr(minigrid_return, "MiniGridEnv", RecordingEnv)
    config = OmegaConf.create({"env": {"env_id": "MiniGrid-Empty-5x5-v0", "num_envs": 4, "obs": "image", "seed": 0,
                                       "max_steps": 20}})
    evaluate = minigrid_return.MiniGridReturn(minigrid_return.MiniGridReturn.Config(episodes=5, greedy=True))
    # (success, return, length, truncated): the wall follower's 5 steps, or turning left until the limit
    known = ((WallFollower(), (1.0, 1 - 0.9 * 5 / 20, 5.0, 0.0)), (ScriptedPolicy(0), (0.0, 0.0, 20.0, 1.0)))
    for policy, expected in known:
        result = evaluate.run(EvalContext(policy, config, str(tmp_path), seed=3, progress=False))
        assert_rows_have_intervals(result.metrics)
        rows = {m.name: m for m in result.metrics}
        assert [rows[name].value for name in ("success_rate", "return", "length", "truncated_rate")] == \
            pytest.approx(expected)
        assert all(rows[name].n == 5 and rows[name].unit == "levels" for name in ("success_rate", "return"))
        z2 = 1.959963984540054 ** 2  # the Wilson interval of 0 or 5 successes in 5 reaches z²/(n + z²) from the end
        assert rows["success_rate"].ci_high - rows["success_rate"].ci_low == pytest.approx(z2 / (5 + z2))
        assert rows["levels/first_seed"].kind == "setting"
    assert started == [(3 + minigrid_return.LEVEL_OFFSET, 5)] * 2


@pytest.mark.slow("ddp")
def test_ppo_minigrid_ddp_two_cpu_processes(tmp_path, warm_python):
    # rank 0 forks from a warm interpreter (tests/warm_python.py); Lightning starts rank 1 afresh
    run_dir = tmp_path / "ddp"
    result = warm_python.run(["train", RECIPE, *TINY, "trainer.accelerator=cpu", "trainer.devices=2",
                              "trainer.total_steps=512", "--run-dir", str(run_dir)], ROOT,
                             {**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    # 2 ranks × 4 envs × 32 steps = 256 env steps per iteration, 2 optimizer steps each
    assert ckpt["shardlab"]["env_steps"] == 512 and ckpt["global_step"] == 4
    assert ckpt["hyper_parameters"]["world_size"] == 2
