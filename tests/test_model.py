"""IMPALA policy: parameter count and published key names, shapes, memory formats, and loading
published-style weight files with models.weights.load_policy_weights."""

from __future__ import annotations

import re

import pytest
import torch

from shardlab.models.impala import NUM_ACTIONS, ImpalaPolicy, preprocess
from shardlab.models.weights import WeightsError, load_policy_weights, read_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def published_keys() -> set[str]:
    keys = set()
    for block in (1, 2, 3):
        prefix = f"embedder.block{block}"
        keys |= {f"{prefix}.conv.weight", f"{prefix}.conv.bias"}
        for res in (1, 2):
            for conv in (1, 2):
                keys |= {f"{prefix}.res{res}.conv{conv}.weight", f"{prefix}.res{res}.conv{conv}.bias"}
    for head in ("embedder.fc", "fc_policy", "fc_value"):
        keys |= {f"{head}.weight", f"{head}.bias"}
    return keys


def fresh(scale: int, seed: int, **kwargs) -> ImpalaPolicy:
    torch.manual_seed(seed)
    return ImpalaPolicy(scale=scale, **kwargs).eval()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 64, 64, generator=generator)


# -- architecture -----------------------------------------------------------------------------------

def test_scale4_parameter_count_and_published_keys():
    with torch.device("meta"):  # shapes only: skips the (slow) orthogonal init of 3.6M weights
        model = ImpalaPolicy(scale=4)
    assert sum(p.numel() for p in model.parameters()) == 3_653_136
    state = model.state_dict()
    assert set(state) == published_keys()
    for key in ("embedder.block1.conv.weight", "embedder.block2.res1.conv1.weight", "embedder.fc.weight",
                "fc_policy.weight", "fc_value.weight"):
        assert key in state
    assert tuple(state["embedder.block1.conv.weight"].shape) == (64, 3, 3, 3)
    assert tuple(state["embedder.block3.res2.conv2.weight"].shape) == (128, 128, 3, 3)
    assert tuple(state["embedder.fc.weight"].shape) == (256, 128 * 8 * 8)
    assert tuple(state["fc_policy.weight"].shape) == (15, 256)
    assert tuple(state["fc_value.weight"].shape) == (1, 256)


def test_scale1_channel_widths():
    with torch.device("meta"):
        model = ImpalaPolicy(scale=1)
    e = model.embedder
    assert (e.block1.conv.out_channels, e.block2.conv.out_channels, e.block3.conv.out_channels) == (16, 32, 32)
    assert e.block2.conv.in_channels == 16 and e.block3.conv.in_channels == 32
    assert e.block2.res1.conv1.in_channels == e.block2.res1.conv1.out_channels == 32
    assert e.fc.in_features == 32 * 8 * 8 and e.fc.out_features == 256
    assert set(model.state_dict()) == published_keys()


@pytest.mark.parametrize("scale", [1, 2])
def test_output_shapes_64(scale, batch):
    logits, value = fresh(scale, 0)(batch)
    assert logits.shape == (3, NUM_ACTIONS) == (3, 15)
    assert value.shape == (3,)
    assert torch.isfinite(logits).all() and torch.isfinite(value).all()


def test_image_size_25():
    model = ImpalaPolicy(scale=1, image_size=25)
    assert model.embedder.fc.in_features == 32 * 4 * 4  # 25 → 13 → 7 → 4
    logits, value = model(torch.rand(2, 3, 25, 25))
    assert logits.shape == (2, 15) and value.shape == (2,)
    with pytest.raises(RuntimeError):  # a 64×64 image does not fit the 25×25 fc layer
        model(torch.rand(2, 3, 64, 64))


def test_heads_match_forward(batch):
    model = fresh(1, 3)
    logits, value = model(batch)
    logits2, value2 = model.heads(model.embedder(batch))
    torch.testing.assert_close(logits, logits2, rtol=0, atol=0)
    torch.testing.assert_close(value, value2, rtol=0, atol=0)


def test_channels_last_matches_contiguous(batch):
    model = fresh(1, 4)
    with torch.no_grad():
        want = model(batch)
        last = ImpalaPolicy(scale=1).eval()
        last.load_state_dict(model.state_dict())
        last = last.to(memory_format=torch.channels_last)
        assert last.embedder.block1.conv.weight.is_contiguous(memory_format=torch.channels_last)
        got = last(batch.contiguous(memory_format=torch.channels_last))
    # atol 1e-5 plus fp32 rounding relative to the size of the output (values reach ~10)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    # the state_dict of a channels_last model loads into a contiguous one with the same outputs
    again = ImpalaPolicy(scale=1).eval()
    again.load_state_dict(last.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again(batch)[0], want[0], rtol=1e-5, atol=1e-5)


def test_preprocess():
    obs = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    x = preprocess(obs, channels_last=True)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert preprocess(obs, channels_last=False).is_contiguous()
    torch.testing.assert_close(x, obs.permute(0, 3, 1, 2).float() / 255.0, rtol=0, atol=0)


# -- published weight files ---------------------------------------------------------------------------

def _save(obj, path):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "model_state_dict"])
def test_load_published_weights_reproduces_outputs(tmp_path, batch, wrapped):
    source = fresh(1, 10)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    obj = ({"model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 5e-4}]}}
           if wrapped else state)
    path = _save(obj, tmp_path / "policy.pth")
    target = fresh(1, 11)
    with torch.no_grad():
        assert not torch.equal(target(batch)[0], source(batch)[0])
        assert load_policy_weights(target, path) is target
        for got, want in zip(target(batch), source(batch)):
            assert torch.equal(got, want)


def test_load_into_channels_last_model(tmp_path, batch):
    source = fresh(1, 12)
    path = _save(source.state_dict(), tmp_path / "policy.pth")
    target = fresh(1, 13).to(memory_format=torch.channels_last)
    load_policy_weights(target, path)
    with torch.no_grad():
        torch.testing.assert_close(target(batch)[1], source(batch)[1], rtol=1e-5, atol=1e-5)


def test_missing_key_is_named(tmp_path):
    state = fresh(1, 0).state_dict()
    del state["embedder.block2.res1.conv1.weight"]
    path = _save(state, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"missing keys embedder\.block2\.res1\.conv1\.weight") as info:
        load_policy_weights(fresh(1, 1), path)
    assert str(path) in str(info.value)


def test_extra_key_is_named(tmp_path):
    state = fresh(1, 0).state_dict()
    state["fc_aux.weight"] = torch.zeros(3, 256)
    path = _save({"model_state_dict": state}, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"unexpected keys fc_aux\.weight"):
        load_policy_weights(fresh(1, 1), path)


def test_wrong_scale_is_a_shape_mismatch(tmp_path):
    path = _save(fresh(1, 0).state_dict(), tmp_path / "scale1.pth")
    with torch.device("meta"):  # a scale-4 model without the slow orthogonal init
        model = ImpalaPolicy(scale=4)
    model = model.to_empty(device="cpu")
    for p in model.parameters():
        torch.nn.init.normal_(p.data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError) as info:
        load_policy_weights(model, path)
    message = str(info.value)
    assert "shape mismatch" in message
    assert re.search(r"embedder\.block1\.conv\.weight \(16, 3, 3, 3\) vs model \(64, 3, 3, 3\)", message), message
    assert "model.scale" in message
    assert "\n" not in message
    # nothing was loaded
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_policy_weights(fresh(1, 0), tmp_path / "nope.pth")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_file(tmp_path, damage):
    path = tmp_path / "bad.pth"
    if damage == "truncated":
        torch.save(fresh(1, 0).state_dict(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"this is not a torch file\x00\x01" * 50)
    else:
        path.write_bytes(b"")
    with pytest.raises(WeightsError, match="corrupt") as info:
        load_policy_weights(fresh(1, 0), path)
    assert str(path) in str(info.value)


def test_file_without_state_dict(tmp_path):
    path = _save({"model_state_dict": {"a": 1}}, tmp_path / "odd.pth")
    with pytest.raises(WeightsError, match="no state_dict"):
        read_state_dict(path)
    path = _save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="no state_dict"):
        read_state_dict(path)


def test_load_shardlab_lightning_checkpoint(tmp_path, batch):
    """read_state_dict says a shardlab/Lightning checkpoint ({"state_dict": {"policy.…": …}}) loads.
    A PPOModule's state_dict also holds the torchrl loss's buffers and its copies of the heads
    ("loss.clip_epsilon", "loss.actor_network.module.0.module.weight", ...), which must be ignored."""
    from shardlab.trainers.config import build_config, to_dict
    from shardlab.trainers.ppo import PPOModule

    cfg = build_config({"env": {"num_envs": 2}, "ppo": {"num_steps": 4, "minibatch_size": 8}})
    module = PPOModule(to_dict(cfg))
    path = _save({"state_dict": module.state_dict(), "shardlab": {"format": 1}}, tmp_path / "last.ckpt")
    target = fresh(1, 99)
    try:
        load_policy_weights(target, path)
    except WeightsError as exc:
        pytest.fail("BUG models/weights.py read_state_dict: keeps non-'policy.' keys of a Lightning "
                    f"checkpoint, so a shardlab checkpoint cannot be loaded: {exc}")
    policy = module.policy.eval()
    with torch.no_grad():
        torch.testing.assert_close(target(batch)[0], policy(batch)[0], rtol=0, atol=1e-5)
