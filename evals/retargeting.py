"""Retargeting a maze policy by writing a value into "cheese channels" at a target square's cell
(Mini et al.: setting channel 55 of ``embedder.block2.res1.resadd_out`` to 5.5 at one cell sends
the published agent towards that square).

The chosen channels of one layer are set to ``value`` at the activation cell of the target square
(``maze_interp_common.activation_square_cell``) in every forward pass. By default the channels are
picked automatically: the ``top_channels`` channels whose activation at the cheese's cell rises
most (falls most for a negative value) when the cheese is added to seeded mazes, mouse on the
start square. Success is measured two ways, each against the unedited policy and against the
policy with the real cheese placed on the target:

* ``path_prob``: the geometric mean, over the squares of the shortest path start → target (the
  target itself and the cheese square excluded), of the folded probability of the path's next
  move, with the mouse put on each square in turn (teacher-forced; one forward per square);
* ``reach``: the fraction of sampled rollouts (up to ``max_steps`` steps) whose mouse steps on the
  target square, with the edit applied at every step.

By default the cheese is removed from the mazes first (as in procgen-tools' retargeting runs), so
the edited activation is the only goal signal. ``fraction_edited`` is the share of the layer's
values (C·H·W) the edit writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from envs import maze_geometry, maze_state
from envs.eval_mazes import eval_mazes
from envs.maze import MazeEnv, MazeEnvConfig
from evals import maze_interp_common as common
from evals.context import EvalContext
from evals.registry import register
from evals.results import Result
from models.hooks import Edit, hooked
from models.impala import preprocess

START = maze_geometry.START
TARGETS = ("top_left", "top_right", "bottom_right", "center")
CONDITIONS = ("baseline", "edited", "cheese_placed")


def target_square(name: str, maze_dim: int) -> tuple[int, int]:
    """The inner square a target name stands for in a ``maze_dim`` maze (always open: procgen's
    (even, even) squares are; "center" rounds the middle up to even, the corner for a 3×3 maze)."""
    top = maze_dim - 1
    if name == "top_left":
        return 0, top
    if name == "top_right":
        return top, top
    if name == "bottom_right":
        return top, 0
    if name == "center":
        middle = maze_dim // 2 + (maze_dim // 2) % 2
        return middle, middle
    raise ValueError(f"unknown retargeting target {name!r}; use one of {', '.join(TARGETS)}")


def set_at_cells(value: float, channels: Sequence[int], rows: torch.Tensor, cols: torch.Tensor) -> Edit:
    """Channels set to ``value`` at one cell per batch item: item i at (rows[i], cols[i])."""
    chans = torch.as_tensor(list(channels), dtype=torch.long)

    def edit(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(rows):
            raise ValueError(f"edit built for a batch of {len(rows)}, got {x.shape[0]}")
        out = x.clone()
        batch = torch.arange(x.shape[0])[:, None]
        out[batch, chans[None, :], rows[:, None], cols[:, None]] = value
        return out
    return edit


def fraction_edited(channels: Sequence[int], shape: Sequence[int]) -> float:
    """Share of a (C, H, W) layer's values an edit of ``channels`` at one cell writes."""
    return len(set(channels)) / float(np.prod(shape))


def path_probabilities(policy: torch.nn.Module, states: Sequence[bytes], targets: Sequence[tuple[int, int]],
                       obs: str, layer: Optional[str] = None, channels: Sequence[int] = (),
                       value: float = 0.0) -> np.ndarray:
    """Per maze, the geometric mean of P(next move) along the shortest path start → target with the
    mouse on each path square (the target and the cheese square excluded); with ``layer`` the
    ``channels`` are set to ``value`` at the target's cell in every one of those forward passes."""
    squares, moves, owner, cells = [], [], [], []
    side = common.layer_activations(policy, states[:1], obs, layer).shape[-1] if layer else None
    for index, (state, target) in enumerate(zip(states, targets)):
        inner = maze_state.inner_grid(state)
        path = maze_geometry.shortest_path(inner, START, target)
        if len(path) < 2:
            raise ValueError(f"target {target} is the start or unreachable in maze {index}")
        cheese = maze_state.cheese_square(state)
        cell = common.cell_of(state, target, obs, side) if layer else None
        for square, move in zip(path[:-1], common.path_moves(path)):
            if square == cheese:  # the mouse is never seen on the cheese: the episode ends there
                continue
            squares.append(common.at_square(state, square))
            moves.append(move)
            owner.append(index)
            cells.append(cell)
    edits = None
    if layer:
        rows, cols = torch.tensor([r for r, _ in cells]), torch.tensor([c for _, c in cells])
        edits = {layer: set_at_cells(value, channels, rows, cols)}
    probs = common.folded_probs(policy, squares, obs, edits)[np.arange(len(moves)), moves]
    owner_array = np.array(owner)
    logs = np.log(np.clip(probs, 1e-12, None))
    return np.array([np.exp(logs[owner_array == i].mean()) for i in range(len(states))])


def reach_rates(policy: torch.nn.Module, states: Sequence[bytes], targets: Sequence[tuple[int, int]],
                env_cfg: MazeEnvConfig, rollouts: int, max_steps: int, seed: int, layer: Optional[str] = None,
                channels: Sequence[int] = (), value: float = 0.0, channels_last: bool = True,
                progress: bool = False) -> np.ndarray:
    """Per maze, the fraction of ``rollouts`` sampled episodes (at most ``max_steps`` steps) whose
    mouse steps on the target square, with the edit at the target's cell applied at every step."""
    batch_states = [s for s in states for _ in range(rollouts)]
    batch_targets = np.array([t for t in targets for _ in range(rollouts)])
    env = MazeEnv(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(env_cfg), {
        "num_envs": len(batch_states), "rand_region": None, "max_maze_size": None, "seed": seed})))
    generator = torch.Generator().manual_seed(seed)
    edits = None
    if layer:
        side = common.layer_activations(policy, states[:1], env_cfg.obs, layer).shape[-1]
        cells = [common.cell_of(s, tuple(t), env_cfg.obs, side) for s, t in zip(batch_states, batch_targets)]
        edits = {layer: set_at_cells(value, channels, torch.tensor([r for r, _ in cells]),
                                     torch.tensor([c for _, c in cells]))}
    cheese_on_target = np.array([maze_state.cheese_square(s) == tuple(t) for s, t in zip(batch_states, batch_targets)])
    reached = np.zeros(len(batch_states), bool)
    over = np.zeros(len(batch_states), bool)  # reached, or the episode ended
    device = next(policy.parameters()).device
    try:
        obs = env.load_states(batch_states)
        with torch.inference_mode(), hooked(policy, edits=edits):
            for _ in tqdm(range(max_steps), desc="rollouts", disable=not progress, leave=False):
                logits, _ = policy(preprocess(obs.to(device), channels_last))
                action = torch.multinomial(logits.float().softmax(-1).cpu(), 1, generator=generator).squeeze(-1)
                obs, _, done, finished = env.step(action)
                done = done.numpy()
                # a finished episode reached the target only if the target held the cheese; after
                # the end procgen has already started a new level, so its squares no longer count
                for index, episode in zip(np.flatnonzero(done), finished):
                    if not over[index] and episode.reached_cheese and cheese_on_target[index]:
                        reached[index] = True
                on_target = (np.array(env.mouse_squares) == batch_targets).all(1) & ~done
                reached |= on_target & ~over
                over |= reached | done
                if over.all():
                    break
    finally:
        env.close()
    return reached.reshape(len(states), rollouts).mean(1)


@register("retargeting")
class Retargeting:
    """Send the agent to chosen squares by writing one value into cheese channels at one cell."""

    kinds = ("ppo_maze",)

    @dataclass
    class Config:
        """Mazes, targets, channels, value and rollouts."""

        mazes: int = 16  # seeded mazes, each tried with every target
        targets: list[str] = field(default_factory=lambda: ["top_left", "bottom_right", "top_right"])
        layer: str = common.DEFAULT_LAYER
        channels: Optional[list[int]] = None  # None: the top_channels auto-selected cheese channels
        top_channels: int = 4
        channel_mazes: int = 64  # seeded mazes for choosing the cheese channels
        value: float = 5.5
        remove_cheese: bool = True
        rollouts: int = 4  # sampled episodes per maze and target
        max_steps: int = 100  # per rollout (procgen ends episodes at 500); same budget for every condition
        scan_values: list[float] = field(default_factory=list)  # path_prob also at these values (PNG)
        min_size: Optional[int] = None  # default: max_size (the largest mazes)
        max_size: Optional[int] = None  # default: the training max

        def __post_init__(self) -> None:
            for name in self.targets:
                target_square(name, 5)  # unknown names fail before anything runs (exit 2)
            if self.channels is not None and (not self.channels or min(self.channels) < 0):
                raise ValueError(f"retargeting channels must be non-negative channel indices, got {self.channels}")
            if min(self.mazes, self.top_channels, self.channel_mazes, self.rollouts, self.max_steps) < 1:
                raise ValueError("retargeting mazes, top_channels, channel_mazes, rollouts and max_steps must be >= 1")

    def __init__(self, config: "Retargeting.Config"):
        self.config = config

    def run(self, ctx: EvalContext) -> Result:
        """Choose channels, then measure path probability and reach rate for every target."""
        cfg, policy, env = self.config, ctx.policy, common.train_env(ctx.train_config)
        max_size = cfg.max_size or env.max_size
        min_size = cfg.min_size or max_size
        result = Result()
        mazes = eval_mazes(ctx.count(cfg.mazes), ctx.seed, cheese="anywhere", min_size=min_size,
                           max_size=max_size, mode=env.mode)
        states = [maze_state.without_cheese(m.state) if cfg.remove_cheese else m.state for m in mazes]
        shape = common.layer_activations(policy, states[:1], env.obs, cfg.layer).shape[1:]
        channels = list(cfg.channels) if cfg.channels is not None else self._choose(ctx, result, env, max_size)
        if not channels or any(not 0 <= c < shape[0] for c in channels):
            raise ValueError(f"channels {channels} must lie in 0..{shape[0] - 1} for layer {cfg.layer}")
        result.add("fraction_edited", fraction_edited(channels, shape))
        result.add("value", cfg.value)
        env_cfg = MazeEnvConfig(**{**OmegaConf.to_container(ctx.train_config.env), "seed": ctx.seed})
        channels_last = ctx.train_config.model.channels_last
        summaries: dict[str, dict[str, common.Summary]] = {}
        for name in tqdm(cfg.targets, desc="retargeting", disable=not ctx.progress):
            targets = [target_square(name, maze_state.layout(s).maze_dim) for s in states]
            placed = [maze_state.with_cheese_at(s, t) for s, t in zip(states, targets)]
            edit = dict(layer=cfg.layer, channels=channels, value=cfg.value)
            runs = {"baseline": (states, {}), "edited": (states, edit), "cheese_placed": (placed, {})}
            for condition, (run_states, kwargs) in runs.items():
                path = common.summarise(path_probabilities(policy, run_states, targets, env.obs, **kwargs))
                reach = common.summarise(reach_rates(policy, run_states, targets, env_cfg, cfg.rollouts,
                                                     cfg.max_steps, ctx.seed, channels_last=channels_last, **kwargs))
                summaries.setdefault(name, {})[f"path_prob/{condition}"] = path
                summaries[name][f"reach/{condition}"] = reach
                result.add(f"{name}/path_prob/{condition}/median", path.median, n=path.n)
                result.add(f"{name}/path_prob/{condition}/mean", path.mean, stderr=path.stderr, n=path.n)
                result.add(f"{name}/reach/{condition}", reach.mean, stderr=reach.stderr, n=reach.n,
                           higher_is_better=True if condition == "edited" else None)
            for value in cfg.scan_values:
                path = common.summarise(path_probabilities(policy, states, targets, env.obs, layer=cfg.layer,
                                                           channels=channels, value=value))
                summaries[name][f"scan/{value:g}"] = path
                result.add(f"{name}/scan/value={value:g}/path_prob/median", path.median, n=path.n)
                result.add(f"{name}/scan/value={value:g}/path_prob/mean", path.mean, stderr=path.stderr, n=path.n)
        result.artifacts.append(self._png(ctx, summaries, channels))
        if cfg.scan_values:
            result.artifacts.append(self._scan_png(ctx, summaries, channels))
        return result

    def _scan_png(self, ctx: EvalContext, summaries: dict, channels: list[int]) -> str:
        """Mean path probability against the written value, per target, beside the unedited policy
        (dashed) and the real cheese on the target (dotted)."""
        cfg = self.config
        fig, axes = common.new_panels(1, size_inches=5.0)
        ax = axes[0]
        values = sorted(cfg.scan_values)
        for index, target in enumerate(cfg.targets):
            colour = f"C{index}"
            stats = [summaries[target][f"scan/{v:g}"] for v in values]
            ax.errorbar(values, [s.mean for s in stats], yerr=np.nan_to_num([s.stderr for s in stats]),
                        marker="o", color=colour, capsize=2, label=target.replace("_", " "))
            ax.axhline(summaries[target]["path_prob/baseline"].mean, color=colour, linestyle="--", alpha=0.6)
            ax.axhline(summaries[target]["path_prob/cheese_placed"].mean, color=colour, linestyle=":", alpha=0.8)
        ax.set_xlabel("value written into the channels")
        ax.set_ylabel("geometric-mean path probability (mean)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="dashed: unedited, dotted: cheese on target", title_fontsize=7)
        ax.set_title(f"channels {channels} of {cfg.layer}", fontsize=8)
        fig.tight_layout()
        return common.save_figure(fig, ctx.artifact("retargeting_scan.png"))

    def _choose(self, ctx: EvalContext, result: Result, env: common.TrainEnv, max_size: int) -> list[int]:
        """The auto-selected cheese channels, recorded as metrics with their scores."""
        cfg = self.config
        mazes = eval_mazes(ctx.count(cfg.channel_mazes), ctx.seed + 1, cheese="anywhere", max_size=max_size,
                           mode=env.mode)
        scores = common.cheese_channel_scores(ctx.policy, [m.state for m in mazes], env.obs, cfg.layer)
        channels = common.choose_channels(scores, cfg.top_channels, cfg.value)
        for rank, channel in enumerate(channels):
            result.add(f"channels/rank={rank}", channel, n=len(mazes))
            result.add(f"channels/rank={rank}/cheese_minus_no_cheese", float(scores[channel]), n=len(mazes))
        return channels

    def _png(self, ctx: EvalContext, summaries: dict, channels: list[int]) -> str:
        """Grouped bars per target: path probability and reach rate, baseline / edited / cheese placed."""
        cfg = self.config
        fig, axes = common.new_panels(2, size_inches=4.5)
        width = 0.8 / len(CONDITIONS)
        colours = {"baseline": "#9e9e9e", "edited": "#d62728", "cheese_placed": "#d4a017"}
        positions = np.arange(len(cfg.targets))
        for ax, metric, label in ((axes[0], "path_prob", "geometric-mean path probability (mean)"),
                                  (axes[1], "reach", "fraction of rollouts reaching the target")):
            for offset, condition in enumerate(CONDITIONS):
                stats = [summaries[t][f"{metric}/{condition}"] for t in cfg.targets]
                ax.bar(positions + (offset - 1) * width, [s.mean for s in stats], width,
                       yerr=np.nan_to_num([s.stderr for s in stats]), color=colours[condition], label=condition,
                       capsize=2)
            ax.set_xticks(positions, [t.replace("_", " ") for t in cfg.targets])
            ax.set_ylim(0, 1.02)
            ax.set_ylabel(label)
            ax.grid(axis="y", alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"channels {channels} set to {cfg.value:g} at the target's cell of {cfg.layer}", fontsize=9)
        fig.tight_layout()
        return common.save_figure(fig, ctx.artifact("retargeting.png"))
