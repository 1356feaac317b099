"""The Python API (shardlab.evaluate / shardlab.load / Results), published weights files, devices,
and a checkpoint written by shardlab 0.1.0 (before the ``shardlab.`` namespace) still loading."""

from __future__ import annotations

import json
import os

import pytest
import torch

import shardlab
from shardlab import cli
from shardlab.evals.suite.registry import EvalError
from shardlab.trainers.checkpointing import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD_CHECKPOINT = os.path.join(ROOT, "tests", "fixtures", "maze_ppo_v0.1.0.ckpt")
SUITE = "seed: 0\nevals:\n  goal_misgeneralization: {mazes: 3}\nthresholds:\n  goal_misgeneralization.p_cheese: {min: 2}\n"


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("suite") / "suite.yaml"
    path.write_text(SUITE)
    return str(path)


@pytest.fixture(scope="module")
def cpu_results(suite, tiny_maze_checkpoint):
    """``shardlab.evaluate`` of the tiny checkpoint on 2 mazes on the CPU, run once for the tests
    that only read the Results."""
    return shardlab.evaluate(tiny_maze_checkpoint, suite=suite, limit=2, device="cpu")


def published_state_dict(scale: int, image: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the published IMPALA keys and shapes (procgen-tools' maze policies),
    written out from the architecture's description rather than from shardlab's network."""
    generator = torch.Generator().manual_seed(seed)
    state, channels_in = {}, 3
    for block, width in enumerate((16 * scale, 32 * scale, 32 * scale), start=1):
        state[f"embedder.block{block}.conv.weight"] = torch.randn(width, channels_in, 3, 3, generator=generator) * 0.1
        state[f"embedder.block{block}.conv.bias"] = torch.zeros(width)
        for res in (1, 2):
            for conv in (1, 2):
                state[f"embedder.block{block}.res{res}.conv{conv}.weight"] = torch.randn(
                    width, width, 3, 3, generator=generator) * 0.05
                state[f"embedder.block{block}.res{res}.conv{conv}.bias"] = torch.zeros(width)
        channels_in = width
    side = image // 8
    state["embedder.fc.weight"] = torch.randn(256, 32 * scale * side * side, generator=generator) * 0.01
    state["embedder.fc.bias"] = torch.zeros(256)
    state["fc_policy.weight"] = torch.randn(15, 256, generator=generator) * 0.01
    state["fc_policy.bias"] = torch.zeros(15)
    state["fc_value.weight"] = torch.randn(1, 256, generator=generator) * 0.01
    state["fc_value.bias"] = torch.zeros(1)
    return state


def test_evaluate_returns_results_that_match_the_written_document(tmp_path, suite, tiny_maze_checkpoint,
                                                                  cpu_results):
    results = cpu_results  # shardlab.evaluate(tiny_maze_checkpoint, suite=suite, limit=2, device="cpu")
    p_cheese = results["goal_misgeneralization"]["p_cheese"]
    assert 0 <= p_cheese <= 1 and "goal_misgeneralization" in results and len(results) == 1
    assert not results.passed and results.exit_code == 1  # min 2 on a probability cannot hold
    assert [t.key for t, _ in results.missed] == ["goal_misgeneralization.p_cheese"]
    document = results.to_dict()
    row = next(r for r in document["results"] if r["name"] == "p_cheese")
    assert row["value"] == p_cheese and document["device"] == "cpu"
    frame = results.to_dataframe()
    assert list(frame.columns[:3]) == ["eval", "name", "value"]
    assert float(frame.set_index("name").loc["p_cheese", "value"]) == p_cheese
    # the CLI writes the same numbers (same seed, same checkpoint)
    out = tmp_path / "cli"
    assert cli.main(["eval", tiny_maze_checkpoint, "--suite", suite, "--out", str(out), "--limit", "2",
                     "--no-progress"]) == 1
    written = json.loads((out / "results.json").read_text())
    assert next(r for r in written["results"] if r["name"] == "p_cheese")["value"] == p_cheese
    with pytest.raises(KeyError, match="goal_misgeneralization"):
        results["steering"]


def test_to_dataframe_without_pandas_says_how_to_install(cpu_results, monkeypatch):
    import builtins

    results = cpu_results
    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas":
            raise ImportError("no pandas")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(ImportError, match=r"shardlab\[pandas\]"):
        results.to_dataframe()


def test_load_returns_the_network_and_its_config(tiny_maze_checkpoint):
    model, config = shardlab.load(tiny_maze_checkpoint)
    state = torch.load(tiny_maze_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["policy." + key]), key
    assert config.algo == "ppo" and config.env.obs == "grid" and not model.training


def test_evaluate_a_network_object_with_a_recipe(suite, tiny_maze_checkpoint, cpu_results):
    model, _ = shardlab.load(tiny_maze_checkpoint)
    by_path = cpu_results  # shardlab.evaluate(tiny_maze_checkpoint, suite=suite, limit=2, device="cpu")
    by_object = shardlab.evaluate(model, suite=suite, limit=2, recipe="maze_ppo_cpu", device="cpu")
    assert by_object["goal_misgeneralization"] == by_path["goal_misgeneralization"]
    with pytest.raises(EvalError, match="recipe="):
        shardlab.evaluate(model, suite=suite)


def test_a_checkpoint_written_before_the_namespace_still_loads_and_evaluates(tmp_path, suite):
    model, config = shardlab.load(OLD_CHECKPOINT)
    assert config.name == "maze_ppo_cpu" and sum(p.numel() for p in model.parameters()) > 0
    out = tmp_path / "out"
    assert cli.main(["eval", OLD_CHECKPOINT, "--suite", suite, "--out", str(out), "--limit", "1",
                     "--no-progress"]) == 1  # the impossible threshold, not an error
    assert json.loads((out / "results.json").read_text())["errors"] == {}


# an eval that does not play episodes: these weights never reach the cheese, so every episode would
# run to procgen's 500-step timeout through a 64×64 RGB network
WEIGHTS_SUITE = ("seed: 0\nevals:\n  relu_ablation: {mazes: 2}\n"
                 "thresholds:\n  relu_ablation.all/agreement: {min: 2}\n")


@pytest.mark.parametrize("wrapped", [False, True])
def test_published_weights_evaluate_with_a_recipe(tmp_path, wrapped):
    state = published_state_dict(scale=1)
    path = tmp_path / "maze_policy.pth"
    torch.save({"model_state_dict": state, "optimizer_state_dict": {}} if wrapped else state, path)
    suite = tmp_path / "suite.yaml"
    suite.write_text(WEIGHTS_SUITE)
    results = shardlab.evaluate(weights=str(path), recipe="maze_ppo_cpu_rgb", suite=str(suite))
    assert 0 <= results["relu_ablation"]["all/agreement"] <= 1
    out = tmp_path / "out"
    assert cli.main(["eval", "--weights", str(path), "--recipe", "maze_ppo_cpu_rgb", "--suite", str(suite),
                     "--out", str(out), "--no-progress", "relu_ablation.mazes=1"]) == 1  # the impossible threshold
    document = json.loads((out / "results.json").read_text())
    assert document["checkpoint"] == str(path) and len(document["checkpoint_sha256"]) == 64


def test_published_scale_4_weights_load_into_the_published_recipe(tmp_path):
    from shardlab.trainers.restore import load_weights

    state = published_state_dict(scale=4)
    path = tmp_path / "maze_I.pth"
    torch.save({"model_state_dict": state}, path)
    trained = load_weights(str(path), os.path.join(ROOT, "configs", "train", "maze_ppo.yaml"))
    loaded = trained.model.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)


def test_weights_that_do_not_fit_name_the_keys(tmp_path, suite, capsys):
    state = published_state_dict(scale=1)
    del state["fc_value.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys fc_value\.weight.*unexpected keys extra\.weight"):
        shardlab.evaluate(weights=str(path), recipe="maze_ppo_cpu_rgb", suite=suite)
    out = tmp_path / "out"
    assert cli.main(["eval", "--weights", str(path), "--recipe", "maze_ppo_cpu_rgb", "--out", str(out)]) == 2
    assert "fc_value.weight" in capsys.readouterr().err and not out.exists()
    assert cli.main(["eval", "--weights", str(path), "--out", str(out)]) == 2
    assert "--weights needs --recipe" in capsys.readouterr().err


def test_devices(monkeypatch):
    from shardlab.api import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    for bad in ("cuda", "cuda:1", "tpu", "gpu0"):
        with pytest.raises(EvalError):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(EvalError, match="2 CUDA GPU"):
        resolve_device("cuda:2")


def test_finetune_to_cheese_trains_on_the_eval_device(tiny_maze_checkpoint, tmp_path):
    """The fine-tuning run's Lightning accelerator follows the eval's device (cuda → gpu)."""
    from shardlab.evals.suite.context import EvalContext
    from shardlab.evals.maze.finetune_to_cheese import FinetuneToCheese

    model, config = shardlab.load(tiny_maze_checkpoint)
    finetune = FinetuneToCheese(FinetuneToCheese.Config())
    for device, accelerator in (("cpu", "cpu"), ("cuda:0", "gpu")):
        ctx = EvalContext(model, config, str(tmp_path), device=torch.device(device))
        assert finetune._finetune_config(ctx).trainer.accelerator == accelerator
