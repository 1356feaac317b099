"""Linear probes at chosen layers of a maze policy, with controls: where the cheese is, and whether
the policy will reach it.

Four probes per layer, each trained on the activations of seeded mazes (cheese anywhere) and
scored on held-out mazes:

* ``cell`` — multinomial logistic regression on the flattened activation: which activation cell
  holds the cheese (for a flat layer such as ``relufc_out``: which world tile);
* ``xy`` — ridge regression on the flattened activation to the cheese's world tile (row, column);
  accuracy = both rounded coordinates right; also the mean absolute error in tiles and R²;
* ``conv`` — the convolutional probe of the published analyses: one logistic regression over the
  channels, shared by all positions (every (maze, cell) pair is a sample, label = this cell holds
  the cheese); a maze counts as right when its highest-scoring cell (among the cells its inner
  maze covers) is the cheese's cell. Spatial layers only;
* ``outcome`` — "will it reach the cheese": logistic regression on the flattened activation with
  the mouse on its start square, label = the policy's episode from that maze (sampled actions, or
  greedy moves with ``greedy``) reached the cheese (``trainers.episodes.first_episodes``).

The split keeps layouts apart: mazes with the same walls (the same procgen level, whatever the
cheese square) all land in the training or all in the test mazes. Each probe's regularisation
strength is chosen from ``regularization`` by cross-validation on the training mazes only, folds
grouped by layout (``cv_folds``), separately for every condition; the trained probe's choice is
reported (``regularization``: C for the logistic probes, α for the ridge).

Controls: the same probe on a randomly initialised network of the same architecture (seeded), and
on the trained network with the labels permuted across mazes (train and test permuted
independently: no function of the input can predict them, so this measures chance plus
overfitting). A conv label is a maze's cheese cell *and* its candidate cells, so both move
together. selectivity = accuracy − shuffled-label accuracy. ``chance`` is the accuracy of the best
constant guess fitted on the training mazes (most frequent cell, outcome or rounded mean tile; for
``conv`` the most frequent training cell among each test maze's candidates).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning, FitFailedWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, GroupKFold, GroupShuffleSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from shardlab.envs import maze_geometry, maze_state
from shardlab.envs.eval_mazes import EvalMaze
from shardlab.envs.maze import MazeEnvConfig
from shardlab.evals.maze.common import (TrainEnv, activation_square_cell, at_square, new_panels, policy_input,
                                        save_figure, train_env)
from shardlab.evals.maze.inputs import (cached_activations, check_layers, check_mouse_placement, fresh_network,
                                        interp_mazes, maze_cells, short_name, world_tile)
from shardlab.evals.suite.base import Eval
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.registry import register
from shardlab.evals.suite.results import Result
from shardlab.trainers.bars import progress_kwargs
from shardlab.trainers.episodes import first_episodes

PROBES = ("cell", "xy", "conv", "outcome")
CONDITIONS = ("trained", "random_init", "shuffled")
DEFAULT_LAYERS = ("embedder.block1.maxpool_out", "embedder.block1.res2.resadd_out",
                  "embedder.block2.res1.resadd_out", "embedder.block2.res2.resadd_out",
                  "embedder.block3.res2.resadd_out", "embedder.relufc_out")
DEFAULT_GRID = (0.01, 0.1, 1.0, 10.0)  # C of the logistic probes; the ridge uses α = 1 / C


# -- the probes (plain functions on arrays, so tests can plant a signal) --------------------------
def layout_ids(mazes: Sequence[EvalMaze]) -> np.ndarray:
    """(N,) integer per maze, equal exactly when two mazes have the same size and walls."""
    keys = [(m.maze_dim, (maze_state.inner_grid(m.state) == maze_state.WALL).tobytes()) for m in mazes]
    index = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    return np.array([index[key] for key in keys])


def layout_split(layouts: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) sorted maze indices with no layout in both: a ``test_fraction`` of the
    layouts (sklearn's GroupShuffleSplit) is held out."""
    if len(np.unique(layouts)) < 2:
        raise ValueError(f"all {len(layouts)} probe mazes share one layout; raise probes.mazes")
    splitter = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
    train, test = next(splitter.split(np.zeros(len(layouts)), groups=layouts))
    return np.sort(train), np.sort(test)


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
    """Per-maze targets: the cheese's world tile, its cell at each spatial layer, the outcome."""

    tiles: np.ndarray  # (N, 2) world (row from the top, column)
    cells: dict[str, np.ndarray]  # layer → (N, 2) activation (row, col)
    masks: dict[str, np.ndarray]  # layer → (N, H, W) cells covered by each inner maze
    sizes: np.ndarray  # (N,) maze sizes
    world: int  # world side in tiles
    layouts: np.ndarray  # (N,) layout id (same walls, same id): the CV groups
    reached: Optional[np.ndarray] = None  # (N,) bool: the policy's episode reached the cheese


def score_probe(probe: str, layer: str, acts: np.ndarray, labels: _Labels, perm: np.ndarray, train: np.ndarray,
                test: np.ndarray, grid: Sequence[float] = DEFAULT_GRID, folds: int = 3
                ) -> tuple[np.ndarray, dict[str, float]]:
    """Per-test-maze correctness (bool array) of one probe fitted on ``train``, with the labels of
    maze ``perm[n]`` given to maze n (identity, or the shuffled control), and extra numbers
    (``regularization``: the strength chosen by CV on the training mazes)."""
    flat = acts.reshape(len(acts), -1)
    groups = labels.layouts[train]
    if probe in ("cell", "outcome"):
        if probe == "outcome":
            target = labels.reached.astype(int)
        elif layer in labels.cells:
            cells = labels.cells[layer]
            target = cells[:, 0] * acts.shape[-1] + cells[:, 1]
        else:
            target = labels.tiles[:, 0] * labels.world + labels.tiles[:, 1]
        target = target[perm]
        predicted, c = classification_probe(flat[train], target[train], flat[test], groups, grid, folds)
        return predicted == target[test], {"regularization": c}
    if probe == "xy":
        target = labels.tiles[perm].astype(float)
        predicted, alpha = regression_probe(flat[train], target[train], flat[test], groups, grid, folds)
        right = (np.rint(predicted) == target[test]).all(1)
        error = np.abs(predicted - target[test])
        residual = ((predicted - target[test]) ** 2).sum(0)
        total = ((target[test] - target[test].mean(0)) ** 2).sum(0)
        r2 = float(np.mean(1 - residual / np.maximum(total, 1e-12)))
        return right, {"mae_tiles": float(error.mean()), "r2": r2, "regularization": alpha}
    # a maze's conv label is its cheese cell among its candidate cells: permute both together,
    # or a shuffled cheese cell may lie outside the candidates and the control scores below chance
    cells, masks = labels.cells[layer][perm], labels.masks[layer][perm]
    c = choose_conv_regularization(acts[train], cells[train], masks[train], groups, grid, folds)
    predicted = convolutional_probe(acts[train], cells[train], masks[train], acts[test], masks[test], c)
    return (predicted == cells[test]).all(1), {"regularization": c}


def chance_accuracy(probe: str, layer: str, labels: _Labels, train: np.ndarray, test: np.ndarray) -> float:
    """Test accuracy of the best constant guess fitted on the training mazes."""
    if probe == "conv":
        cells, masks = labels.cells[layer], labels.masks[layer]
        counts = np.zeros(masks.shape[1:])
        np.add.at(counts, (cells[train, 0], cells[train, 1]), 1)
        guess = np.where(masks[test], counts[None], -1).reshape(len(test), -1).argmax(1)
        return float(np.mean(guess == cells[test, 0] * masks.shape[2] + cells[test, 1]))
    if probe == "xy":
        guess = np.rint(labels.tiles[train].mean(0))
        return float(np.mean((labels.tiles[test] == guess).all(1)))
    if probe == "outcome":
        keys = [bool(r) for r in labels.reached]
    else:
        target = labels.cells[layer] if layer in labels.cells else labels.tiles
        keys = [tuple(t) for t in target]
    trained = [keys[i] for i in train]
    common = max(dict.fromkeys(trained), key=trained.count)
    return float(np.mean([keys[i] == common for i in test]))


def episode_outcomes(policy: torch.nn.Module, states: Sequence[bytes], env: TrainEnv, seed: int,
                     greedy: bool = False, channels_last: bool = False) -> np.ndarray:
    """(N,) bool: the policy's first episode from each state reached the cheese."""
    env_cfg = MazeEnvConfig(num_envs=len(states), distribution_mode=env.mode, obs=env.obs, rand_region=None,
                            max_maze_size=None, min_maze_size=None, seed=seed)
    episodes = first_episodes(policy, env_cfg, greedy=greedy, channels_last=channels_last, states=states)
    if len(episodes) != len(states):
        raise RuntimeError(f"only {len(episodes)} of {len(states)} outcome episodes finished")
    return np.array([episode.reached_cheese for episode in episodes])


# -- the eval ----------------------------------------------------------------------------------------
@register("probes")
class Probes(Eval):
    """Cell classification, x/y regression and convolutional probes for the cheese location, and the
    outcome probe, per layer, against a random-init network and shuffled labels, by maze size."""

    kinds = ("ppo",)
    layer_fields = ("layers",)

    @dataclass
    class Config:
        """Probe data, layers, the regularisation grid (C of the logistic probes, 1/α of the ridge;
        chosen by CV on the training mazes) and the outcome probe's episodes."""

        mazes: int = 400
        test_fraction: float = 0.25  # of the layouts, held out
        layers: list[str] = field(default_factory=lambda: list(DEFAULT_LAYERS))
        mouse: str = "start"  # start, decision (mazes with a decision square) or random
        regularization: list[float] = field(default_factory=lambda: list(DEFAULT_GRID))
        cv_folds: int = 3
        outcome: bool = True  # play one episode per maze for the "will it reach the cheese" probe
        greedy: bool = False  # outcome episodes with greedy moves instead of sampled actions

        def __post_init__(self) -> None:
            check_mouse_placement(self.mouse)
            if not 0 < self.test_fraction < 1:
                raise ValueError(f"probes.test_fraction must be in (0, 1), got {self.test_fraction}")
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
        """Collect activations of the trained and a random-init network and fit every probe."""
        cfg, env = self.config, train_env(ctx.train_config)
        check_layers(ctx.policy, cfg.layers)
        mazes = interp_mazes(env, max(4, ctx.count(cfg.mazes)), ctx.seed, cfg.mouse)
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
        train, test = layout_split(labels.layouts, cfg.test_fraction, ctx.seed)
        rng = np.random.default_rng(ctx.seed)
        # the shuffled-label control: labels of other mazes, permuted within each split
        shuffle = np.arange(len(mazes))
        shuffle[train], shuffle[test] = rng.permutation(train), rng.permutation(test)
        result = Result()
        sizes = sorted(set(labels.sizes[test].tolist()))
        nan_row = lambda: [math.nan] * len(cfg.layers)  # noqa: E731
        # table[probe][condition] and by_size[probe][size]: one accuracy per layer (NaN: not run)
        table = {p: {c: nan_row() for c in (*CONDITIONS, "chance")} for p in PROBES}
        by_size = {p: {size: nan_row() for size in sizes} for p in PROBES}
        for index, layer in enumerate(tqdm(cfg.layers, desc="probes", disable=not ctx.progress, **progress_kwargs())):
            for probe in probes:
                if probe == "conv" and layer not in labels.cells:
                    continue  # a flat layer has no positions to fold
                source = start_acts if probe == "outcome" else acts
                scores, extra = {}, {}
                for condition in CONDITIONS:
                    perm = shuffle if condition == "shuffled" else np.arange(len(mazes))
                    net = "random_init" if condition == "random_init" else "trained"
                    scores[condition], found = score_probe(probe, layer, source[net][layer], labels, perm, train,
                                                           test, cfg.regularization, cfg.cv_folds)
                    extra = found if condition == "trained" else extra
                    table[probe][condition][index] = scores[condition].mean()
                chance = table[probe]["chance"][index] = chance_accuracy(probe, layer, labels, train, test)
                name, n = f"{probe}/{short_name(layer)}", len(test)
                result.add(f"{name}/accuracy", scores["trained"].mean(), n=n, higher_is_better=True,
                           stderr=_stderr(scores["trained"]))
                result.add(f"{name}/random_init", scores["random_init"].mean(), n=n)
                result.add(f"{name}/shuffled", scores["shuffled"].mean(), n=n)
                result.add(f"{name}/selectivity", scores["trained"].mean() - scores["shuffled"].mean(), n=n,
                           higher_is_better=True)
                result.add(f"{name}/chance", chance, n=n)
                for key, value in extra.items():
                    result.add(f"{name}/{key}", value, n=n)
                for size in sizes:
                    right = scores["trained"][labels.sizes[test] == size]
                    by_size[probe][size][index] = right.mean()
                    result.add(f"{name}/size={size}", right.mean(), n=len(right), higher_is_better=True)
        for probe in probes:
            accuracy = np.array(table[probe]["trained"])
            if np.isnan(accuracy).all():
                continue
            result.add(f"{probe}/best_accuracy", np.nanmax(accuracy), n=len(test), higher_is_better=True)
            # the published prediction to test: some layer finds the cheese in every maze size
            worst_size = np.min(np.array(list(by_size[probe].values())), 0)
            result.add(f"{probe}/best_min_over_sizes", np.nanmax(worst_size), n=len(test), higher_is_better=True)
        if cfg.outcome:
            result.add("outcome/p_cheese", labels.reached.mean(), n=len(mazes), stderr=_stderr(labels.reached))
        result.add("train_mazes", len(train))
        result.add("test_mazes", len(test))
        result.add("layouts", len(np.unique(labels.layouts)))
        result.artifacts.append(self._plot(ctx, cfg.layers, table, by_size))
        return result

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
        """Accuracy per layer (trained, random init, shuffled, chance) for each probe, and the
        trained conv probe by maze size."""
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
            ax.set_ylabel("held-out accuracy")
            ax.set_xticks(positions, names, rotation=60, ha="right", fontsize=7)
            ax.legend(fontsize=7)
        fig.tight_layout()
        return save_figure(fig, ctx.artifact("probe_accuracy.png"))


def _labels(mazes: list[EvalMaze], acts: dict[str, np.ndarray], env: TrainEnv) -> _Labels:
    world = env.world_dim
    tiles = np.array([world_tile(m.cheese, m.maze_dim, world) for m in mazes])
    cells, masks = {}, {}
    for layer, value in acts.items():
        if value.ndim != 4:
            continue
        side = value.shape[-1]
        cells[layer] = np.array([activation_square_cell(m.cheese, m.maze_dim, world, env.obs, side) for m in mazes])
        masks[layer] = np.stack([maze_cells(m.maze_dim, world, env.obs, side) for m in mazes])
    return _Labels(tiles, cells, masks, np.array([m.maze_dim for m in mazes]), world, layout_ids(mazes))


def _numpy(acts: torch.Tensor) -> np.ndarray:
    return acts.float().contiguous().cpu().numpy()


def _stderr(right: np.ndarray) -> Optional[float]:
    return float(right.std(ddof=1) / math.sqrt(len(right))) if len(right) > 1 else None
