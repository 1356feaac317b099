"""The eval base class (config kept, declared layer fields checked before anything runs), the
README's plugin example as written, and the declared episode rates of the PPO trainers."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from shardlab.evals import Eval, EvalError
from shardlab.evals.suite import registry
from shardlab.evals.suite.suite_file import eval_config
from shardlab.models.impala import ImpalaPolicy
from shardlab.trainers.ppo import PPOModule
from shardlab.trainers.ppo_minigrid import PPOMiniGridModule

README = Path(__file__).resolve().parents[1] / "README.md"
REAL = "embedder.block2.res1.resadd_out"


class _Layered(Eval):
    name = "layered"
    layer_fields = ("layer", "layers")


@pytest.fixture(scope="module")
def policy() -> ImpalaPolicy:
    return ImpalaPolicy(scale=1, image_size=15).eval()


def test_the_base_keeps_the_config():
    config = SimpleNamespace(layer=REAL, layers=None)
    assert _Layered(config).config is config


@pytest.mark.parametrize("layer, layers", [(REAL, None), (REAL, []), (REAL, [REAL, "embedder.relufc_out"])])
def test_declared_layers_that_exist_pass(policy, layer, layers):
    _Layered(SimpleNamespace(layer=layer, layers=layers)).check_model(policy, None)


@pytest.mark.parametrize("layer, layers, key", [("embedder.nope", None, "layered.layer"),
                                                (REAL, [REAL, "embedder.block9"], "layered.layers")])
def test_a_missing_layer_is_named_by_its_config_key(policy, layer, layers, key):
    with pytest.raises(EvalError) as info:
        _Layered(SimpleNamespace(layer=layer, layers=layers)).check_model(policy, None)
    message = str(info.value)
    assert message.startswith(f"{key}: ") and "\n" not in message
    assert ("embedder.nope" if layer != REAL else "embedder.block9") in message


def test_shipped_layer_evals_check_their_declared_fields(policy):
    for name, bad in [("steering", {"layer": "embedder.nope"}), ("probes", {"layers": ["embedder.nope"]}),
                      ("jacobian_svd", {"layers": ["embedder.nope"]}),
                      ("relu_ablation", {"relus": ["embedder.block9.res1.relu1_out"]}),
                      ("activation_patching", {"channel_layers": ["embedder.nope"]})]:
        cls = registry.get(name)
        instance = cls(eval_config(cls, name, bad))
        key = f"{name}.{next(iter(bad))}"
        with pytest.raises(EvalError, match=re.escape(key) + ": "):
            instance.check_model(policy, None)


def test_the_readme_plugin_example_registers_and_runs():
    text = README.read_text()
    block = re.search(r"```python\n(# my_package/evals\.py.*?)```", text, re.S)
    assert block, "the README's plugin example moved; update this test"
    namespace: dict = {}
    try:
        exec(compile(block.group(1), "README.md", "exec"), namespace)
        cls = registry.get("mean_value")
        assert issubclass(cls, Eval) and cls.kinds == ("ppo",) and cls.version == 1
        config = eval_config(cls, "mean_value", {"mazes": 128})
        result = cls(config).run(SimpleNamespace())
        assert [(row.name, row.value, row.n) for row in result.metrics] == [("something", 0.5, 128)]
    finally:
        registry.DECLARED.pop("mean_value", None)


def test_episode_rates_follow_the_declared_episode_fields():
    maze = [SimpleNamespace(ret=10.0, length=4, reached_cheese=True, reached_corner=False),
            SimpleNamespace(ret=0.0, length=8, reached_cheese=False, reached_corner=True),
            SimpleNamespace(ret=10.0, length=6, reached_cheese=True, reached_corner=True)]
    module = SimpleNamespace(episode_rates=PPOModule.episode_rates)
    sums = PPOModule.episode_sums(module, maze)
    assert sums == [20.0, 18, 2, 2, 3]
    assert PPOModule.episode_metrics(module, sums) == {
        "episode/return": 20 / 3, "episode/length": 6.0, "episode/cheese_rate": 2 / 3,
        "episode/corner_rate": 2 / 3, "episode/count": 3}
    grid = [SimpleNamespace(ret=0.9, length=5, success=True, truncated=False),
            SimpleNamespace(ret=0.0, length=64, success=False, truncated=True)]
    module = SimpleNamespace(episode_rates=PPOMiniGridModule.episode_rates)
    assert PPOModule.episode_metrics(module, PPOModule.episode_sums(module, grid)) == {
        "episode/return": 0.45, "episode/length": 34.5, "episode/success_rate": 0.5,
        "episode/truncated_rate": 0.5, "episode/count": 2}
    assert PPOModule.episode_metrics(module, PPOModule.episode_sums(module, [])) == {}
