"""Steering a maze policy by adding activation vectors (TurnTrout et al.'s cheese and top-right
vectors) and measuring the action probabilities at the decision square.

* **Cheese vector**: activations at one layer with the cheese minus without it, same maze, the
  mouse on the start square; added with a coefficient (default −1: subtracted) to every forward
  pass, wherever the mouse is. Published: the median P(cheese-ward move at the decision square)
  falls from 0.81 to 0.03 over seeds 0–99.
* **Top-right vector**: activations on the maze with an L-shaped corridor opened through the wall
  padding from the inner top-right corner to the world's top-right corner (procgen-tools'
  ``make_top_right_path``) minus activations on the maze as it is; mouse on the start square,
  cheese unchanged; default coefficient +1.

Each vector is applied on the maze it was computed on ("same maze"), transferred from other mazes,
and (the cheese vector) to the same maze with the cheese moved k = 1..K path steps away; a random
vector of the same norm per maze is the control. The cheese vector's transfer is also grouped by
the distance, in world tiles, between the source maze's cheese and the steered maze's cheese
(published: it transfers only within about 2 tiles): ``cheese_vector/transfer/distance<=2/…``,
``…/distance=2-4/…``, ``…/distance>8/…`` for ``transfer_distance_edges: [2, 4, 8]``, each over
the (source, steered maze) pairs in that bin. The metric is the folded action probability of
the first move of the shortest path from the decision square to the cheese (``p_cheese``) and to
the inner top-right corner (``p_top_right``), reported as median (order-statistic interval) and
mean (t interval) over seeded mazes with a decision square, with the paired change against the
unedited policy: in probability (``…/change``) and in log-probability (``…/log_change``, natural
log), which still measures an edit where the policy is already nearly sure (P(cheese-ward) ~ 1e-6
cannot fall by 0.1). Every maze is one independent unit, except in the transfer: there each maze
is a source in several pairs and steered in several, so the transfer means and changes (overall
and per distance bin) carry the two-way cluster-robust interval over source and steered maze
(``stats.two_way_cluster_mean``; n = the smaller number of mazes on either side), and the
transfer median is the median of each steered maze's mean over its sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from shardlab.bars import progress_kwargs
from shardlab.envs import maze_geometry, maze_state
from shardlab.envs.eval_mazes import EvalMaze, eval_mazes
from shardlab.evals.maze import common
from shardlab.evals.maze.render import mark_square, plot_maze, plot_vector_field
from shardlab.evals.maze.vector_field import vector_field
from shardlab.evals.suite import stats
from shardlab.evals.suite.base import Eval, register
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.results import Result
from shardlab.figures import write_png_atomic
from shardlab.models.hooks import add, hooked

START = maze_geometry.START


@dataclass
class Vectors:
    """Per-maze steering vectors, each (N, C, H, W) at the steered layer."""

    cheese: torch.Tensor
    top_right: torch.Tensor


def cheese_vector(policy: torch.nn.Module, states: list[bytes], obs: str, layer: str) -> torch.Tensor:
    """Activations with the cheese minus without it (N, C, H, W), mouse on the start square."""
    at_start = [common.at_square(s, START) for s in states]
    without = [maze_state.without_cheese(s) for s in at_start]
    acts = common.layer_activations(policy, at_start + without, obs, layer)
    return acts[:len(states)] - acts[len(states):]


def top_right_vector(policy: torch.nn.Module, states: list[bytes], obs: str, layer: str) -> torch.Tensor:
    """Activations with the top-right corridor opened minus the maze as it is (N, C, H, W), mouse on
    the start square; ValueError for a maze that fills its world (no padding to open)."""
    at_start = [common.at_square(s, START) for s in states]
    opened = [common.with_top_right_path(s) for s in at_start]
    if any(s is None for s in opened):
        raise ValueError("the top-right vector needs wall padding around the maze; use mazes "
                         "smaller than the world (max_size below the world side)")
    acts = common.layer_activations(policy, opened + at_start, obs, layer)
    return acts[:len(states)] - acts[len(states):]


def random_like(vectors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian vectors with each row rescaled to the L2 norm of the matching row of ``vectors``."""
    noise = torch.randn(vectors.shape, generator=generator, dtype=vectors.dtype)
    norms = vectors.flatten(1).norm(dim=1)
    return noise * (norms / noise.flatten(1).norm(dim=1)).view(-1, *[1] * (vectors.dim() - 1))


@dataclass(frozen=True)
class DecisionSet:
    """Mazes seen with the mouse on their decision squares, and the two moves that matter there."""

    states: list[bytes]  # mouse on the decision square
    cheese_move: np.ndarray  # (N,) folded move towards the cheese
    top_right_move: np.ndarray  # (N,) folded move towards the inner top-right corner

    @classmethod
    def of(cls, states: list[bytes]) -> "DecisionSet":
        """The decision-square view of ``states`` (each must have a decision square)."""
        at, cheese_moves, corner_moves = [], [], []
        for state in states:
            inner = maze_state.inner_grid(state)
            cheese = maze_state.cheese_square(state)
            decision = maze_geometry.decision_square(inner, cheese)
            if decision is None:
                raise ValueError("every maze of a DecisionSet needs a decision square")
            at.append(common.at_square(state, decision))
            cheese_moves.append(common.first_move(inner, decision, cheese))
            corner_moves.append(common.first_move(inner, decision, maze_geometry.corner(inner)))
        return cls(at, np.array(cheese_moves), np.array(corner_moves))


def decision_probs(policy: torch.nn.Module, decisions: DecisionSet, obs: str, layer: str,
                   vectors: Optional[torch.Tensor] = None, coefficient: float = 1.0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(P(cheese-ward move), P(top-right-ward move)) at each maze's decision square, with
    ``coefficient · vectors[i]`` added at ``layer`` for maze i (no edit when vectors is None)."""
    edits = None if vectors is None else {layer: add(vectors, coefficient)}
    probs = common.folded_probs(policy, decisions.states, obs, edits)
    rows = np.arange(len(decisions.states))
    return probs[rows, decisions.cheese_move], probs[rows, decisions.top_right_move]


def log_probability(probs: np.ndarray) -> np.ndarray:
    """Natural log of probabilities, floored at the smallest normal float32 (a softmax underflow)."""
    return np.log(np.maximum(np.asarray(probs, dtype=np.float64), np.finfo(np.float32).tiny))


@dataclass(frozen=True)
class Transfer:
    """Every (source, steered maze) pair of a transfer run: maze ``target[p]`` steered by the
    vector of maze ``source[p]``, its cheese ``distance[p]`` world tiles from the source's cheese."""

    target: np.ndarray
    source: np.ndarray
    distance: np.ndarray
    p_cheese: np.ndarray
    p_top_right: np.ndarray

    def per_maze(self) -> tuple[np.ndarray, np.ndarray]:
        """(P(cheese), P(top-right)) of each steered maze, averaged over its sources."""
        count = np.bincount(self.target)
        return (np.bincount(self.target, self.p_cheese) / count, np.bincount(self.target, self.p_top_right) / count)


def cheese_distance(source: bytes, target: bytes) -> float:
    """Euclidean distance in world tiles between two mazes' cheeses (the activations are laid out
    over the world, so mazes of different sizes are compared where their cheeses sit in it)."""
    squares = []
    for state in (source, target):
        margin = maze_state.layout(state).margin
        x, y = maze_state.cheese_square(state)
        squares.append((x + margin, y + margin))
    return maze_geometry.euclidean(*squares)


def transfer(policy: torch.nn.Module, decisions: DecisionSet, states: list[bytes], obs: str, layer: str,
             vectors: torch.Tensor, coefficient: float, sources: int) -> Optional[Transfer]:
    """Each maze steered by the vectors of the ``sources`` mazes before it (cyclically); None with
    fewer than two mazes."""
    n = len(vectors)
    shifts = range(1, min(sources, n - 1) + 1)
    if not shifts:
        return None
    parts = []
    for shift in shifts:
        source = (np.arange(n) - shift) % n  # torch.roll(vectors, shift)[i] is vectors[i − shift]
        p_cheese, p_top_right = decision_probs(policy, decisions, obs, layer, torch.roll(vectors, shift, dims=0),
                                               coefficient)
        distance = np.array([cheese_distance(states[j], states[i]) for i, j in enumerate(source)])
        parts.append((np.arange(n), source, distance, p_cheese, p_top_right))
    return Transfer(*(np.concatenate(column) for column in zip(*parts)))


def distance_bins(edges: list[float]) -> list[str]:
    """Labels of the distance bins [0, e0], (e0, e1], ..., (e_last, ∞)."""
    inner = [f"distance={low:g}-{high:g}" for low, high in zip(edges, edges[1:])]
    return [f"distance<={edges[0]:g}", *inner, f"distance>{edges[-1]:g}"]


def bin_of(distances: np.ndarray, edges: list[float]) -> np.ndarray:
    """The bin index (into :func:`distance_bins`) of each distance."""
    return np.searchsorted(np.asarray(edges, dtype=float), distances, side="left")


def moved_cheese(maze: EvalMaze, shift: int, rng: np.random.Generator) -> Optional[bytes]:
    """The maze with its cheese moved to a random square ``shift`` path steps from where it was
    (not the start, and still with a decision square); None if there is no such square."""
    inner = maze_state.inner_grid(maze.state)
    dist = maze_geometry.distances_from(inner, maze.cheese)
    ys, xs = np.nonzero(dist == shift)
    squares = [(int(x), int(y)) for x, y in zip(xs, ys) if (x, y) != START]
    for k in rng.permutation(len(squares)):
        moved = maze_state.with_cheese_at(maze.state, squares[k])
        if maze_geometry.decision_square(maze_state.inner_grid(moved), squares[k]) is not None:
            return moved
    return None


@register("steering")
class Steering(Eval):
    """Cheese and top-right vectors: same maze, transfer, moved cheese, random control, scan."""

    kinds = ("ppo",)
    layer_fields = ("layer",)
    version = 2  # 2: 95% intervals over mazes; transfer rows two-way clustered (source × steered maze)
    headline = ("cheese_vector/p_cheese/change", "cheese_vector/p_cheese/change_minus_random")

    @dataclass
    class Config:
        """Which mazes, which layer, which coefficients."""

        mazes: int = 50  # seeded mazes with a decision square
        layer: str = common.DEFAULT_LAYER
        cheese_coefficient: float = -1.0
        top_right_coefficient: float = 1.0
        transfer_sources: int = 4  # vectors from this many other mazes are applied to each maze
        transfer_distance_edges: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0])  # tiles
        max_shift: int = 3  # K: the cheese vector applied with the cheese moved 1..K path steps
        coefficients: list[float] = field(default_factory=lambda: [-10.0, -5.0, -2.0, -1.0, -0.5, 0.0,
                                                                   0.5, 1.0, 2.0, 5.0, 10.0])
        field_mazes: int = 3  # vector-field PNGs before/after steering
        min_size: Optional[int] = None  # default: the training min (env.min_maze_size, 3 when null)
        max_size: Optional[int] = None  # default: the training max, below the world side

        def __post_init__(self) -> None:
            if self.mazes < 1 or not self.coefficients:
                raise ValueError("steering needs mazes >= 1 and at least one coefficient")
            if min(self.transfer_sources, self.max_shift, self.field_mazes) < 0:
                raise ValueError("steering transfer_sources, max_shift and field_mazes must be >= 0")
            edges = self.transfer_distance_edges
            if not edges or min(edges) < 0 or any(b <= a for a, b in zip(edges, edges[1:])):
                raise ValueError(f"steering transfer_distance_edges must be increasing distances >= 0, got {edges}")
            if self.max_size is not None and self.max_size < 3:
                raise ValueError(f"steering.max_size must be >= 3 (the smallest maze) or null, got {self.max_size}")

    def check(self, train_config) -> None:
        """Refuse before anything runs when no maze fits min_size/max_size."""
        cfg, env = self.config, common.train_env(train_config)
        common.require_mazes("steering", cheese="anywhere", region=5, min_size=cfg.min_size or env.min_size,
                             max_size=min(cfg.max_size or env.max_size, env.world_dim - 2),
                             require_decision_square=True, mode=env.mode)

    def run(self, ctx: EvalContext) -> Result:
        """Compute the vectors on seeded mazes and measure every condition at the decision square."""
        cfg, policy, env = self.config, ctx.policy, common.train_env(ctx.train_config)
        max_size = min(cfg.max_size or env.max_size, env.world_dim - 2)  # the top-right path needs padding
        mazes = eval_mazes(ctx.count(cfg.mazes), ctx.seed, cheese="anywhere", min_size=cfg.min_size or env.min_size,
                           max_size=max_size, require_decision_square=True, mode=env.mode)
        states = [m.state for m in mazes]
        steps = 6 + cfg.max_shift + len(cfg.coefficients) + min(cfg.field_mazes, len(mazes))
        bar = tqdm(total=steps, desc="steering", disable=not ctx.progress, **progress_kwargs())
        vectors = Vectors(cheese_vector(policy, states, env.obs, cfg.layer),
                          top_right_vector(policy, states, env.obs, cfg.layer))
        generator = torch.Generator().manual_seed(ctx.seed)
        random = Vectors(random_like(vectors.cheese, generator), random_like(vectors.top_right, generator))
        decisions = DecisionSet.of(states)
        measure = lambda vecs=None, coeff=1.0: decision_probs(policy, decisions, env.obs, cfg.layer, vecs, coeff)
        result = Result()
        for name, vecs in (("cheese_vector", vectors.cheese), ("top_right_vector", vectors.top_right)):
            norms = vecs.flatten(1).norm(dim=1).numpy()
            result.add(f"{name}/norm", stats.mean(norms, "mazes"))
        result.add("layer_size", vectors.cheese[0].numel(), kind="count")

        original = measure()
        self._add(result, "original", original)
        bar.update(1)
        conditions = [("cheese_vector", vectors.cheese, random.cheese, cfg.cheese_coefficient),
                      ("top_right_vector", vectors.top_right, random.top_right, cfg.top_right_coefficient)]
        for name, vecs, noise, coeff in conditions:
            steered = measure(vecs, coeff)
            self._add(result, name, steered, original)
            bar.update(1)
            control = measure(noise, coeff)
            self._add(result, f"{name}/random", control, original)
            bar.update(1)
            # beyond a random vector of the same norm, maze by maze: (steered − original) −
            # (random − original) = steered − random, paired over mazes
            for position, quantity in enumerate(("p_cheese", "p_top_right")):
                result.add(f"{name}/{quantity}/change_minus_random",
                           stats.paired_difference(steered[position], control[position]))
            pairs = transfer(policy, decisions, states, env.obs, cfg.layer, vecs, coeff, cfg.transfer_sources)
            if pairs is not None:
                self._add_transfer(result, f"{name}/transfer", pairs, original, median=True)
                if name == "cheese_vector":
                    by_distance = self._add_by_distance(result, f"{name}/transfer", pairs, original)
                    result.artifacts.append(self._distance_png(ctx, by_distance))
        self._moved(result, ctx, mazes, vectors.cheese, bar)
        self._scan(result, ctx, measure, vectors, random, bar)
        for index in range(min(cfg.field_mazes, len(mazes))):
            result.artifacts.append(self._fields_png(ctx, mazes[index], vectors, index))
            bar.update(1)
        bar.close()
        return result

    def _add_by_distance(self, result: Result, prefix: str, pairs: Transfer,
                         original: tuple[np.ndarray, np.ndarray]) -> dict[str, dict[str, stats.Estimate]]:
        """Per distance bin: P(cheese) and P(top-right) over its (source, steered maze) pairs and the
        change from the steered maze's unedited probabilities, two-way clustered; returns the
        estimates for the PNG."""
        edges = list(self.config.transfer_distance_edges)
        bins = bin_of(pairs.distance, edges)
        return {label: self._add_transfer(result, f"{prefix}/{label}", pairs, original, bins == index)
                for index, label in enumerate(distance_bins(edges))}

    @staticmethod
    def _add_transfer(result: Result, prefix: str, pairs: Transfer, original: tuple[np.ndarray, np.ndarray],
                      mask: Optional[np.ndarray] = None, median: bool = False) -> dict[str, stats.Estimate]:
        """Mean, paired change and log change of each probability over the pairs in ``mask`` (all
        by default): a maze is the source of several pairs and steered in several, so each interval
        is two-way clustered by source and steered maze. With ``median``, the median of each
        steered maze's mean over its sources. Returns the P(cheese) mean and change."""
        keep = np.ones(len(pairs.target), bool) if mask is None else mask
        source, target = pairs.source[keep], pairs.target[keep]
        shown = {}
        for position, quantity in enumerate(("p_cheese", "p_top_right")):
            values = (pairs.p_cheese, pairs.p_top_right)[position][keep]
            before = original[position][target]
            if median:
                per_maze = pairs.per_maze()[position]
                result.add(f"{prefix}/{quantity}/median", replace(
                    stats.median(per_maze, "mazes"),
                    note="the median of each steered maze's mean over its sources; those share sources, so "
                         "this interval (made for independent mazes) is too narrow"))
            samples = {"mean": values, "change": values - before,
                       "log_change": log_probability(values) - log_probability(before)}
            for metric, sample in samples.items():
                if not len(sample):
                    estimate = stats.undefined("no (source, steered maze) pairs here", 0, "mazes", "two-way cluster")
                else:
                    estimate = stats.two_way_cluster_mean(sample, source, target, "mazes")
                result.add(f"{prefix}/{quantity}/{metric}", estimate)
                if quantity == "p_cheese":
                    shown[metric] = estimate
        return shown

    def _distance_png(self, ctx: EvalContext, by_distance: dict) -> str:
        """The transferred cheese vector's P(cheese) and its change, per cheese-distance bin."""
        fig, axes = common.new_panels(2, size_inches=4.5)
        labels = list(by_distance)
        positions = np.arange(len(labels))
        for ax, metric, ylabel in ((axes[0], "mean", "P(cheese) at the decision square (mean, 95% CI)"),
                                   (axes[1], "change", "change from the unedited policy (mean, 95% CI)")):
            estimates = [by_distance[label][metric] for label in labels]
            ax.bar(positions, np.nan_to_num([e.value for e in estimates]), yerr=stats.error_bars(estimates),
                   color="#d4a017", capsize=2)
            for x, e in zip(positions, estimates):
                ax.annotate(f"n={e.n}", (x, 0), ha="center", va="bottom", fontsize=7)
            ax.set_xticks(positions, [label.removeprefix("distance") for label in labels], fontsize=8)
            ax.set_xlabel("distance between the source's and the steered maze's cheese (tiles)", fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.axhline(0, color="black", lw=0.6)
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle(f"cheese vector × {self.config.cheese_coefficient:g} from other mazes, {self.config.layer}; "
                     "n = mazes (two-way clustered)", fontsize=9)
        fig.tight_layout()
        return write_png_atomic(fig, ctx.artifact("transfer_by_distance.png"))

    def _moved(self, result: Result, ctx: EvalContext, mazes: list[EvalMaze], vectors: torch.Tensor,
               bar: tqdm) -> None:
        """The cheese vector of each maze applied to the same maze with the cheese moved k steps."""
        cfg, env = self.config, common.train_env(ctx.train_config)
        rng = np.random.default_rng(ctx.seed)
        for shift in range(1, cfg.max_shift + 1):
            moved = [(index, moved_cheese(maze, shift, rng)) for index, maze in enumerate(mazes)]
            kept = [(index, state) for index, state in moved if state is not None]
            bar.update(1)
            if not kept:
                continue
            decisions = DecisionSet.of([state for _, state in kept])
            rows = torch.tensor([index for index, _ in kept])
            before = decision_probs(ctx.policy, decisions, env.obs, cfg.layer)
            after = decision_probs(ctx.policy, decisions, env.obs, cfg.layer, vectors[rows], cfg.cheese_coefficient)
            self._add(result, f"cheese_moved/k={shift}/original", before, quantities=("p_cheese",))
            self._add(result, f"cheese_moved/k={shift}/cheese_vector", after, before, quantities=("p_cheese",))

    def _scan(self, result: Result, ctx: EvalContext, measure, vectors: Vectors, random: Vectors,
              bar: tqdm) -> None:
        """P(cheese) and P(top-right) against the injection coefficient (a PNG with both, and the
        random-vector control); metrics for each vector's own target."""
        coefficients = sorted(self.config.coefficients)
        primary = {"cheese_vector": "p_cheese", "top_right_vector": "p_top_right"}
        curves: dict[str, list[tuple[stats.Estimate, stats.Estimate]]] = {}
        for coeff in coefficients:
            for name, vecs, noise in (("cheese_vector", vectors.cheese, random.cheese),
                                      ("top_right_vector", vectors.top_right, random.top_right)):
                for label, probs in ((name, measure(vecs, coeff)), (f"{name}/random", measure(noise, coeff))):
                    for quantity, values in zip(("p_cheese", "p_top_right"), probs):
                        middle, mean = stats.median(values, "mazes"), stats.mean(values, "mazes")
                        curves.setdefault(f"{label}/{quantity}", []).append((middle, mean))
                        if label == name and quantity == primary[name]:  # both curves are in the PNG
                            result.add(f"scan/{label}/coeff={coeff:g}/{quantity}/median", middle)
                            result.add(f"scan/{label}/coeff={coeff:g}/{quantity}/mean", mean)
            bar.update(1)
        result.artifacts.append(self._scan_png(ctx, coefficients, curves))

    def _scan_png(self, ctx: EvalContext, coefficients: list[float], curves: dict) -> str:
        fig, axes = common.new_panels(2, size_inches=4.5)
        colours = {"p_cheese": "#d4a017", "p_top_right": "#1f4e9c"}
        for ax, name in zip(axes, ("cheese_vector", "top_right_vector")):
            for quantity, colour in colours.items():
                curve = curves[f"{name}/{quantity}"]
                means = [mean for _, mean in curve]
                low = [m.value if m.ci_low is None else m.ci_low for m in means]
                high = [m.value if m.ci_high is None else m.ci_high for m in means]
                ax.plot(coefficients, [middle.value for middle, _ in curve], "o-", color=colour,
                        label=f"{quantity} median")
                ax.plot(coefficients, [m.value for m in means], "--", color=colour, label=f"{quantity} mean, 95% CI")
                ax.fill_between(coefficients, low, high, color=colour, alpha=0.2)
                ax.plot(coefficients, [middle.value for middle, _ in curves[f"{name}/random/{quantity}"]], ":",
                        color=colour, alpha=0.7, label=f"{quantity} median, random vector")
            ax.set_xlabel("injection coefficient")
            ax.set_ylabel("probability at the decision square")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{name.replace('_', ' ')} at {self.config.layer}", fontsize=9)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        return write_png_atomic(fig, ctx.artifact("coefficient_scan.png"))

    def _fields_png(self, ctx: EvalContext, maze: EvalMaze, vectors: Vectors, index: int) -> str:
        """Vector fields of one maze: unedited, with the cheese vector, with the top-right vector."""
        cfg, env = self.config, common.train_env(ctx.train_config)
        panels = [("original", None, 0.0),
                  (f"cheese vector × {cfg.cheese_coefficient:g}", vectors.cheese[index:index + 1], cfg.cheese_coefficient),
                  (f"top-right vector × {cfg.top_right_coefficient:g}", vectors.top_right[index:index + 1],
                   cfg.top_right_coefficient)]
        fig, axes = common.new_panels(len(panels), size_inches=4.0)
        for ax, (title, vector, coeff) in zip(axes, panels):
            edits = None if vector is None else {cfg.layer: add(vector, coeff)}
            with hooked(ctx.policy, edits=edits):
                vf = vector_field(ctx.policy, maze.state, obs=env.obs)
            plot_maze(ax, vf.inner)
            plot_vector_field(ax, vf)
            mark_square(ax, maze.decision_square, "D")
            ax.set_title(title, fontsize=9)
        fig.suptitle(f"maze {index} ({maze.maze_dim}×{maze.maze_dim}), layer {cfg.layer}; D = decision square",
                     fontsize=9)
        fig.tight_layout()
        return write_png_atomic(fig, ctx.artifact(f"vector_fields_maze{index}.png"))

    @staticmethod
    def _add(result: Result, prefix: str, probs: tuple[np.ndarray, np.ndarray],
             original: Optional[tuple[np.ndarray, np.ndarray]] = None,
             quantities: tuple[str, ...] = ("p_cheese", "p_top_right")) -> None:
        """Median and mean of each probability over mazes, and the paired change from ``original``."""
        for position, quantity in enumerate(("p_cheese", "p_top_right")):
            if quantity not in quantities:
                continue
            result.add(f"{prefix}/{quantity}/median", stats.median(probs[position], "mazes"))
            result.add(f"{prefix}/{quantity}/mean", stats.mean(probs[position], "mazes"))
            if original is not None:
                result.add(f"{prefix}/{quantity}/change", stats.paired_difference(probs[position], original[position]))
                # a sure policy sits on the floor of probability space (P ~ 1e-6 cannot fall 0.1);
                # the log-probability change still shows what an edit does there
                result.add(f"{prefix}/{quantity}/log_change", stats.paired_difference(
                    log_probability(probs[position]), log_probability(original[position])))
