"""Linear probes at chosen layers of a maze policy, with controls: where the cheese is, and whether
the policy will reach it.

Four probes per layer, each trained on the activations of seeded mazes (cheese anywhere):

* ``cell`` — multinomial logistic regression on the flattened activation: which activation cell
  holds the cheese (for a flat layer such as ``relufc_out``: which world tile);
* ``xy`` — ridge regression on the flattened activation to the cheese's world tile (row, column);
  right = both rounded coordinates right; also the mean absolute error in tiles and R²;
* ``conv`` — the convolutional probe of the published analyses: one logistic regression over the
  channels, shared by all positions (every (maze, cell) pair is a sample, label = this cell holds
  the cheese); a maze's answer is its highest-scoring cell among the cells its inner maze covers.
  Spatial layers only;
* ``outcome`` — "will it reach the cheese": logistic regression on the flattened activation with
  the mouse on its start square, label = the policy's episode from that maze (sampled actions, or
  greedy moves with ``greedy``) reached the cheese (``envs.episodes.first_episodes``).

Accuracy is at tile resolution: a probe that names an activation cell names the tile of this maze
in that cell where the training mazes' cheese lay most often, and a maze counts as right when that
is the cheese's tile. A cell can hold many tiles (at ``block3`` on a 15-tile world one cell holds a
whole 7×7 maze, and every cell probe is "right" there), so cell-level accuracy alone says little;
it is reported beside (``cell_accuracy``, ``cell_chance``).

Selection apart from confirmation: the mazes are split by layout (mazes with the same walls, the
same procgen level whatever the cheese square, all land in one part) into training mazes (fit the
probes; each probe's regularisation chosen from ``regularization`` by cross-validation on them
only, folds grouped by layout), selection mazes (score every layer and probe; choose) and
confirmation mazes (report only the chosen ones), each maze size dealt to the three parts in
proportion. The per-layer rows are measured on the selection mazes; ``best/*``, ``PROBE/best_*``
and the outcome headline on the confirmation mazes.

Controls: the same probe on a randomly initialised network of the same architecture (seeded), and
on the trained network with the labels permuted across mazes (within each part: no function of the
input can predict them, so this measures chance plus overfitting). A conv label is a maze's cheese
cell *and* its candidate cells, so both move together. ``chance`` is the accuracy of the best
constant guess fitted on the training mazes: the most frequent training cheese tile among the
maze's tiles (the outcome probe: the majority outcome). A layer where a constant guess of the
probe's label (or tile) is right on ≥ 99% of the selection mazes is ``uninformative``: never chosen.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning, FitFailedWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from shardlab.bars import progress_kwargs
from shardlab.envs import maze_geometry
from shardlab.envs.episodes import first_episodes
from shardlab.envs.eval_mazes import EvalMaze
from shardlab.envs.maze import MazeEnvConfig
from shardlab.evals.maze.common import (TrainEnv, activation_square_cell, at_square, new_panels, policy_input,
                                        train_env)
from shardlab.evals.maze.inputs import (cached_activations, check_layers, check_mouse_placement, fresh_network,
                                        interp_mazes, maze_cells, short_name, world_tile)
from shardlab.evals.maze.splits import layout_key
from shardlab.evals.suite import stats
from shardlab.evals.suite.base import Eval, register
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.results import Result
from shardlab.figures import write_png_atomic

PROBES = ("cell", "xy", "conv", "outcome")
LOCATION_PROBES = PROBES[:3]  # the cheese-location probes, among which ``best`` is chosen
CONDITIONS = ("trained", "random_init", "shuffled")
DEFAULT_LAYERS = ("embedder.block1.maxpool_out", "embedder.block1.res2.resadd_out",
                  "embedder.block2.res1.resadd_out", "embedder.block2.res2.resadd_out",
                  "embedder.block3.res2.resadd_out", "embedder.relufc_out")
DEFAULT_GRID = (0.01, 0.1, 1.0, 10.0)  # C of the logistic probes; the ridge uses α = 1 / C
UNINFORMATIVE = 0.99  # a constant guess right this often leaves a probe nothing to find
TRAIN, SELECTION, CONFIRMATION = 0, 1, 2


# -- the probes (plain functions on arrays, so tests can plant a signal) --------------------------
def layout_ids(mazes: Sequence[EvalMaze]) -> np.ndarray:
    """(N,) integer per maze, equal exactly when two mazes have the same size and walls."""
    keys = [layout_key(m.state) for m in mazes]
    index = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    return np.array([index[key] for key in keys])


def layout_split(layouts: np.ndarray, selection_fraction: float, confirmation_fraction: float, seed: int,
                 strata: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, selection, confirmation) sorted maze indices with no layout in two of them.

    Within each stratum (``strata``: a per-maze value such as the maze size, constant over a
    layout) the layouts are shuffled and dealt to the parts in proportion to the fractions
    (systematic sampling from a random start), so every size is represented in each part; a part
    left empty takes one layout from the largest.
    """
    names, inverse = np.unique(layouts, return_inverse=True)
    if len(names) < 3:
        raise ValueError(f"the {len(layouts)} probe mazes have {len(names)} layout(s); the train, selection "
                         "and confirmation parts need at least one each: raise probes.mazes")
    first = np.array([np.flatnonzero(inverse == g)[0] for g in range(len(names))])
    stratum = np.zeros(len(names)) if strata is None else np.asarray(strata)[first]
    rng = np.random.default_rng(seed)
    part = np.full(len(names), TRAIN)
    for value in np.unique(stratum):
        members = rng.permutation(np.flatnonzero(stratum == value))
        position = (np.arange(len(members)) + rng.random()) / len(members)
        part[members] = np.where(position < confirmation_fraction, CONFIRMATION,
                                 np.where(position < confirmation_fraction + selection_fraction, SELECTION, TRAIN))
    for empty in (TRAIN, SELECTION, CONFIRMATION):
        if not (part == empty).any():
            donor = int(np.bincount(part, minlength=3).argmax())
            part[rng.choice(np.flatnonzero(part == donor))] = empty
    of_maze = part[inverse]
    return tuple(np.flatnonzero(of_maze == p) for p in (TRAIN, SELECTION, CONFIRMATION))  # type: ignore[return-value]


def classification_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, groups: np.ndarray,
                         grid: Sequence[float] = DEFAULT_GRID, folds: int = 3) -> tuple[np.ndarray, float]:
    """Predicted test classes of a standardised, L2-regularised multinomial logistic regression, and
    its C, chosen from ``grid`` by cross-validated accuracy on the training samples (folds grouped
    by ``groups``); the only class (and NaN) when training has one."""
    if len(np.unique(train_y)) < 2:
        return np.full(len(test_x), train_y[0]), math.nan
    model = Pipeline([*_scale(train_x), ("model", LogisticRegression(max_iter=1000))])
    return _fit_best(model, "model__C", grid, train_x, train_y, groups, folds, "accuracy", test_x)


def regression_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, groups: np.ndarray,
                     grid: Sequence[float] = DEFAULT_GRID, folds: int = 3) -> tuple[np.ndarray, float]:
    """Predicted test targets (N, k) of a standardised ridge regression, and its strength α, chosen
    from 1 / ``grid`` by cross-validated squared error on the training samples (grouped folds)."""
    model = Pipeline([*_scale(train_x), ("model", Ridge())])
    alphas = sorted(1.0 / c for c in grid)
    return _fit_best(model, "model__alpha", alphas, train_x, train_y, groups, folds, "neg_mean_squared_error",
                     test_x)


def _fit_best(model: Pipeline, parameter: str, grid: Sequence[float], train_x: np.ndarray, train_y: np.ndarray,
              groups: np.ndarray, folds: int, scoring: str, test_x: np.ndarray) -> tuple[np.ndarray, float]:
    """Grid search over ``parameter`` with grouped folds (ties: the first grid value), refit on all
    training samples; one grid value needs no search, nor can fewer than two groups be searched
    (then the grid's middle value)."""
    splits = _folds(groups, folds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FitFailedWarning)  # a fold with one class scores 0
        warnings.simplefilter("ignore", UserWarning)  # classes missing from a fold
        if len(grid) == 1 or splits is None:
            value = float(grid[len(grid) // 2])
            model.set_params(**{parameter: value}).fit(train_x, train_y)
            return model.predict(test_x), value
        search = GridSearchCV(model, {parameter: list(grid)}, cv=splits, scoring=scoring, error_score=0.0)
        search.fit(train_x, train_y)
    return search.predict(test_x), float(search.best_params_[parameter])


def _folds(groups: np.ndarray, folds: int) -> Optional[list[tuple[np.ndarray, np.ndarray]]]:
    """GroupKFold (train, validation) index pairs, at most as many folds as groups; None for < 2."""
    count = min(folds, len(np.unique(groups)))
    if count < 2:
        return None
    return list(GroupKFold(n_splits=count).split(np.zeros(len(groups)), groups=groups))


def _scale(train_x: np.ndarray) -> list:
    """Standardisation, then (with more features than samples) a rotation onto the training
    samples' span: an L2-regularised linear model's weights lie in that span, so the fit is the
    same, only cheaper (16k-dimensional RGB activations). PCA keeps min(samples, features)
    components, so it fits the smaller cross-validation folds too."""
    steps: list = [("scale", StandardScaler())]
    if train_x.shape[1] > len(train_x):
        steps.append(("rotate", PCA(n_components=None, svd_solver="full")))
    return steps


def convolutional_probe(train_acts: np.ndarray, train_cells: np.ndarray, train_masks: np.ndarray,
                        test_acts: np.ndarray, test_masks: np.ndarray, regularization: float = 0.1
                        ) -> np.ndarray:
    """Predicted (row, col) cells (N, 2) of the test mazes: a logistic regression on the C channels
    of each cell (positions folded into the batch; label = the cell is ``train_cells[n]``), then
    each test maze's best-scoring cell among its ``test_masks`` (N, H, W) candidates.

    ``*_acts`` are (N, C, H, W); ``train_masks`` picks the (maze, cell) samples to train on.
    """
    n, channels, height, width = train_acts.shape
    rows, cols = np.indices((height, width))
    positive = (rows[None] == train_cells[:, 0, None, None]) & (cols[None] == train_cells[:, 1, None, None])
    per_cell = train_acts.transpose(0, 2, 3, 1)  # (N, H, W, C)
    x, y = per_cell[train_masks], positive[train_masks]
    if y.all() or not y.any():
        scores = np.zeros(test_masks.shape)
    else:
        model = Pipeline([("scale", StandardScaler()),
                          ("model", LogisticRegression(C=regularization, max_iter=1000, class_weight="balanced"))])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x, y)
        test_cells = test_acts.transpose(0, 2, 3, 1).reshape(-1, channels)
        scores = model.decision_function(test_cells).reshape(test_masks.shape)
    scores = np.where(test_masks, scores, -np.inf)
    best = scores.reshape(len(scores), -1).argmax(1)
    return np.stack(np.unravel_index(best, (height, width)), 1)


def choose_conv_regularization(acts: np.ndarray, cells: np.ndarray, masks: np.ndarray, groups: np.ndarray,
                               grid: Sequence[float] = DEFAULT_GRID, folds: int = 3) -> float:
    """The C of ``grid`` whose convolutional probe finds the most cheese cells (mean over grouped
    folds of the training mazes; ties: the first); the grid's middle value without folds."""
    splits = _folds(groups, folds)
    if len(grid) == 1 or splits is None:
        return float(grid[len(grid) // 2])
    accuracy = [np.mean([(convolutional_probe(acts[fit], cells[fit], masks[fit], acts[held], masks[held], c)
                          == cells[held]).all(1).mean() for fit, held in splits]) for c in grid]
    return float(grid[int(np.argmax(accuracy))])


@dataclass
class _Labels:
    """Per-maze targets: the cheese's world tile, its cell at each spatial layer, the outcome, and
    which tiles (and their cells) each maze covers."""

    tiles: np.ndarray  # (N, 2) world (row from the top, column)
    cells: dict[str, np.ndarray]  # layer → (N, 2) activation (row, col)
    masks: dict[str, np.ndarray]  # layer → (N, H, W) cells covered by each inner maze
    sizes: np.ndarray  # (N,) maze sizes
    world: int  # world side in tiles
    layouts: np.ndarray  # (N,) layout id (same walls, same id): the CV groups
    reached: Optional[np.ndarray] = None  # (N,) bool: the policy's episode reached the cheese
    regions: Optional[np.ndarray] = None  # (N, world, world) bool: the tiles of each inner maze
    tile_cells: dict[str, np.ndarray] = field(default_factory=dict)  # layer → (N, world, world) flat cell
    # index (row · W + col) of each tile of the inner maze, −1 outside it


@dataclass
class Scores:
    """One probe under one condition, per evaluated maze."""

    right: np.ndarray  # (N,) bool: the cheese's tile (outcome probe: the outcome) right
    regularization: float  # C (logistic probes) or α (ridge) chosen by CV on the training mazes
    cell_right: Optional[np.ndarray] = None  # (N,) bool: the activation cell right (cell, conv at spatial layers)
    predicted: Optional[np.ndarray] = None  # xy: (N, 2) predicted tile coordinates, unrounded
    target: Optional[np.ndarray] = None  # xy: (N, 2) the (permuted) cheese tiles

    def take(self, positions: np.ndarray) -> "Scores":
        """The scores of the mazes at ``positions`` (of the evaluated mazes)."""
        pick = lambda a: None if a is None else a[positions]  # noqa: E731
        return replace(self, right=self.right[positions], cell_right=pick(self.cell_right),
                       predicted=pick(self.predicted), target=pick(self.target))


def cheese_counts(tiles: np.ndarray, world: int) -> np.ndarray:
    """(world, world) how many of ``tiles`` (K, 2) lie on each world tile."""
    counts = np.zeros((world, world))
    np.add.at(counts, (tiles[:, 0], tiles[:, 1]), 1)
    return counts


def most_frequent_tile(candidates: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(N, 2) per maze the candidate tile ((N, world, world) bool) with the largest count (ties: the
    first in row-major order); (−1, −1) where a maze has no candidate."""
    n, world = len(candidates), counts.shape[0]
    flat = np.where(candidates, counts[None], -1.0).reshape(n, -1)
    tiles = np.stack(np.unravel_index(flat.argmax(1), (world, world)), 1)
    tiles[~candidates.reshape(n, -1).any(1)] = -1
    return tiles


def cells_to_tiles(cells: np.ndarray, side: int, tile_cells: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(N, 2) the tile each predicted activation cell (N, 2) names: of the maze's tiles in that cell
    (``tile_cells`` (N, world, world)), the one where training cheeses lay most often."""
    flat = cells[:, 0] * side + cells[:, 1]
    return most_frequent_tile(tile_cells == flat[:, None, None], counts)


def score_probe(probe: str, layer: str, acts: np.ndarray, labels: _Labels, perm: np.ndarray, train: np.ndarray,
                test: np.ndarray, grid: Sequence[float] = DEFAULT_GRID, folds: int = 3) -> Scores:
    """Per-test-maze scores of one probe fitted on ``train``, with the labels of maze ``perm[n]``
    given to maze n (identity, or the shuffled control): right at tile resolution (a predicted cell
    names its most frequent training cheese tile among the maze's tiles in it), and for a cell
    label also right at cell resolution."""
    flat = acts.reshape(len(acts), -1)
    groups = labels.layouts[train]
    tiles = labels.tiles[perm]
    if probe == "outcome":
        target = labels.reached[perm].astype(int)
        predicted, c = classification_probe(flat[train], target[train], flat[test], groups, grid, folds)
        return Scores(predicted == target[test], c)
    if probe == "xy":
        target = tiles.astype(float)
        predicted, alpha = regression_probe(flat[train], target[train], flat[test], groups, grid, folds)
        return Scores((np.rint(predicted) == target[test]).all(1), alpha, predicted=predicted, target=target[test])
    if layer not in labels.cells:  # a flat layer: the cell probe names a world tile
        target = tiles[:, 0] * labels.world + tiles[:, 1]
        predicted, c = classification_probe(flat[train], target[train], flat[test], groups, grid, folds)
        return Scores(predicted == target[test], c)
    side = acts.shape[-1]
    cells = labels.cells[layer][perm]
    if probe == "cell":
        target = cells[:, 0] * side + cells[:, 1]
        predicted, c = classification_probe(flat[train], target[train], flat[test], groups, grid, folds)
        predicted = np.stack(np.divmod(predicted, side), 1)
    else:
        # a maze's conv label is its cheese cell among its candidate cells: permute both together,
        # or a shuffled cheese cell may lie outside the candidates and the control scores below chance
        masks = labels.masks[layer][perm]
        c = choose_conv_regularization(acts[train], cells[train], masks[train], groups, grid, folds)
        predicted = convolutional_probe(acts[train], cells[train], masks[train], acts[test], masks[test], c)
    counts = cheese_counts(tiles[train], labels.world)
    named = cells_to_tiles(predicted, side, labels.tile_cells[layer][perm][test], counts)
    return Scores((named == tiles[test]).all(1), c, cell_right=(predicted == cells[test]).all(1))


def chance_right(probe: str, labels: _Labels, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """(N,) bool per test maze: the best constant guess fitted on the training mazes is right. The
    outcome probe: the majority training outcome; the others: the most frequent training cheese
    tile among the maze's tiles."""
    if probe == "outcome":
        majority = labels.reached[train].mean() >= 0.5
        return labels.reached[test] == majority
    guess = most_frequent_tile(labels.regions[test], cheese_counts(labels.tiles[train], labels.world))
    return (guess == labels.tiles[test]).all(1)


def cell_chance_right(probe: str, layer: str, labels: _Labels, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """(N,) bool per test maze: the best constant guess of the cheese's activation cell is right (the
    most frequent training cell; for ``conv`` the most frequent among the maze's candidate cells)."""
    cells, masks = labels.cells[layer], labels.masks[layer]
    counts = np.zeros(masks.shape[1:])
    np.add.at(counts, (cells[train, 0], cells[train, 1]), 1)
    allowed = masks[test] if probe == "conv" else np.ones_like(masks[test])
    guess = np.where(allowed, counts[None], -1).reshape(len(test), -1).argmax(1)
    return guess == cells[test, 0] * masks.shape[2] + cells[test, 1]


def r_squared(predicted: np.ndarray, target: np.ndarray) -> float:
    """R² of (N, 2) predictions, the mean over the two coordinates."""
    residual = ((predicted - target) ** 2).sum(0)
    total = ((target - target.mean(0)) ** 2).sum(0)
    return float(np.mean(1 - residual / np.maximum(total, 1e-12)))


def worst_size(right: np.ndarray, sizes: np.ndarray) -> stats.Estimate:
    """The accuracy (Wilson over mazes) of the maze size where it is lowest (ties: the lower
    interval end), the size named in the note."""
    per_size = {int(size): stats.proportion(right[sizes == size]) for size in np.unique(sizes)}
    if not per_size:
        return stats.undefined("no mazes", 0, "mazes", "wilson")
    size, estimate = min(per_size.items(), key=lambda item: (item[1].value, item[1].ci_low))
    return replace(estimate, note=f"{size}×{size} mazes, the worst of {len(per_size)} sizes")


def choose(criteria: dict[tuple[str, int], tuple[float, ...]], uninformative: set[tuple[str, int]]
           ) -> Optional[tuple[str, int]]:
    """The (probe, layer index) with the largest criterion among the informative ones (ties: the
    first given); None when none is left."""
    allowed = [(key, value) for key, value in criteria.items()
               if key not in uninformative and not any(math.isnan(v) for v in value)]
    return max(allowed, key=lambda item: item[1])[0] if allowed else None


def episode_outcomes(policy: torch.nn.Module, states: Sequence[bytes], env: TrainEnv, seed: int,
                     greedy: bool = False, channels_last: bool = False) -> np.ndarray:
    """(N,) bool: the policy's first episode from each state reached the cheese."""
    env_cfg = MazeEnvConfig(num_envs=len(states), distribution_mode=env.mode, obs=env.obs, rand_region=None,
                            max_maze_size=None, min_maze_size=None, seed=seed, backend=env.backend)
    episodes = first_episodes(policy, env_cfg, greedy=greedy, channels_last=channels_last, states=states)
    if len(episodes) != len(states):
        raise RuntimeError(f"only {len(episodes)} of {len(states)} outcome episodes finished")
    return np.array([episode.reached_cheese for episode in episodes])


# -- the eval ----------------------------------------------------------------------------------------
Fits = dict[tuple[str, int], dict[str, Scores]]  # (probe, layer index) → condition → scores


@register("probes")
class Probes(Eval):
    """Cell classification, x/y regression and convolutional probes for the cheese location, and the
    outcome probe, per layer, against a random-init network and shuffled labels, by maze size; the
    best layer and probe chosen on selection mazes and measured on confirmation mazes."""

    kinds = ("ppo",)
    layer_fields = ("layers",)
    version = 2  # 2: tile-resolution accuracy, selection and confirmation splits, intervals
    headline = ("best/accuracy", "best/vs_chance", "best/min_over_sizes")

    @dataclass
    class Config:
        """Probe data, layers, the split, the regularisation grid (C of the logistic probes, 1/α of
        the ridge; chosen by CV on the training mazes) and the outcome probe's episodes."""

        mazes: int = 400
        selection_fraction: float = 0.25  # of the layouts: every layer and probe scored, the best chosen
        confirmation_fraction: float = 0.25  # of the layouts: only the chosen ones measured
        layers: list[str] = field(default_factory=lambda: list(DEFAULT_LAYERS))
        mouse: str = "start"  # start, decision (mazes with a decision square) or random
        regularization: list[float] = field(default_factory=lambda: list(DEFAULT_GRID))
        cv_folds: int = 3
        outcome: bool = True  # play one episode per maze for the "will it reach the cheese" probe
        greedy: bool = False  # outcome episodes with greedy moves instead of sampled actions

        def __post_init__(self) -> None:
            check_mouse_placement(self.mouse)
            for key in ("selection_fraction", "confirmation_fraction"):
                if not 0 < getattr(self, key) < 1:
                    raise ValueError(f"probes.{key} must be in (0, 1), got {getattr(self, key)}")
            if self.selection_fraction + self.confirmation_fraction >= 1:
                raise ValueError("probes.selection_fraction + probes.confirmation_fraction must be < 1 (the rest "
                                 f"trains the probes), got {self.selection_fraction + self.confirmation_fraction}")
            if not self.regularization or any(c <= 0 for c in self.regularization):
                raise ValueError(f"probes.regularization must be a non-empty list of values > 0, "
                                 f"got {list(self.regularization)}")
            if self.cv_folds < 2:
                raise ValueError(f"probes.cv_folds must be >= 2, got {self.cv_folds}")
            if not self.layers:
                raise ValueError("probes.layers is empty; name at least one activation")
            if self.mazes < 1:
                raise ValueError(f"probes.mazes must be >= 1, got {self.mazes}")

    def run(self, ctx: EvalContext) -> Result:
        """Collect activations of the trained and a random-init network, fit every probe on the
        training mazes, choose on the selection mazes and confirm on the confirmation mazes."""
        cfg, env = self.config, train_env(ctx.train_config)
        check_layers(ctx.policy, cfg.layers)
        mazes = interp_mazes(env, max(6, ctx.count(cfg.mazes)), ctx.seed, cfg.mouse)
        random_net = fresh_network(ctx.train_config, ctx.seed)
        acts = self._activations(ctx.policy, random_net, [m.state for m in mazes], env.obs)
        labels = _labels(mazes, acts["trained"], env)
        probes = [p for p in PROBES if p != "outcome" or cfg.outcome]
        start_acts = acts
        if cfg.outcome:
            # the outcome is decided from the start square, whatever ``mouse`` says
            starts = [at_square(m.state, maze_geometry.START) for m in mazes]
            channels_last = bool(OmegaConf.select(ctx.train_config, "model.channels_last", default=False))
            labels.reached = episode_outcomes(ctx.policy, starts, env, ctx.seed, cfg.greedy, channels_last)
            if cfg.mouse != "start":
                start_acts = self._activations(ctx.policy, random_net, starts, env.obs)
        parts = layout_split(labels.layouts, cfg.selection_fraction, cfg.confirmation_fraction, ctx.seed,
                             labels.sizes)
        train, selection, confirmation = parts
        # every probe predicts both held-out parts from one fit; only the selection part chooses
        evaluated = np.concatenate([selection, confirmation])
        fits = self._fit(ctx, probes, labels, {"location": acts, "outcome": start_acts}, parts, evaluated)
        result = Result()
        at_confirmation = np.arange(len(selection), len(evaluated))
        chance = {probe: chance_right(probe, labels, train, evaluated) for probe in probes}
        table, by_size, criteria, uninformative = self._layer_rows(result, fits, labels, chance, train, selection)
        confirm = _Confirmation(result, fits, chance, at_confirmation, labels.sizes[confirmation], cfg.layers)
        for probe in probes:
            options = {key: value for key, value in criteria.items() if key[0] == probe}
            if probe == "outcome":
                confirm.report("outcome/", choose(options, uninformative), vs=("vs_majority", "vs_shuffled"))
            else:
                confirm.report(f"{probe}/best_", choose(options, uninformative))
        location = {key: value for key, value in criteria.items() if key[0] in LOCATION_PROBES}
        confirm.report("best/", choose(location, uninformative), vs=("vs_chance", "vs_shuffled"), name_probe=True)
        if cfg.outcome:
            result.add("outcome/p_cheese", stats.proportion(labels.reached))
        result.add("train_mazes", len(train), kind="count")
        result.add("selection_mazes", len(selection), kind="count")
        result.add("confirmation_mazes", len(confirmation), kind="count")
        result.add("layouts", len(np.unique(labels.layouts)), kind="count")
        result.artifacts.append(self._plot(ctx, cfg.layers, table, by_size))
        return result

    def _fit(self, ctx: EvalContext, probes: Sequence[str], labels: _Labels, acts: dict[str, dict],
             parts: Sequence[np.ndarray], evaluated: np.ndarray) -> Fits:
        """Every probe at every layer under every condition, fitted on the training mazes (``parts[0]``)
        and scored on the ``evaluated`` mazes; ``acts``: "location" / "outcome" → the activations."""
        cfg, n = self.config, len(labels.tiles)
        shuffle = shuffled_labels(n, parts, ctx.seed)
        fits: Fits = {}
        for index, layer in enumerate(tqdm(cfg.layers, desc="probes", disable=not ctx.progress, **progress_kwargs())):
            for probe in probes:
                if probe == "conv" and layer not in labels.cells:
                    continue  # a flat layer has no positions to fold
                source = acts["outcome" if probe == "outcome" else "location"]
                fits[probe, index] = {}
                for condition in CONDITIONS:
                    net = "random_init" if condition == "random_init" else "trained"
                    perm = shuffle if condition == "shuffled" else np.arange(n)
                    fits[probe, index][condition] = score_probe(probe, layer, source[net][layer], labels, perm,
                                                                parts[0], evaluated, cfg.regularization,
                                                                cfg.cv_folds)
        return fits

    def _layer_rows(self, result: Result, fits: Fits, labels: _Labels, chance: dict[str, np.ndarray],
                    train: np.ndarray, selection: np.ndarray
                    ) -> tuple[dict, dict, dict[tuple[str, int], tuple[float, ...]], set[tuple[str, int]]]:
        """Every probe and layer's rows on the selection mazes; (per-layer accuracies for the plot,
        conv accuracy by size for the plot, each candidate's selection criterion, the uninformative
        candidates). The criterion: the worst maze size's accuracy, then the accuracy (outcome:
        the accuracy)."""
        layers, at = self.config.layers, np.arange(len(selection))
        sizes = labels.sizes[selection]
        nan_row = lambda: [math.nan] * len(layers)  # noqa: E731
        table = {p: {c: nan_row() for c in (*CONDITIONS, "chance")} for p in PROBES}
        by_size = {p: {int(size): nan_row() for size in np.unique(sizes)} for p in PROBES}
        criteria, uninformative = {}, set()
        for (probe, index), conditions in fits.items():
            layer = layers[index]
            scores = {condition: found.take(at) for condition, found in conditions.items()}
            trained, guessed = scores["trained"], chance[probe][at]
            name = f"{probe}/{short_name(layer)}"
            result.add(f"{name}/accuracy", stats.proportion(trained.right), higher_is_better=True)
            result.add(f"{name}/random_init", stats.proportion(scores["random_init"].right))
            result.add(f"{name}/shuffled", stats.proportion(scores["shuffled"].right))
            result.add(f"{name}/selectivity", stats.paired_difference(trained.right, scores["shuffled"].right),
                       higher_is_better=True)
            result.add(f"{name}/chance", stats.proportion(guessed))
            constant = guessed.mean()
            if trained.cell_right is not None:
                cell_guessed = cell_chance_right(probe, layer, labels, train, selection)
                result.add(f"{name}/cell_accuracy", stats.proportion(trained.cell_right))
                result.add(f"{name}/cell_chance", stats.proportion(cell_guessed))
                constant = max(constant, cell_guessed.mean())
            if constant >= UNINFORMATIVE:
                uninformative.add((probe, index))
            result.add(f"{name}/uninformative", int(constant >= UNINFORMATIVE), kind="count")
            one_class = "one class among the training labels: nothing to regularise"
            result.add(f"{name}/regularization", trained.regularization, kind="setting",
                       note=one_class if math.isnan(trained.regularization) else None)
            if trained.predicted is not None:
                predicted, target = trained.predicted, trained.target
                result.add(f"{name}/mae_tiles", stats.mean(np.abs(predicted - target).mean(1)), higher_is_better=False)
                result.add(f"{name}/r2", stats.bootstrap(lambda idx: r_squared(predicted[idx], target[idx]),
                                                         len(target), "mazes"), higher_is_better=True)
            for condition in CONDITIONS:
                table[probe][condition][index] = scores[condition].right.mean()
            table[probe]["chance"][index] = guessed.mean()
            for size in by_size[probe]:
                right = trained.right[sizes == size]
                by_size[probe][size][index] = right.mean()
                result.add(f"{name}/size={size}", stats.proportion(right), higher_is_better=True)
            accuracy = float(trained.right.mean())
            worst = min(by_size[probe][size][index] for size in by_size[probe])
            criteria[probe, index] = (accuracy,) if probe == "outcome" else (worst, accuracy)
        return table, by_size, criteria, uninformative

    def _activations(self, policy: torch.nn.Module, random_net: torch.nn.Module, states: Sequence[bytes],
                     obs: str) -> dict[str, dict[str, np.ndarray]]:
        """{"trained" | "random_init": {layer: (N, ...) float32 array}} for ``states``."""
        x = policy_input(policy, states, obs)
        out = {}
        for condition, net in (("trained", policy), ("random_init", random_net)):
            out[condition] = {layer: _numpy(value) for layer, value in
                              cached_activations(net, x, self.config.layers)[1].items()}
        return out

    def _plot(self, ctx: EvalContext, layers: list[str], table: dict, by_size: dict) -> str:
        """Selection-maze accuracy per layer (trained, random init, shuffled, chance) for each probe,
        and the trained conv probe by maze size."""
        fig, axes = new_panels(len(PROBES) + 1, size_inches=4.2)
        names = [short_name(layer) for layer in layers]
        positions = np.arange(len(layers))
        styles = {"trained": ("C0", "o-"), "random_init": ("C1", "s--"), "shuffled": ("C2", "^:"),
                  "chance": ("0.5", "-")}
        for ax, probe in zip(axes, PROBES):
            for condition, (colour, style) in styles.items():
                ax.plot(positions, table[probe][condition], style, color=colour, label=condition.replace("_", " "))
            ax.set_title(f"{probe} probe")
        for index, (size, values) in enumerate(by_size["conv"].items()):
            axes[-1].plot(positions, values, "o-", color=f"C{index}", label=f"{size}×{size}")
        axes[-1].set_title("conv probe (trained) by maze size")
        for ax in axes:
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel("accuracy on the selection mazes")
            ax.set_xticks(positions, names, rotation=60, ha="right", fontsize=7)
            ax.legend(fontsize=7)
        fig.tight_layout()
        return write_png_atomic(fig, ctx.artifact("probe_accuracy.png"))


@dataclass
class _Confirmation:
    """The chosen probes' rows on the confirmation mazes."""

    result: Result
    fits: Fits
    chance: dict[str, np.ndarray]  # probe → (selection + confirmation,) bool: the constant guess right
    at: np.ndarray  # positions of the confirmation mazes among the evaluated ones
    sizes: np.ndarray  # (confirmation,) maze sizes
    layers: list[str]

    def report(self, prefix: str, chosen: Optional[tuple[str, int]], vs: Sequence[str] = (),
               name_probe: bool = False) -> None:
        """``prefix``layer (setting), [probe], accuracy, min_over_sizes (location probes), chance and
        the paired differences ``vs`` (against the constant guess, against the shuffled control)."""
        location = not prefix.startswith("outcome")
        if chosen is None:
            missing = stats.undefined("every layer is uninformative (a constant guess is right on ≥ 99% of the "
                                      "selection mazes) or was not run", 0, "mazes")
            for key in ("accuracy", *(("min_over_sizes",) if location else ()), "chance", *vs):
                self.result.add(f"{prefix}{key}", missing)
            return
        probe, index = chosen
        trained = self.fits[chosen]["trained"].take(self.at)
        shuffled = self.fits[chosen]["shuffled"].take(self.at)
        guessed = self.chance[probe][self.at]
        self.result.add(f"{prefix}layer", index, kind="setting", note=self.layers[index])
        if name_probe:
            self.result.add(f"{prefix}probe", PROBES.index(probe), kind="setting", note=probe)
        self.result.add(f"{prefix}accuracy", stats.proportion(trained.right), higher_is_better=True)
        if location:
            self.result.add(f"{prefix}min_over_sizes", worst_size(trained.right, self.sizes), higher_is_better=True)
        self.result.add(f"{prefix}chance", stats.proportion(guessed))
        against = {"chance": guessed, "majority": guessed, "shuffled": shuffled.right}
        for key in vs:
            self.result.add(f"{prefix}{key}", stats.paired_difference(trained.right, against[key.split("_")[1]]),
                            higher_is_better=True)


def shuffled_labels(n: int, parts: Sequence[np.ndarray], seed: int) -> np.ndarray:
    """(n,) the shuffled control's permutation: labels of other mazes of the same part."""
    rng = np.random.default_rng(seed)
    shuffle = np.arange(n)
    for part in parts:
        shuffle[part] = rng.permutation(part)
    return shuffle


def _labels(mazes: list[EvalMaze], acts: dict[str, np.ndarray], env: TrainEnv) -> _Labels:
    world = env.world_dim
    tiles = np.array([world_tile(m.cheese, m.maze_dim, world) for m in mazes])
    sizes = np.array([m.maze_dim for m in mazes])
    regions = np.stack([maze_region(size, world) for size in sizes])
    cells, masks, tile_cells = {}, {}, {}
    for layer, value in acts.items():
        if value.ndim != 4:
            continue
        side = value.shape[-1]
        cells[layer] = np.array([activation_square_cell(m.cheese, m.maze_dim, world, env.obs, side) for m in mazes])
        masks[layer] = np.stack([maze_cells(m.maze_dim, world, env.obs, side) for m in mazes])
        by_size = {int(size): tile_cell_map(int(size), world, env.obs, side) for size in np.unique(sizes)}
        tile_cells[layer] = np.stack([by_size[int(size)] for size in sizes])
    return _Labels(tiles, cells, masks, sizes, world, layout_ids(mazes), regions=regions, tile_cells=tile_cells)


def maze_region(maze_dim: int, world_dim: int) -> np.ndarray:
    """(world, world) bool: the world tiles (row from the top, column) of the inner maze."""
    region = np.zeros((world_dim, world_dim), bool)
    margin = (world_dim - maze_dim) // 2
    region[margin:margin + maze_dim, margin:margin + maze_dim] = True
    return region


def tile_cell_map(maze_dim: int, world_dim: int, obs: str, side: int) -> np.ndarray:
    """(world, world) the flat activation cell (row · side + col) holding each tile of the inner
    maze, −1 outside it."""
    table = np.full((world_dim, world_dim), -1, dtype=np.int32)
    for x in range(maze_dim):
        for y in range(maze_dim):
            row, col = activation_square_cell((x, y), maze_dim, world_dim, obs, side)
            table[world_tile((x, y), maze_dim, world_dim)] = row * side + col
    return table


def _numpy(acts: torch.Tensor) -> np.ndarray:
    return acts.float().contiguous().cpu().numpy()
