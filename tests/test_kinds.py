"""One spelling of a training kind (the config's ``algo``) and one adapter per kind (trainers/kinds.py)."""

from __future__ import annotations

import os

import pytest

from shardlab.configs.checks import ConfigError
from shardlab.trainers.kinds import KINDS, LEGACY_NAMES, get_kind, stored_kind

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def test_a_kind_is_spelled_as_its_algo():
    for algo, kind in KINDS.items():
        assert kind.algo == algo
        assert kind.load("module").kind == algo, f"{kind.module}.kind is not {algo!r}"


def test_legacy_names_map_to_a_kind():
    assert stored_kind("ppo_maze") == "ppo" and stored_kind("dt") == "dt"
    assert all(target in KINDS and name not in KINDS for name, target in LEGACY_NAMES.items())


@pytest.mark.parametrize("name", ["ci_policy.ckpt", "maze_ppo_v0.1.0.ckpt"])
def test_a_checkpoint_that_stored_ppo_maze_loads_as_kind_ppo(name):
    import torch

    from shardlab.trainers.restore import load_trained

    path = os.path.join(FIXTURES, name)
    assert torch.load(path, weights_only=True, map_location="cpu")["shardlab"]["kind"] == "ppo_maze"
    trained = load_trained(path)
    assert trained.kind == "ppo" == trained.config.algo


def test_an_eval_plugin_with_the_old_spelling_still_fits_ppo_checkpoints():
    from shardlab.evals.suite.registry import EvalError, check_fits

    class Old:
        name, kinds = "old_plugin", ("ppo_maze",)

    check_fits(Old, "ppo", "a.ckpt")
    with pytest.raises(EvalError, match="needs a ppo checkpoint"):
        check_fits(Old, "classify", "a.ckpt")


def test_get_kind_names_the_known_kinds():
    from shardlab.configs.checks import ConfigError

    with pytest.raises(ConfigError, match="known: classify, dt, ppo, ppo_minigrid"):
        get_kind("ppo_maze")


# -- the adapters --------------------------------------------------------------------------------

ENTRIES = ("schema", "validate", "module", "network", "env_config", "make_env", "env_shapes", "preprocess")


@pytest.mark.parametrize("algo", sorted(KINDS))
def test_every_adapter_entry_resolves(algo):
    kind = KINDS[algo]
    assert kind.network, f"{algo} names no network builder"
    for field in ENTRIES:
        if getattr(kind, field) is not None:
            assert callable(kind.load(field)), f"{algo}.{field} = {getattr(kind, field)}"
    assert (kind.env_config is None) == (kind.make_env is None), f"{algo}: an env needs both builders"


@pytest.mark.parametrize("algo", sorted(KINDS))
def test_every_schema_is_name_algo_sections_trainer(algo):
    import dataclasses

    from omegaconf import OmegaConf

    from shardlab.trainers.config import build_config
    from shardlab.trainers.trainer_config import TrainerConfig

    schema = KINDS[algo].load("schema")
    names = [f.name for f in dataclasses.fields(schema)]
    assert names[:2] == ["name", "algo"] and names[-1] == "trainer" and len(names) > 3
    assert schema().algo == algo and isinstance(schema().trainer, TrainerConfig)
    assert schema().trainer is not schema().trainer  # each instance gets its own sections
    # error messages send the user to the file that declares the kind's schema
    assert schema.__module__ == KINDS[algo].schema.split(":")[0]
    with pytest.raises(Exception, match=f"trainers/{schema.__module__.rsplit('.', 1)[1]}.py"):
        build_config({"algo": algo}, ["zzzzzz=1"])
    assert OmegaConf.structured(schema).algo == algo


def test_a_missing_entry_is_a_one_line_error():
    from shardlab.configs.checks import ConfigError

    with pytest.raises(ConfigError, match="training kind 'classify' has no env_config"):
        KINDS["classify"].load("env_config")


def _recipe(name: str):
    from shardlab import configs
    from shardlab.trainers.config import load_config

    return load_config(configs.resolve("recipe", name))


def test_the_maze_env_config_builder_honours_overrides():
    from shardlab.envs.maze_config import MazeEnvConfig

    cfg = _recipe("maze_ppo_cpu")
    built = get_kind("ppo").load("env_config")(cfg, num_envs=3, seed=7, rand_region=None)
    assert isinstance(built, MazeEnvConfig) and (built.num_envs, built.seed, built.rand_region) == (3, 7, None)
    assert built.distribution_mode == cfg.env.distribution_mode and built.obs == cfg.env.obs
    assert cfg.env.num_envs != 3 and cfg.env.rand_region is not None  # the config itself is left alone
    plain = get_kind("ppo").load("env_config")(cfg)
    assert (plain.num_envs, plain.seed, plain.rand_region) == (cfg.env.num_envs, cfg.env.seed, cfg.env.rand_region)
    with pytest.raises(TypeError):
        get_kind("ppo").load("env_config")(cfg, no_such_key=1)


def test_the_minigrid_env_config_builders_honour_overrides():
    from omegaconf import OmegaConf

    from shardlab.envs.minigrid_config import MiniGridEnvConfig

    cfg = _recipe("minigrid_ppo_doorkey")
    built = get_kind("ppo_minigrid").load("env_config")(cfg, num_envs=2, seed=5, max_steps=9)
    assert isinstance(built, MiniGridEnvConfig) and (built.num_envs, built.seed, built.max_steps) == (2, 5, 9)
    assert built.env_id == cfg.env.env_id and built.obs == cfg.env.obs
    spec = OmegaConf.create({"spec": {"env_id": "MiniGrid-DoorKey-5x5-v0", "obs": ""}})
    played = get_kind("dt").load("env_config")(spec, num_envs=4, seed=11)
    assert (played.env_id, played.obs, played.num_envs, played.seed) == ("MiniGrid-DoorKey-5x5-v0", "image", 4, 11)
    with pytest.raises(ValueError, match="spec.env_id is empty"):
        get_kind("dt").load("env_config")(OmegaConf.create({"spec": {"env_id": "", "obs": ""}}))


def test_the_kind_builds_a_configs_env_and_network():
    """One env builder and one network builder per config, through the kind: the network is sized by
    what the env tells (``env_shapes``), the env takes the config's env section and overrides."""
    cfg = _recipe("maze_ppo_cpu")
    ppo = get_kind("ppo")
    shapes = ppo.load("env_shapes")(ppo.load("env_config")(cfg))
    env = ppo.build_env(cfg, num_envs=2, seed=5)
    try:
        assert env.num_envs == 2 and tuple(env.reset().shape) == (2, *shapes["observation_shape"])
    finally:
        env.close()
    assert ppo.load("network") == ppo.build_network
    assert ppo.build_network(cfg).image_size == shapes["observation_shape"][0]

    grid = _recipe("minigrid_ppo_doorkey")
    minigrid = get_kind("ppo_minigrid")
    shapes = minigrid.load("env_shapes")(minigrid.load("env_config")(grid))
    network = minigrid.build_network(grid)
    assert network.obs_shape == shapes["observation_shape"]
    assert network.fc_policy.out_features == shapes["num_actions"] == 7
    with pytest.raises(ConfigError, match="training kind 'classify' has no (make_env|env_config)"):
        KINDS["classify"].build_env(grid)


BUILDERS = {os.path.join("envs", "maze_config.py"), os.path.join("envs", "minigrid_config.py")}


def test_env_sections_become_env_dataclasses_only_in_the_builders():
    """No ``*EnvConfig(**OmegaConf.to_container(...))`` outside envs/*_config.py:env_config: a
    config's env section is turned into its dataclass by the kind's builder."""
    import ast

    found = []
    for folder in ("shardlab", "trainers", "envs", "models", "evals", "configs", "scripts", "tests"):
        for base, dirs, files in os.walk(os.path.join(ROOT, folder)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in (n for n in files if n.endswith(".py")):
                rel = os.path.relpath(os.path.join(base, name), ROOT)
                with open(os.path.join(ROOT, rel), encoding="utf-8") as handle:
                    tree = ast.parse(handle.read(), rel)
                for node in ast.walk(tree):
                    if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("EnvConfig") \
                            and "to_container(" in ast.unparse(node) and rel not in BUILDERS:
                        found.append(f"{rel}:{node.lineno}")
    assert found == [], f"use the kind's env_config builder (envs/*_config.py): {found}"


# -- the activation sites models declare ---------------------------------------------------------


def test_models_declare_their_activation_sites():
    import torch

    from shardlab.models.hooks import HookError, activation_sites, hook_names
    from shardlab.models.impala import ImpalaPolicy
    from shardlab.models.impala_config import RELU_SITES
    from shardlab.models.minigrid_policy import MiniGridPolicy

    assert activation_sites(ImpalaPolicy(image_size=16)) == list(RELU_SITES)
    assert activation_sites(MiniGridPolicy((7, 7, 3), 7, kind="impala")) == list(RELU_SITES)
    cnn = MiniGridPolicy((7, 7, 3), 7, kind="cnn", channels=(8, 16), hidden=(32, 24))
    assert activation_sites(cnn) == ["embedder.conv1_out", "embedder.conv2_out", "embedder.fc1_out",
                                     "embedder.fc2_out"]
    mlp = MiniGridPolicy((7, 7, 3), 7, kind="mlp", hidden=(32,))
    assert activation_sites(mlp) == ["embedder.fc1_out"]
    for model in (cnn, mlp):
        assert set(activation_sites(model)) <= set(hook_names(model))
    with pytest.raises(HookError, match="Linear declares no activation_sites"):
        activation_sites(torch.nn.Linear(2, 2))
    assert get_kind("ppo_minigrid").activation_sites(mlp) == ["embedder.fc1_out"]


def test_the_decision_transformer_declares_its_mlp_activations():
    from shardlab.models.decision_transformer import DecisionTransformer
    from shardlab.models.hooks import activation_sites, hook_names

    model = DecisionTransformer((7, 7, 3), 7, 20, n_layers=2, d_model=16, n_heads=2, context=4)
    assert activation_sites(model) == ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]
    assert set(activation_sites(model)) <= set(hook_names(model))
