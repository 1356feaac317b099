"""A decision transformer (Chen et al. 2021) for MiniGrid, written to be read top to bottom.

A trajectory window of K timesteps becomes a token sequence

    [mission words]  R_0 s_0 a_0  R_1 s_1 a_1  ...  R_{K-1} s_{K-1} a_{K-1}

(``use_rtg=False``, behavioural cloning, drops the R tokens). Each token is its own embedding
(return-to-go: linear; state: linear over the flattened 7×7×3 MiniGrid encoding or its one-hot;
action: lookup) plus a learned embedding of the episode timestep; mission words get a lookup plus a
learned position. A causal GPT (pre-LayerNorm blocks as in nanoGPT) runs over the sequence and the
action a_t is predicted from the output at the state token s_t, so it sees R_{≤t}, s_{≤t}, a_{<t}.

Padding: ``step_mask`` (B, K) marks real timesteps; padded timesteps (anywhere, usually on the
left of a short window) are masked out as attention keys and their inputs are zeroed before the
embeddings, so neither their values nor their presence changes the outputs at real timesteps.

Every interesting activation has a TransformerLens-style name for ``models.hooks.hooked``:
``hook_embed_rtg``, ``hook_embed_state``, ``hook_embed_action``, ``hook_embed_timestep``,
``hook_embed_mission`` (B, K or M, d; the RTG one only with ``use_rtg``, the mission one only with a
mission vocabulary); ``hook_tokens`` (B, L, d, the input of block 0);
``blocks.{i}.hook_resid_pre``, ``blocks.{i}.hook_resid_mid``, ``blocks.{i}.hook_resid_post``,
``blocks.{i}.hook_attn_out``, ``blocks.{i}.hook_mlp_out`` (B, L, d); ``blocks.{i}.attn.hook_q``,
``hook_k``, ``hook_v``, ``hook_z`` (B, L, heads, d_head); ``blocks.{i}.attn.hook_attn_scores`` and
``hook_pattern`` (B, heads, query, key); ``blocks.{i}.mlp.hook_pre``, ``hook_post`` (B, L, d_mlp); ``ln_final`` (B, K, d) and
``action_head`` (B, K, actions) at the state tokens.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from shardlab.configs.checks import ConfigError
from shardlab.models.decision_transformer_config import STATE_ENCODINGS
from shardlab.models.hooks import HookPoint
from shardlab.models.sparse import make_activation

# MiniGrid's (H, W, 3) encoding: object (11 kinds), colour (6) and state (door open/closed/locked:
# 3; the fully observed grid stores the agent's direction 0–3 there, hence 4)
MINIGRID_CHANNEL_SIZES = (11, 6, 4)
PAD_WORD, UNKNOWN_WORD = "<pad>", "<unk>"


def mission_words(mission: str) -> list[str]:
    """The lower-case words of a mission string ("go to the red ball" → go, to, the, red, ball)."""
    return re.findall(r"[a-z0-9]+", mission.lower())


def build_vocabulary(missions: Sequence[str]) -> list[str]:
    """A word-level vocabulary of the missions: ``<pad>``, ``<unk>`` then the words, sorted."""
    words = sorted({word for mission in missions for word in mission_words(mission)})
    return [PAD_WORD, UNKNOWN_WORD, *words]


class StateEncoder(nn.Module):
    """One linear layer over the flattened observation, raw (``linear``) or one-hot (``onehot``)."""

    def __init__(self, obs_shape: Sequence[int], d_model: int, encoding: str = "onehot"):
        super().__init__()
        if encoding not in STATE_ENCODINGS:
            raise ValueError(f"state encoding must be one of {STATE_ENCODINGS}, got {encoding!r}")
        if encoding == "onehot" and obs_shape[-1] != len(MINIGRID_CHANNEL_SIZES):
            raise ValueError(f"onehot state encoding needs MiniGrid's (H, W, 3) encoding, got {tuple(obs_shape)}")
        self.obs_shape, self.encoding = tuple(obs_shape), encoding
        cells = math.prod(self.obs_shape[:-1])
        width = cells * sum(MINIGRID_CHANNEL_SIZES) if encoding == "onehot" else math.prod(self.obs_shape)
        self.linear = nn.Linear(width, d_model)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """(B, K, *obs_shape) uint8 → (B, K, d_model)."""
        if self.encoding == "onehot":
            x = torch.cat([F.one_hot(states[..., c].long(), size) for c, size in enumerate(MINIGRID_CHANNEL_SIZES)], -1)
        else:
            x = states
        return self.linear(x.flatten(2).to(self.linear.weight.dtype))


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with an explicit (hookable) attention pattern."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.attn_dropout, self.resid_dropout = nn.Dropout(dropout), nn.Dropout(dropout)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern, self.hook_z = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x (B, L, d), allowed (B, 1, L, L) bool: may query i read key j."""
        B, L, d = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.d_head).unbind(2)  # (B, L, H, dh) each
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        scores = q.transpose(1, 2) @ k.permute(0, 2, 3, 1) / math.sqrt(self.d_head)  # (B, H, L, L)
        scores = self.hook_attn_scores(scores.masked_fill(~allowed, float("-inf")))
        pattern = self.hook_pattern(scores.softmax(-1))
        z = self.hook_z((self.attn_dropout(pattern) @ v.transpose(1, 2)).transpose(1, 2))  # (B, L, H, dh)
        return self.resid_dropout(self.proj(z.reshape(B, L, d)))


class MLP(nn.Module):
    """d → mlp_ratio·d → activation (relu, gelu or a sparse kind from models.sparse) → d."""

    def __init__(self, d_model: int, mlp_ratio: int, dropout: float, activation: str,
                 activation_options: Optional[dict[str, Any]] = None):
        super().__init__()
        hidden = mlp_ratio * d_model
        self.fc_in = nn.Linear(d_model, hidden)
        self.hook_pre = HookPoint()
        # units sizes k-WTA's duty-cycle buffer; the other kinds ignore it
        self.act = make_activation(activation, **{"units": hidden, **(activation_options or {})})
        self.hook_post = HookPoint()
        self.fc_out = nn.Linear(hidden, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, d) → (B, L, d)."""
        return self.dropout(self.fc_out(self.hook_post(self.act(self.hook_pre(self.fc_in(x))))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln1(x)), then + mlp(ln2(·))."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, mlp_ratio: int, activation: str,
                 activation_options: Optional[dict[str, Any]] = None):
        super().__init__()
        self.hook_resid_pre = HookPoint()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.hook_attn_out, self.hook_resid_mid = HookPoint(), HookPoint()
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, mlp_ratio, dropout, activation, activation_options)
        self.hook_mlp_out, self.hook_resid_post = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """(B, L, d) → (B, L, d)."""
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x), allowed)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln2(x))))


class DecisionTransformer(nn.Module):
    """Predicts a_t from (mission, R_{≤t}, s_{≤t}, a_{<t}) over a window of ``context`` timesteps."""

    def __init__(self, obs_shape: Sequence[int], num_actions: int, max_timestep: int, n_layers: int = 2,
                 d_model: int = 128, n_heads: int = 2, context: int = 20, dropout: float = 0.1,
                 state_encoding: str = "onehot", use_rtg: bool = True, mission_vocab: Sequence[str] = (),
                 max_mission_tokens: int = 0, mlp_activation: str = "gelu",
                 mlp_activation_options: Optional[dict[str, Any]] = None, mlp_ratio: int = 4,
                 rtg_scale: float = 1.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.obs_shape, self.num_actions, self.max_timestep = tuple(obs_shape), num_actions, max_timestep
        self.context, self.use_rtg, self.rtg_scale = context, use_rtg, rtg_scale
        self.tokens_per_step = 3 if use_rtg else 2
        self.mission_vocab = list(mission_vocab)
        self.max_mission_tokens = max_mission_tokens if self.mission_vocab else 0
        self._word_index = {word: i for i, word in enumerate(self.mission_vocab)}

        self.embed_state = StateEncoder(obs_shape, d_model, state_encoding)
        self.embed_action = nn.Embedding(num_actions, d_model)
        self.embed_rtg = nn.Linear(1, d_model) if use_rtg else None
        self.embed_timestep = nn.Embedding(max_timestep + 1, d_model)
        if self.max_mission_tokens:
            self.embed_mission = nn.Embedding(len(self.mission_vocab), d_model)
            self.embed_mission_position = nn.Embedding(self.max_mission_tokens, d_model)
        if use_rtg:
            self.hook_embed_rtg = HookPoint()
        self.hook_embed_state, self.hook_embed_action, self.hook_embed_timestep = HookPoint(), HookPoint(), HookPoint()
        if self.max_mission_tokens:
            self.hook_embed_mission = HookPoint()
        self.embed_ln = nn.LayerNorm(d_model)  # as in the original DT, over the summed token embeddings
        self.embed_dropout = nn.Dropout(dropout)
        self.hook_tokens = HookPoint()
        self.blocks = nn.ModuleList([Block(d_model, n_heads, dropout, mlp_ratio, mlp_activation, mlp_activation_options)
                                     for _ in range(n_layers)])
        self.ln_final = nn.LayerNorm(d_model)
        self.action_head = nn.Linear(d_model, num_actions)
        self.apply(self._init_weights)
        for name, parameter in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("attn.proj.weight", "mlp.fc_out.weight")):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))

    @property
    def activation_sites(self) -> list[str]:
        """The MLP activations' outputs, one site per block (where a sparse mlp_activation acts)."""
        return [f"blocks.{i}.mlp.hook_post" for i in range(len(self.blocks))]

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    # -- token layout ---------------------------------------------------------------------------
    def sequence_length(self, steps: int, mission_tokens: int = 0) -> int:
        """Tokens in a window of ``steps`` timesteps after ``mission_tokens`` mission words."""
        return mission_tokens + self.tokens_per_step * steps

    def state_positions(self, steps: int, mission_tokens: int = 0) -> torch.Tensor:
        """Sequence index of each state token (where the action is read out)."""
        return mission_tokens + self.tokens_per_step * torch.arange(steps) + (1 if self.use_rtg else 0)

    def token_labels(self, steps: int, mission_tokens: int = 0) -> list[str]:
        """Readable names of the sequence's tokens: m0.., R0 s0 a0, R1 s1 a1, ..."""
        kinds = ("R", "s", "a") if self.use_rtg else ("s", "a")
        return [f"m{i}" for i in range(mission_tokens)] + [f"{kind}{t}" for t in range(steps) for kind in kinds]

    def tokenize_missions(self, missions: Sequence[str]) -> torch.Tensor:
        """(B, max_mission_tokens) word indices, right-padded with 0 (``<pad>``); long missions are cut."""
        unknown = self._word_index.get(UNKNOWN_WORD, 1)
        out = torch.zeros(len(missions), self.max_mission_tokens, dtype=torch.long)
        for row, mission in enumerate(missions):
            ids = [self._word_index.get(word, unknown) for word in mission_words(mission)][:self.max_mission_tokens]
            out[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    # -- forward ------------------------------------------------------------------------------
    def forward(self, states: torch.Tensor, actions: torch.Tensor, returns_to_go: torch.Tensor,
                timesteps: torch.Tensor, step_mask: Optional[torch.Tensor] = None,
                missions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Action logits (B, K, num_actions) at every timestep of the window.

        states (B, K, *obs_shape) uint8, actions (B, K) long, returns_to_go (B, K) float,
        timesteps (B, K) long, step_mask (B, K) bool (True = real step; default all real),
        missions (B, M) long word indices from :meth:`tokenize_missions` (0 = padding).
        The action at the last position only matters for later positions, so at inference any
        value (e.g. 0) can stand in for the action not chosen yet.
        """
        B, K = actions.shape
        if K > self.context:
            raise ValueError(f"window of {K} timesteps exceeds the model's context of {self.context}")
        mask = torch.ones(B, K, dtype=torch.bool, device=actions.device) if step_mask is None else step_mask.bool()
        # padded inputs are zeroed so that no value there can reach the network (one_hot would
        # also refuse out-of-range garbage); the attention mask below hides their tokens
        states = torch.where(mask.view(B, K, *([1] * len(self.obs_shape))), states, torch.zeros_like(states))
        actions = torch.where(mask, actions, 0)
        timesteps = torch.where(mask, timesteps, 0).clamp(0, self.max_timestep)

        time = self.hook_embed_timestep(self.embed_timestep(timesteps))  # (B, K, d)
        parts = [self.hook_embed_state(self.embed_state(states)),
                 self.hook_embed_action(self.embed_action(actions))]
        if self.use_rtg:
            rtg = torch.where(mask, returns_to_go, 0.0).unsqueeze(-1).to(time.dtype) / self.rtg_scale
            parts.insert(0, self.hook_embed_rtg(self.embed_rtg(rtg)))
        tokens = (torch.stack(parts, dim=2) + time.unsqueeze(2)).reshape(B, K * self.tokens_per_step, -1)
        valid = mask.repeat_interleave(self.tokens_per_step, dim=1)  # (B, 3K)
        M = 0
        if self.max_mission_tokens and missions is not None:
            M = missions.shape[1]
            if M > self.max_mission_tokens:
                raise ValueError(f"{M} mission tokens exceed the model's max_mission_tokens {self.max_mission_tokens}")
            words = self.embed_mission(missions) + self.embed_mission_position(torch.arange(M, device=missions.device))
            tokens = torch.cat([self.hook_embed_mission(words), tokens], dim=1)
            valid = torch.cat([missions != 0, valid], dim=1)

        L = tokens.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool, device=tokens.device).tril()
        # a query may read earlier real tokens and always itself (a padded query would otherwise
        # have no key at all and produce NaN, which would leak into gradients)
        allowed = (causal & valid[:, None, :]) | torch.eye(L, dtype=torch.bool, device=tokens.device)
        x = self.hook_tokens(self.embed_dropout(self.embed_ln(tokens)))
        for block in self.blocks:
            x = block(x, allowed.unsqueeze(1))
        states_out = x[:, self.state_positions(K, M).to(x.device)]  # (B, K, d)
        return self.action_head(self.ln_final(states_out))


def build_decision_transformer(cfg: Any) -> DecisionTransformer:
    """The network a resolved dt config (with its spec filled) describes."""
    m, spec = cfg.model, cfg.spec
    if not spec.obs_shape or spec.num_actions < 1:
        raise ConfigError("spec.obs_shape and spec.num_actions are empty; they are read from data.path "
                          "when training starts (a checkpoint carries them)")
    if m.state_encoding == "onehot" and spec.obs_shape[-1] != 3:
        raise ConfigError(f"model.state_encoding=onehot needs MiniGrid's (H, W, 3) index encoding but the data's "
                          f"observations are {tuple(spec.obs_shape)} (obs {spec.obs!r}); use model.state_encoding=linear")
    return DecisionTransformer(
        obs_shape=list(spec.obs_shape), num_actions=spec.num_actions, max_timestep=spec.max_timestep,
        n_layers=m.n_layers, d_model=m.d_model, n_heads=m.n_heads, context=m.context, dropout=m.dropout,
        state_encoding=m.state_encoding, use_rtg=m.use_rtg,
        mission_vocab=list(spec.mission_vocab) if m.use_mission else (),
        max_mission_tokens=spec.max_mission_tokens if m.use_mission else 0,
        mlp_activation=m.mlp_activation, mlp_activation_options=dict(m.mlp_activation_options),
        mlp_ratio=m.mlp_ratio, rtg_scale=m.rtg_scale)
