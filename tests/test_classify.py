"""algo: classify — data sources and splits, the classifier, config errors, training with exact
resume and 2-process DDP, the sparsity eval on classifier and maze checkpoints, and
scripts/compare_sparse.py."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from shardlab import cli as shardlab
from shardlab.models.classifier import Classifier
from shardlab.trainers.checkpointing import load_checkpoint
from shardlab.trainers.classify import stream_indices
from shardlab.trainers.config import ConfigError, build_config, load_config
from shardlab.trainers.datasets import DataError, load_folder, load_npz, load_splits
from tests.tiny_suites import assert_rows_have_intervals

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DENSE = os.path.join(ROOT, "configs", "train", "digits_dense.yaml")
KWTA = os.path.join(ROOT, "configs", "train", "digits_kwta.yaml")
MAZE_SPARSE = os.path.join(ROOT, "configs", "train", "maze_ppo_cpu_sparse.yaml")
SUITE = os.path.join(ROOT, "configs", "evals", "sparsity.yaml")
TINY = ["optim.eval_every=512", "trainer.checkpoint_every=512", "trainer.progress_bar=false"]


def train(recipe: str, run_dir, *overrides: str) -> str:
    assert shardlab.main(["train", recipe, *TINY, *overrides, "--run-dir", str(run_dir)]) == 0
    return str(run_dir / "checkpoints" / "last.ckpt")


# -- data -------------------------------------------------------------------------------------------

def test_digits_split_is_seeded_and_stratified():
    data = build_config({"algo": "classify"}).data
    splits = load_splits(data)
    sizes = {k: len(v) for k, v in splits.y.items()}
    assert sum(sizes.values()) == 1797 and sizes["test"] == 360 and sizes["val"] == 180
    assert splits.shape == [1, 8, 8] and splits.classes == [str(i) for i in range(10)]
    assert 0 <= splits.x["train"].min() and splits.x["train"].max() <= 1
    assert torch.bincount(splits.y["test"]).min() >= 34  # every class, in proportion
    again = load_splits(data)
    assert torch.equal(again.x["test"], splits.x["test"])
    other = load_splits(build_config({"algo": "classify", "data": {"split_seed": 1}}).data)
    assert not torch.equal(other.y["test"], splits.y["test"])


def test_npz_source_scales_and_maps_labels(tmp_path):
    path = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (30, 6, 5), dtype=np.uint8), y=np.array(["cat", "dog", "eel"] * 10))
    x, y, classes = load_npz(str(path))
    assert x.shape == (30, 1, 6, 5) and x.dtype == np.float32 and x.max() <= 1
    assert classes == ["cat", "dog", "eel"] and set(y.tolist()) == {0, 1, 2}
    cfg = build_config({"algo": "classify", "data": {"source": "npz", "path": str(path), "val_fraction": 0.2}})
    assert load_splits(cfg.data).shape == [1, 6, 5]


@pytest.mark.parametrize("content, message", [
    ({"images": np.zeros((4, 2))}, "has no array named x, y"),
    ({"x": np.zeros((4, 2)), "y": np.zeros(3, dtype=np.int64)}, "one label per image"),
    ({"x": np.zeros((4, 2)), "y": np.zeros(4)}, "labels must be integers or strings"),
    ({"x": np.zeros((4, 2, 2, 2, 2)), "y": np.zeros(4, dtype=np.int64)}, r"expected \(N, D\)"),
])
def test_bad_npz_files(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **content)
    with pytest.raises(DataError, match=message):
        load_npz(str(path))


def test_missing_and_corrupt_npz(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_npz(str(tmp_path / "none.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="corrupt or not a .npz"):
        load_npz(str(tmp_path / "junk.npz"))


def test_image_folder_source(tmp_path):
    from PIL import Image

    for label, value in (("a", 0), ("b", 255)):
        os.makedirs(tmp_path / label)
        for i in range(3):
            Image.new("RGB", (6, 4), (value, i * 40, 0)).save(tmp_path / label / f"{i}.png")
    (tmp_path / "a" / "notes.txt").write_text("skipped")
    x, y, classes = load_folder(str(tmp_path), channels=1)
    assert x.shape == (6, 1, 4, 6) and classes == ["a", "b"] and y.tolist() == [0, 0, 0, 1, 1, 1]
    x, _, _ = load_folder(str(tmp_path), channels=3, image_size=5)
    assert x.shape == (6, 3, 5, 5) and abs(x[3, 0].mean() - 1.0) < 1e-6
    Image.new("L", (3, 3)).save(tmp_path / "b" / "small.png")
    with pytest.raises(DataError, match="set data.image_size"):
        load_folder(str(tmp_path))
    (tmp_path / "b" / "small.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="cannot be read"):
        load_folder(str(tmp_path))


@pytest.mark.parametrize("override, message", [
    ("data.source=csv", "data.source must be one of"),
    ("data.source=npz", "needs data.path"),
    ("data.test_fraction=0.9", "their sum < 1"),
    ("model.arch=rnn", "model.arch must be one of"),
    ("model.sparse_layers=[act9]", "match none of this network's activations"),
    ("optim.lr_schedule=step", "optim.lr_schedule must be"),
    ("model.l1_coef=0.1", "only acts with model.activation=l1"),
    ("optim.batchsize=3", "did you mean optim.batch_size"),
    ("model.weight_density=0", "model.weight_density must be in"),
])
def test_classify_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(KWTA, [override])


def test_missing_data_file_is_a_one_line_error(tmp_path, capsys):
    code = shardlab.main(["train", DENSE, "data.source=npz", f"data.path={tmp_path}/none.npz",
                          "--run-dir", str(tmp_path / "run")])
    assert code == 2 and "not found" in capsys.readouterr().err


# -- model and batches ------------------------------------------------------------------------------

def test_cnn_classifier_with_norm_and_sparse_layers():
    model = Classifier((1, 8, 8), 10, "cnn", channels=(4, 8), hidden=(16,), activation="kwta",
                       sparse_layers=["act1", "act3"], activation_options={"percent_on": 0.25}, norm=True)
    assert model.activation_sites == ["act1", "act2", "act3"]
    assert type(model.act2).__name__ == "ReLU" and type(model.act3).__name__ == "KWinners"
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)


def test_sparse_weights_keep_a_fixed_fan_in_and_stay_zero_through_training():
    torch.manual_seed(0)
    model = Classifier((1, 8, 8), 10, hidden=(32, 16), weight_density=0.25)
    assert (model.fc1.weight != 0).sum(1).tolist() == [16] * 32  # round(0.25 · 64) inputs per unit
    assert (model.fc2.weight != 0).sum(1).tolist() == [8] * 16
    assert (model.head.weight != 0).all()  # the output layer stays dense
    masks = {name: model.get_submodule(name).weight_mask.clone() for name in ("fc1", "fc2")}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.rand(8, 1, 8, 8)), torch.randint(0, 10, (8,))).backward()
        optimizer.step()
    for name, mask in masks.items():
        assert torch.equal(model.get_submodule(name).weight != 0, mask.bool()), name
    rebuilt = Classifier((1, 8, 8), 10, hidden=(32, 16), weight_density=0.25)  # another random mask
    rebuilt.load_state_dict(model.state_dict())  # the checkpoint's masks win
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(rebuilt(x), model(x))


def test_stream_indices_cover_every_sample_once_per_epoch():
    n, batch = 10, 4
    stream = torch.cat([stream_indices(step, batch, n, seed=3) for step in range(5)])
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:20].tolist()) == list(range(10))
    assert torch.equal(stream_indices(2, batch, n, seed=3), stream[8:12])  # resumable: a pure function of step


# -- training, resume, DDP, evals -------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny dense and k-WTA digits runs (1,024 samples) and a tiny sparse maze PPO run."""
    root = tmp_path_factory.mktemp("classify")
    return {
        "dense": train(DENSE, root / "dense", "trainer.total_steps=1024"),
        "kwta": train(KWTA, root / "kwta", "trainer.total_steps=1024"),
        "root": root,
    }


def test_training_writes_metrics_and_the_data_shape(runs):
    ckpt = load_checkpoint(runs["kwta"])
    assert ckpt["shardlab"]["kind"] == "classify" and ckpt["shardlab"]["samples"] == 1024
    assert ckpt["global_step"] == 16
    config = ckpt["hyper_parameters"]["config"]
    assert config["data"]["shape"] == [1, 8, 8] and config["data"]["num_classes"] == 10
    assert "model.act1.duty_cycle" in ckpt["state_dict"]
    rows = [json.loads(line) for line in open(runs["root"] / "kwta" / "metrics.jsonl")]
    assert [r["samples"] for r in rows] == [512, 1024]
    assert 0 <= rows[-1]["val/accuracy"] <= 1 and rows[-1]["val/accuracy"] > 0.3


def test_resume_matches_an_uninterrupted_run(tmp_path):
    # a constant learning rate: the cosine schedule depends on total_steps, which the resume extends
    straight = train(KWTA, tmp_path / "straight", "optim.lr_schedule=constant", "trainer.total_steps=2048")
    train(KWTA, tmp_path / "resumed", "optim.lr_schedule=constant", "trainer.total_steps=1024")
    assert shardlab.main(["resume", str(tmp_path / "resumed"), "trainer.total_steps=2048"]) == 0
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    expected = load_checkpoint(straight)
    assert resumed["global_step"] == expected["global_step"] == 32
    for key, value in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key


@pytest.mark.slow("ddp")
def test_ddp_two_cpu_processes(tmp_path, warm_python):
    # rank 0 forks from a warm interpreter (tests/warm_python.py); Lightning starts rank 1 afresh
    run_dir = tmp_path / "ddp"
    args = ["trainer.accelerator=cpu", "trainer.devices=2", *TINY]
    result = warm_python.run(["train", KWTA, *args, "trainer.total_steps=1024", "--run-dir", str(run_dir)], ROOT,
                             timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    # 2 ranks × 64 samples per optimizer step
    assert ckpt["global_step"] == 8 and ckpt["shardlab"]["samples"] == 1024
    assert ckpt["hyper_parameters"]["world_size"] == 2
    result = warm_python.run(["resume", str(run_dir), "trainer.total_steps=2048"], ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 16


def _metrics(out) -> dict[str, float]:
    document = json.loads((out / "results.json").read_text())
    return {row["name"]: row["value"] for row in document["results"]}


def test_sparsity_eval_on_a_classifier(runs, tmp_path):
    out = tmp_path / "eval"
    assert shardlab.main(["eval", runs["kwta"], "--suite", SUITE, "--out", str(out)]) == 0
    values = _metrics(out)
    assert_rows_have_intervals(json.loads((out / "results.json").read_text())["results"])
    assert values["density/act1"] == pytest.approx(142 / 1024)  # int(round(102.4) · 1.4) winners at test time
    assert 0 <= values["dead_fraction"] <= 1 and 0 < values["duty_entropy"] <= 1
    assert values["noise_accuracy/sigma=0"] == values["accuracy"]
    assert 0 <= values["noise_auc"] <= 1 and "class_selectivity/act2" in values
    pixel = [values[f"pixel_noise_accuracy/fraction={0.05 * i:g}"] for i in range(11)]
    assert pixel[0] == values["accuracy"] and values["pixel_noise_score"] == pytest.approx(sum(pixel) / 11)
    for png in ("density_per_layer.png", "noise_curve.png", "class_density.png"):
        assert (out / "sparsity" / png).stat().st_size > 1000


def test_pixel_noise_sets_exactly_the_fraction_of_values():
    from shardlab.evals.sparsity.sparsity import with_pixel_noise
    x = torch.zeros(5, 1, 8, 8)
    noisy = with_pixel_noise(x, 0.25, 0.75, torch.Generator().manual_seed(0))
    assert (noisy == 0.75).sum(dim=(1, 2, 3)).tolist() == [16] * 5 and (x == 0).all()
    assert torch.equal(with_pixel_noise(x, 0.0, 0.75, torch.Generator()), x)


def test_k_inference_factor_config_reaches_the_network_and_checks(tmp_path):
    from shardlab.models.classifier import build_classifier
    config = load_config(KWTA, ["model.k_inference_factor=1.5", "data.shape=[1,8,8]", "data.num_classes=10"])
    model = build_classifier(config).eval()
    assert model.act1.k_inference_factor == 1.5
    assert ((model.act1(torch.randn(3, 1024)) != 0).sum(1) == 153).all()  # int(round(1024 · 0.1) · 1.5)
    with pytest.raises(ConfigError, match="k_inference_factor"):
        load_config(KWTA, ["model.k_inference_factor=20"])


def test_sparsity_eval_on_a_sparse_maze_policy(tmp_path):
    ckpt = str(tmp_path / "maze" / "checkpoints" / "last.ckpt")
    assert shardlab.main(["train", MAZE_SPARSE, "env.num_envs=4", "ppo.num_steps=32", "ppo.minibatch_size=64",
                          "ppo.epochs=1", "trainer.total_steps=128", "trainer.progress_bar=false",
                          "--run-dir", str(tmp_path / "maze")]) == 0
    out = tmp_path / "eval"
    assert shardlab.main(["eval", ckpt, "--suite", SUITE, "--out", str(out), "--limit", "64"]) == 0
    values = _metrics(out)
    assert values["density/relufc_out"] == pytest.approx(round(256 * 0.2) / 256)
    assert values["density/block1.res1.relu2_out"] == pytest.approx(0.2, abs=0.005)  # k = round(C·H·W · 0.2)
    assert values["noise_agreement/sigma=0"] == values["noise_agreement/raw_action/sigma=0"] == 1.0
    assert 1 / 5 <= values["noise_agreement/majority_baseline"] <= 1  # of the 5 folded moves
    assert "accuracy" not in values and (out / "sparsity" / "noise_curve.png").exists()
    document = json.loads((out / "results.json").read_text())["results"]
    assert_rows_have_intervals(document)
    assert {row["unit"] for row in document if row["kind"] == "estimate"} == {"envs"}


def test_compare_sparse_script(runs, tmp_path, warm_python):
    """The comparison through the script's main() in this process; the script as a user runs it
    (its own process, forked from a warm interpreter, tests/warm_python.py; exit 2 on bad input) at
    the end."""
    import importlib.util

    script = os.path.join(ROOT, "scripts", "compare_sparse.py")
    spec = importlib.util.spec_from_file_location("compare_sparse", script)
    compare_sparse = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare_sparse)
    out = tmp_path / "compare"
    assert compare_sparse.main([runs["dense"], runs["kwta"], "--out", str(out), "--samples", "100",
                                "--noise-levels", "0", "0.5", "--noise-repeats", "1"]) == 0
    table = (out / "comparison.md").read_text()
    assert "| accuracy |" in table and "| density/act1 |" in table and "paired bootstrap over the same" in table
    both = json.loads((out / "comparison.json").read_text())
    assert both["sparse"]["density"] < both["dense"]["density"]
    assert (out / "density_per_layer.png").exists() and (out / "noise_curve.png").exists()
    result = warm_python.run_script(script, [runs["dense"], str(tmp_path / "none.ckpt"), "--out", str(out)], ROOT,
                                    timeout=300)
    assert result.returncode == 2 and "does not exist" in result.stderr
