"""One spelling of a training kind (the config's ``algo``) and one adapter per kind (trainers/kinds.py)."""

from __future__ import annotations

import os

import pytest

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
