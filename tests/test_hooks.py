"""models.hooks on ImpalaPolicy: every activation name resolves and caches what a plain-torch forward
of the same weights computes; each edit does what it says on chosen channels and cells; hooks leave
no trace (also when the block raises); batches, inference mode and autograd; close-name errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shardlab.models.hooks import (HookError, HookPoint, add, clamp, compose, hook_names, hooked, patch, replace,
                          run_with_cache, set_value)
from shardlab.models.impala import ImpalaPolicy
from plain_impala import plain_forward

pytestmark = pytest.mark.usefixtures("one_thread")

LAYER = "embedder.block2.res1.resadd_out"
POINTS = tuple(f"embedder.block{b}.{p}" for b in (1, 2, 3) for p in (
    "maxpool_out", *(f"res{r}.{q}" for r in (1, 2) for q in ("relu1_out", "relu2_out", "resadd_out"))
)) + ("embedder.relu3_out", "embedder.relufc_out")


@pytest.fixture(scope="module")
def model() -> ImpalaPolicy:
    torch.manual_seed(0)
    return ImpalaPolicy(scale=1, image_size=15).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(4, 3, 15, 15, generator=torch.Generator().manual_seed(1))


def _no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_every_hook_point_resolves_and_caches_the_plain_forward_value(model, x):
    names = hook_names(model)
    points = [name for name, m in model.named_modules() if isinstance(m, HookPoint)]
    assert tuple(points) == POINTS and set(POINTS) <= set(names)
    assert names.index("embedder.block1.maxpool_out") < names.index(LAYER) < names.index("embedder.relufc_out")
    modules = ["embedder.block1.conv", "embedder.block2.res1.conv1", "embedder.fc", "fc_policy"]
    with torch.no_grad():
        (logits, value), acts = run_with_cache(model, x, [*POINTS, *modules])
        ref_logits, ref_value, ref = plain_forward(model, x)
    for name in [*POINTS, *modules]:
        torch.testing.assert_close(acts[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(value, ref_value)
    assert acts[LAYER].shape == (4, 32, 4, 4) and acts["embedder.relufc_out"].shape == (4, 256)


def test_channels_last_model_caches_the_same_values(model, x):
    fast = ImpalaPolicy(scale=1, image_size=15).eval()
    fast.load_state_dict(model.state_dict())
    fast = fast.to(memory_format=torch.channels_last)
    with torch.no_grad():
        _, plain = run_with_cache(model, x, [LAYER])
        _, cached = run_with_cache(fast, x.contiguous(memory_format=torch.channels_last), [LAYER])
    torch.testing.assert_close(cached[LAYER], plain[LAYER], rtol=1e-4, atol=1e-5)


def test_adding_zero_leaves_outputs_exactly_unchanged(model, x):
    vector = torch.randn(32, 4, 4)
    with torch.no_grad():
        before = model(x)
        with hooked(model, edits={name: add(vector if name == LAYER else torch.tensor(1.0), 0.0)
                                  for name in POINTS}):
            after = model(x)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_add_changes_downstream_like_the_plain_forward(model, x):
    vector = torch.randn(32, 4, 4)
    with torch.no_grad():
        with hooked(model, edits={LAYER: add(vector, -2.0)}, cache=[LAYER]) as acts:
            logits, _ = model(x)
        ref_logits, _, ref = plain_forward(model, x, override={LAYER: lambda a: a - 2.0 * vector})
    torch.testing.assert_close(acts[LAYER], ref[LAYER])  # the cache holds the edited value
    torch.testing.assert_close(logits, ref_logits)


def _original_and_edited(model, x, edit, name=LAYER):
    with torch.no_grad():
        _, original = run_with_cache(model, x, [name])
        _, edited = run_with_cache(model, x, [name], edits={name: edit})
    return original[name], edited[name]


@pytest.mark.parametrize("channels", [5, [3, 7]])
@pytest.mark.parametrize("cells", [None, [(0, 1), (2, 3)]])
def test_set_value_sets_exactly_the_chosen_channels_and_cells(model, x, channels, cells):
    original, edited = _original_and_edited(model, x, set_value(5.5, channels, cells))
    chosen = torch.zeros_like(original, dtype=torch.bool)
    for c in [channels] if isinstance(channels, int) else channels:
        if cells is None:
            chosen[:, c] = True
        else:
            for row, col in cells:
                chosen[:, c, row, col] = True
    assert torch.all(edited[chosen] == 5.5)
    assert torch.equal(edited[~chosen], original[~chosen])


def test_set_value_on_cells_of_all_channels(model, x):
    original, edited = _original_and_edited(model, x, set_value(0.0, None, [(1, 1)]))
    assert torch.all(edited[:, :, 1, 1] == 0)
    mask = torch.ones_like(original, dtype=torch.bool)
    mask[:, :, 1, 1] = False
    assert torch.equal(edited[mask], original[mask])


def test_clamp_clamps_only_the_chosen_entries(model, x):
    original, edited = _original_and_edited(model, x, clamp(-0.1, 0.1, channels=[2, 4], cells=[(0, 0), (3, 3)]))
    for c in (2, 4):
        for row, col in ((0, 0), (3, 3)):
            assert torch.equal(edited[:, c, row, col], original[:, c, row, col].clamp(-0.1, 0.1))
    untouched = torch.ones_like(original, dtype=torch.bool)
    for c in (2, 4):
        for row, col in ((0, 0), (3, 3)):
            untouched[:, c, row, col] = False
    assert torch.equal(edited[untouched], original[untouched])
    assert edited.abs().max() > 0.1  # others keep their range


def test_replace_and_patch(model, x):
    value = torch.randn(32, 4, 4)
    _, edited = _original_and_edited(model, x, replace(value))
    assert torch.equal(edited, value.expand(4, -1, -1, -1))
    source = torch.randn(4, 32, 4, 4)
    original, edited = _original_and_edited(model, x, patch(source, channels=[1, 30], cells=[(2, 1)]))
    assert torch.equal(edited[:, [1, 30], 2, 1], source[:, [1, 30], 2, 1])
    mask = torch.ones_like(original, dtype=torch.bool)
    mask[:, [1, 30], 2, 1] = False
    assert torch.equal(edited[mask], original[mask])
    # a batch-1 source is broadcast to every input
    one = torch.randn(1, 32, 4, 4)
    _, edited = _original_and_edited(model, x, patch(one, channels=3))
    assert torch.equal(edited[:, 3], one[:, 3].expand(4, -1, -1))


def test_compose_applies_edits_in_order(model, x):
    original, edited = _original_and_edited(model, x, compose(set_value(1.0, 0), add(torch.tensor(2.0), 1.0)))
    assert torch.all(edited[:, 0] == 3.0)
    torch.testing.assert_close(edited[:, 1:], original[:, 1:] + 2.0)


def test_edits_on_modules_and_flat_layers(model, x):
    with torch.no_grad():
        with hooked(model, edits={"embedder.relufc_out": set_value(0.0)}):
            logits, value = model(x)
    assert torch.allclose(logits, model.fc_policy.bias.expand(4, -1))
    assert torch.allclose(value, model.fc_value.bias.expand(4))
    with torch.no_grad():
        _, acts = run_with_cache(model, x, ["fc_policy"], edits={"fc_policy": replace(torch.zeros(15))})
    assert torch.equal(acts["fc_policy"], torch.zeros(4, 15))


def test_hooks_leave_no_trace(model, x):
    with torch.no_grad():
        before = model(x)[0]
        with hooked(model, edits={LAYER: set_value(9.0)}, cache=POINTS):
            assert not _no_hooks(model)
        assert _no_hooks(model)
        assert torch.equal(model(x)[0], before)


def test_hooks_are_removed_when_the_block_raises(model, x):
    with pytest.raises(RuntimeError, match="boom"):
        with hooked(model, edits={LAYER: set_value(9.0)}, cache=[LAYER]):
            raise RuntimeError("boom")
    assert _no_hooks(model)
    with pytest.raises(ValueError):
        with hooked(model, edits={LAYER: lambda a: (_ for _ in ()).throw(ValueError("edit failed"))}):
            model(x)  # an edit raising inside the forward
    assert _no_hooks(model)


def test_unknown_name_gives_close_names_and_registers_nothing(model):
    with pytest.raises(HookError) as error:
        with hooked(model, edits={LAYER: set_value(1.0)}, cache=["embedder.block2.res1.resad_out"]):
            pass
    message = str(error.value)
    assert "embedder.block2.res1.resad_out" in message and "did you mean embedder.block2.res1.resadd_out" in message
    assert isinstance(error.value, KeyError) and len(message.splitlines()) == 1
    assert _no_hooks(model)  # the hook registered before the bad name is gone too
    with pytest.raises(HookError, match="hook_names"):
        with hooked(model, cache=["nothing_like_it"]):
            pass
    for name in ("embedder.fc.weight", "", "embedder..fc", "embedder.block9.conv"):  # not modules
        with pytest.raises(HookError):
            with hooked(model, cache=[name]):
                pass


def test_batch_entries_are_edited_and_cached_independently(model, x):
    source = torch.randn(4, 32, 4, 4)
    with torch.no_grad():
        _, batch = run_with_cache(model, x, [LAYER, "fc_policy"], edits={LAYER: patch(source, 5)})
        for i in range(4):
            _, single = run_with_cache(model, x[i:i + 1], [LAYER, "fc_policy"],
                                       edits={LAYER: patch(source[i:i + 1], 5)})
            torch.testing.assert_close(batch[LAYER][i], single[LAYER][0])
            torch.testing.assert_close(batch["fc_policy"][i], single["fc_policy"][0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("edit", [set_value(2.0, [1], [(0, 0)]), clamp(0.0, 0.5, 3), patch(torch.zeros(1, 32, 4, 4), 2),
                                  add(torch.ones(32, 4, 4), 0.5), replace(torch.zeros(32, 4, 4))])
def test_edits_work_under_inference_mode(model, x, edit):
    with torch.no_grad():
        expected, _ = run_with_cache(model, x, [], edits={LAYER: edit})
    with torch.inference_mode():
        out, acts = run_with_cache(model, x, [LAYER], edits={LAYER: edit})
    assert torch.equal(out[0], expected[0]) and acts[LAYER].is_inference()


def test_gradients_flow_through_edits_and_caches_are_detached(model, x):
    vector = torch.zeros(32, 4, 4, requires_grad=True)
    with hooked(model, edits={LAYER: compose(add(vector, 3.0), set_value(0.0, 0))}, cache=[LAYER]) as acts:
        logits, _ = model(x)
    logits[:, 2].sum().backward()
    assert not acts[LAYER].requires_grad
    # the same derivative through the plain forward: d/d(vector) = 3 · d/d(activation), 0 on channel 0
    activation_grad = {}

    def keep(a):
        a = a.detach().requires_grad_(True)
        activation_grad["a"] = a
        b = a.clone()
        b[:, 0] = 0.0
        return b

    ref_logits, _, _ = plain_forward(model, x, override={LAYER: keep})
    ref_logits[:, 2].sum().backward()
    expected = 3.0 * activation_grad["a"].grad.sum(0)
    torch.testing.assert_close(vector.grad, expected, rtol=1e-4, atol=1e-7)
    assert torch.all(vector.grad[0] == 0)
    model.zero_grad(set_to_none=True)


def test_channels_may_be_numpy_or_torch_integers(model, x):
    for channel in (np.int64(5), torch.tensor(5), [np.int64(5)]):
        original, edited = _original_and_edited(model, x, set_value(7.0, channel, [(1, 2)]))
        assert torch.all(edited[:, 5, 1, 2] == 7.0)
        assert torch.equal(edited[:, 4], original[:, 4])


def test_hookpoint_fast_path_still_runs_global_pre_and_backward_hooks(model, x):
    """HookPoint skips nn.Module.__call__ only while no hook of any kind could fire."""
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, inputs, output: seen.append(type(module).__name__))
    try:
        model(x)
    finally:
        handle.remove()
    assert seen.count("HookPoint") == sum(isinstance(m, HookPoint) for m in model.modules())
    point = model.get_submodule("embedder.block2.res1.resadd_out")
    calls = []
    handles = [point.register_forward_pre_hook(lambda module, inputs: calls.append("pre")),
               point.register_full_backward_hook(lambda module, grad_in, grad_out: calls.append("backward"))]
    try:
        logits, _ = model(x.clone().requires_grad_(True))
        logits.sum().backward()
    finally:
        for h in handles:
            h.remove()
    assert calls == ["pre", "backward"]
    assert not point._forward_pre_hooks and not point._backward_hooks
