"""The decision transformer: causal masking, padding invariance, hooks, the BC variant, missions."""

from __future__ import annotations

import pytest
import torch

from shardlab.models.decision_transformer import DecisionTransformer, build_vocabulary
from shardlab.models.hooks import HookError, add, hook_names, hooked, set_value

pytestmark = pytest.mark.usefixtures("one_thread")
MISSIONS = ["go to the red ball", "open the yellow door"]
K = 5


def make_model(**overrides) -> DecisionTransformer:
    torch.manual_seed(0)
    options = dict(obs_shape=(7, 7, 3), num_actions=7, max_timestep=50, n_layers=2, d_model=32, n_heads=2,
                   context=K, dropout=0.1)
    options.update(overrides)
    return DecisionTransformer(**options).eval()


def make_batch(batch: int = 3, steps: int = K, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"states": torch.randint(0, 3, (batch, steps, 7, 7, 3), generator=generator, dtype=torch.uint8),
            "actions": torch.randint(0, 7, (batch, steps), generator=generator),
            "returns_to_go": torch.rand(batch, steps, generator=generator),
            "timesteps": torch.arange(10, 10 + steps).expand(batch, steps).clone()}


def test_future_tokens_do_not_change_past_predictions():
    model, batch = make_model(), make_batch()
    before = model(**batch)
    for t in range(K):
        changed = {k: v.clone() for k, v in batch.items()}
        changed["states"][:, t + 1:] = 2 - changed["states"][:, t + 1:]
        changed["returns_to_go"][:, t + 1:] += 5.0
        changed["actions"][:, t:] = (changed["actions"][:, t:] + 1) % 7  # a_t comes after s_t: no effect at t
        after = model(**changed)
        assert torch.allclose(after[:, :t + 1], before[:, :t + 1], atol=1e-5)
        if t + 1 < K:
            assert not torch.allclose(after[:, t + 1:], before[:, t + 1:], atol=1e-4)
    # the present does matter: the RTG and state at t change the prediction at t
    changed = {k: v.clone() for k, v in batch.items()}
    changed["returns_to_go"][:, 2] += 3.0
    assert not torch.allclose(model(**changed)[:, 2], before[:, 2], atol=1e-4)


def test_padding_values_and_presence_change_nothing():
    model, batch = make_model(), make_batch()
    real = 3  # the first K - real steps are padding
    mask = torch.zeros(3, K, dtype=torch.bool)
    mask[:, K - real:] = True
    padded = model(**batch, step_mask=mask)
    garbage = {k: v.clone() for k, v in batch.items()}
    garbage["states"][:, :K - real] = 255  # out of range for the one-hot: must never be looked at
    garbage["actions"][:, :K - real] = 99
    garbage["returns_to_go"][:, :K - real] = float("nan")
    garbage["timesteps"][:, :K - real] = 10_000
    assert torch.equal(model(**garbage, step_mask=mask)[:, K - real:], padded[:, K - real:])
    # the same real steps without any padding give the same predictions
    short = {k: v[:, K - real:] for k, v in batch.items()}
    assert torch.allclose(model(**short), padded[:, K - real:], atol=1e-5)


def test_padding_gives_finite_gradients():
    model = make_model().train()
    batch = make_batch()
    mask = torch.ones(3, K, dtype=torch.bool)
    mask[0, :4] = False
    model(**batch, step_mask=mask)[mask].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_attention_pattern_is_causal_and_skips_padding():
    model, batch = make_model(), make_batch()
    mask = torch.ones(3, K, dtype=torch.bool)
    mask[:, :2] = False
    with hooked(model, cache=["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]) as acts:
        model(**batch, step_mask=mask)
    pattern = acts["blocks.1.attn.hook_pattern"]  # (B, heads, L, L)
    L = model.sequence_length(K)
    assert pattern.shape == (3, 2, L, L)
    assert torch.allclose(pattern.sum(-1), torch.ones(3, 2, L))
    assert (pattern.triu(1) == 0).all()
    real_queries = slice(6, L)  # tokens of the 3 real steps
    assert (pattern[:, :, real_queries, :6] == 0).all()


def test_hook_names_follow_transformer_lens():
    model = make_model(mission_vocab=build_vocabulary(MISSIONS), max_mission_tokens=5)
    names = set(hook_names(model))
    for name in ["hook_embed_rtg", "hook_embed_state", "hook_embed_action", "hook_embed_timestep",
                 "hook_embed_mission", "hook_tokens", "ln_final", "action_head"]:
        assert name in names
    for layer in range(2):
        for suffix in ["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                       "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "attn.hook_attn_scores",
                       "attn.hook_pattern", "mlp.hook_pre", "mlp.hook_post"]:
            assert f"blocks.{layer}.{suffix}" in names
    with pytest.raises(HookError, match="did you mean blocks.0.hook_resid_pre"):
        with hooked(model, cache=["blocks.0.hook_resid_pr"]):
            pass


def test_edits_through_hooks_change_outputs_and_leave_no_hooks():
    model, batch = make_model(), make_batch()
    before = model(**batch)
    # a random direction: a constant one would vanish in the next LayerNorm
    vector = torch.randn(32, generator=torch.Generator().manual_seed(1))
    with hooked(model, edits={"blocks.0.hook_resid_post": add(vector, 3.0)},
                cache=["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post", "hook_embed_rtg"]) as acts:
        edited = model(**batch)
    assert not torch.allclose(edited, before, atol=1e-3)
    assert acts["blocks.0.hook_resid_post"].shape == (3, model.sequence_length(K), 32)
    assert acts["blocks.1.mlp.hook_post"].shape == (3, model.sequence_length(K), 128)
    assert acts["hook_embed_rtg"].shape == (3, K, 32)
    # ablating every head's pattern onto the first token changes outputs too
    with hooked(model, edits={"blocks.1.attn.hook_pattern": set_value(0.0)}):
        assert not torch.allclose(model(**batch), before, atol=1e-3)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.equal(model(**batch), before)


def test_behavioural_cloning_variant_ignores_returns():
    model, batch = make_model(use_rtg=False), make_batch()
    assert model.sequence_length(K) == 2 * K and "hook_embed_rtg" not in hook_names(model)
    assert model.token_labels(2) == ["s0", "a0", "s1", "a1"]
    changed = dict(batch, returns_to_go=batch["returns_to_go"] + 10)
    assert torch.equal(model(**changed), model(**batch))


def test_mission_tokens_condition_the_policy():
    vocab = build_vocabulary(MISSIONS)
    assert vocab[:2] == ["<pad>", "<unk>"] and "yellow" in vocab
    model, batch = make_model(mission_vocab=vocab, max_mission_tokens=5), make_batch(batch=2)
    tokens = model.tokenize_missions(["go to the red ball", "Go to the PURPLE box"])
    assert tokens.shape == (2, 5)
    assert tokens[0].tolist() == [vocab.index(w) for w in ("go", "to", "the", "red", "ball")]
    assert tokens[1].tolist() == [vocab.index(w) for w in ("go", "to", "the")] + [1, 1]  # <unk> for new words
    assert model.tokenize_missions(["open the yellow door"])[0, 4] == 0  # right-padded with <pad>
    same = model.tokenize_missions(MISSIONS[:1] * 2)
    other = model.tokenize_missions(MISSIONS[1:] * 2)
    assert not torch.allclose(model(**batch, missions=same), model(**batch, missions=other), atol=1e-4)
    assert model.sequence_length(K, 5) == 5 + 3 * K and model.token_labels(1, 2) == ["m0", "m1", "R0", "s0", "a0"]
    with pytest.raises(ValueError, match="max_mission_tokens"):
        model(**batch, missions=torch.ones(2, 6, dtype=torch.long))


def test_state_encodings_and_sparse_activation():
    batch = make_batch()
    for encoding in ("linear", "onehot"):
        assert make_model(state_encoding=encoding)(**batch).shape == (3, K, 7)
    with pytest.raises(ValueError, match="onehot"):
        make_model(obs_shape=(7, 7, 20))
    model = make_model(mlp_activation="kwta", mlp_activation_options={"percent_on": 0.25})
    with hooked(model, cache=["blocks.0.mlp.hook_post"]) as acts:
        model(**batch)
    active = (acts["blocks.0.mlp.hook_post"] != 0).float().mean(-1)
    assert (active <= 0.25 + 1e-6).all()
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model(**make_batch(steps=K + 1))
