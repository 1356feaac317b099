"""Linear probes for the cheese location at chosen layers of a maze policy, with controls.

Three probes per layer, each trained on the activations of seeded mazes (cheese anywhere) and
scored on held-out mazes:

* ``cell`` — multinomial logistic regression on the flattened activation: which activation cell
  holds the cheese (for a flat layer such as ``relufc_out``: which world tile);
* ``xy`` — ridge regression on the flattened activation to the cheese's world tile (row, column);
  accuracy = both rounded coordinates right; also the mean absolute error in tiles and R²;
* ``conv`` — the convolutional probe of the published analyses: one logistic regression over the
  channels, shared by all positions (every (maze, cell) pair is a sample, label = this cell holds
  the cheese); a maze counts as right when its highest-scoring cell (among the cells its inner
  maze covers) is the cheese's cell. Spatial layers only.

Controls: the same probe on a randomly initialised network of the same architecture (seeded), and
on the trained network with the labels permuted across mazes (train and test permuted
independently: no function of the input can predict them, so this measures chance plus
overfitting); selectivity = accuracy − shuffled-label accuracy. ``chance`` is the accuracy of the
best constant guess (most frequent training cell or mean tile; for ``conv`` 1 / candidate cells).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from envs.eval_mazes import EvalMaze
from evals.context import EvalContext
from evals.maze_inputs import (cached_activations, check_layers, check_mouse_placement, fresh_network,
                               interp_mazes, maze_cells, short_name, world_tile)
from evals.maze_interp_common import (TrainEnv, activation_square_cell, new_panels, policy_input, save_figure,
                                      train_env)
from evals.registry import register
from evals.results import Result

PROBES = ("cell", "xy", "conv")
CONDITIONS = ("trained", "random_init", "shuffled")
DEFAULT_LAYERS = ("embedder.block1.maxpool_out", "embedder.block1.res2.resadd_out",
                  "embedder.block2.res1.resadd_out", "embedder.block2.res2.resadd_out",
                  "embedder.block3.res2.resadd_out", "embedder.relufc_out")
_ALPHAS = np.logspace(-2, 4, 13)  # ridge strengths tried by leave-one-out CV


# -- the probes (plain functions on arrays, so tests can plant a signal) --------------------------
def classification_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                         regularization: float = 0.1) -> np.ndarray:
    """Predicted test classes of a standardised, L2-regularised (C = ``regularization``)
    multinomial logistic regression; the only class when training has one."""
    if len(np.unique(train_y)) < 2:
        return np.full(len(test_x), train_y[0])
    model = make_pipeline(*_scale(train_x), LogisticRegression(C=regularization, max_iter=1000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train_x, train_y)
    return model.predict(test_x)


def regression_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """Predicted test targets (N, k) of a standardised ridge regression, strength chosen by
    leave-one-out cross-validation on the training set."""
    model = make_pipeline(*_scale(train_x), RidgeCV(alphas=_ALPHAS))
    model.fit(train_x, train_y)
    return model.predict(test_x)


def _scale(train_x: np.ndarray) -> list:
    """Standardisation, then (with more features than samples) a rotation onto the training
    samples' span: an L2-regularised linear model's weights lie in that span, so the fit is the
    same, only cheaper (16k-dimensional RGB activations)."""
    steps: list = [StandardScaler()]
    if train_x.shape[1] > len(train_x):
        steps.append(PCA(n_components=len(train_x), svd_solver="full"))
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
        model = make_pipeline(StandardScaler(), LogisticRegression(C=regularization, max_iter=1000,
                                                                   class_weight="balanced"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x, y)
        test_cells = test_acts.transpose(0, 2, 3, 1).reshape(-1, channels)
        scores = model.decision_function(test_cells).reshape(test_masks.shape)
    scores = np.where(test_masks, scores, -np.inf)
    best = scores.reshape(len(scores), -1).argmax(1)
    return np.stack(np.unravel_index(best, (height, width)), 1)


# -- the eval ----------------------------------------------------------------------------------------
@dataclass
class _Labels:
    """Per-maze targets: the cheese's world tile, and its cell at each spatial layer."""

    tiles: np.ndarray  # (N, 2) world (row from the top, column)
    cells: dict[str, np.ndarray]  # layer → (N, 2) activation (row, col)
    masks: dict[str, np.ndarray]  # layer → (N, H, W) cells covered by each inner maze
    sizes: np.ndarray  # (N,) maze sizes
    world: int  # world side in tiles


@register("probes")
class Probes:
    """Cell classification, x/y regression and convolutional probes for the cheese location, per
    layer, against a random-init network and shuffled labels, broken down by maze size."""

    kinds = ("ppo_maze",)

    @dataclass
    class Config:
        """Probe data and layers; ``regularization`` is the logistic probes' inverse L2 strength C."""

        mazes: int = 400
        test_fraction: float = 0.25
        layers: list[str] = field(default_factory=lambda: list(DEFAULT_LAYERS))
        mouse: str = "start"  # start, decision (mazes with a decision square) or random
        regularization: float = 0.1

        def __post_init__(self) -> None:
            check_mouse_placement(self.mouse)
            if not 0 < self.test_fraction < 1:
                raise ValueError(f"probes.test_fraction must be in (0, 1), got {self.test_fraction}")
            if self.regularization <= 0:
                raise ValueError(f"probes.regularization must be > 0, got {self.regularization}")
            if not self.layers:
                raise ValueError("probes.layers is empty; name at least one activation")

    def __init__(self, config: "Probes.Config"):
        self.config = config

    def run(self, ctx: EvalContext) -> Result:
        """Collect activations of the trained and a random-init network and fit every probe."""
        cfg, env = self.config, train_env(ctx.train_config)
        check_layers(ctx.policy, cfg.layers)
        mazes = interp_mazes(env, max(4, ctx.count(cfg.mazes)), ctx.seed, cfg.mouse)
        x = policy_input(ctx.policy, [m.state for m in mazes], env.obs)
        _, trained = cached_activations(ctx.policy, x, cfg.layers)
        _, random_init = cached_activations(fresh_network(ctx.train_config, ctx.seed), x, cfg.layers)
        labels = _labels(mazes, trained, env)
        rng = np.random.default_rng(ctx.seed)
        order = rng.permutation(len(mazes))
        n_test = min(len(mazes) - 2, max(1, round(cfg.test_fraction * len(mazes))))
        test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
        # the shuffled-label control: labels of other mazes, permuted within each split
        shuffle = np.arange(len(mazes))
        shuffle[train], shuffle[test] = rng.permutation(train), rng.permutation(test)
        result = Result()
        sizes = sorted(set(labels.sizes[test].tolist()))
        nan_row = lambda: [math.nan] * len(cfg.layers)  # noqa: E731
        # table[probe][condition] and by_size[probe][size]: one accuracy per layer (NaN: not run)
        table = {p: {c: nan_row() for c in (*CONDITIONS, "chance")} for p in PROBES}
        by_size = {p: {size: nan_row() for size in sizes} for p in PROBES}
        for index, layer in enumerate(tqdm(cfg.layers, desc="probes", disable=not ctx.progress)):
            acts = {"trained": _numpy(trained[layer]), "random_init": _numpy(random_init[layer])}
            acts["shuffled"] = acts["trained"]
            for probe in PROBES:
                if probe == "conv" and layer not in labels.cells:
                    continue  # a flat layer has no positions to fold
                scores, extra = {}, {}
                for condition in CONDITIONS:
                    perm = shuffle if condition == "shuffled" else np.arange(len(mazes))
                    scores[condition], found = self._probe(probe, layer, acts[condition], labels, perm, train, test)
                    extra = found if condition == "trained" else extra
                    table[probe][condition][index] = scores[condition].mean()
                chance = table[probe]["chance"][index] = self._chance(probe, layer, labels, train, test)
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
        for probe in PROBES:
            accuracy = np.array(table[probe]["trained"])
            if np.isnan(accuracy).all():
                continue
            result.add(f"{probe}/best_accuracy", np.nanmax(accuracy), n=len(test), higher_is_better=True)
            # the published prediction to test: some layer finds the cheese in every maze size
            worst_size = np.min(np.array(list(by_size[probe].values())), 0)
            result.add(f"{probe}/best_min_over_sizes", np.nanmax(worst_size), n=len(test), higher_is_better=True)
        result.artifacts.append(self._plot(ctx, cfg.layers, table, by_size))
        return result

    def _probe(self, probe: str, layer: str, acts: np.ndarray, labels: _Labels, perm: np.ndarray,
               train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """Per-test-maze correctness (bool array) of one probe, and extra trained-probe numbers."""
        flat = acts.reshape(len(acts), -1)
        if probe == "cell":
            if layer in labels.cells:
                cells = labels.cells[layer]
                target = cells[:, 0] * acts.shape[-1] + cells[:, 1]
            else:
                target = labels.tiles[:, 0] * labels.world + labels.tiles[:, 1]
            target = target[perm]
            predicted = classification_probe(flat[train], target[train], flat[test], self.config.regularization)
            return predicted == target[test], {}
        if probe == "xy":
            target = labels.tiles[perm].astype(float)
            predicted = regression_probe(flat[train], target[train], flat[test])
            right = (np.rint(predicted) == target[test]).all(1)
            error = np.abs(predicted - target[test])
            residual = ((predicted - target[test]) ** 2).sum(0)
            total = ((target[test] - target[test].mean(0)) ** 2).sum(0)
            r2 = float(np.mean(1 - residual / np.maximum(total, 1e-12)))
            return right, {"mae_tiles": float(error.mean()), "r2": r2}
        cells, masks = labels.cells[layer][perm], labels.masks[layer]
        predicted = convolutional_probe(acts[train], cells[train], masks[train], acts[test], masks[test],
                                        self.config.regularization)
        return (predicted == cells[test]).all(1), {}

    @staticmethod
    def _chance(probe: str, layer: str, labels: _Labels, train: np.ndarray, test: np.ndarray) -> float:
        if probe == "conv":
            return float(np.mean(1.0 / labels.masks[layer][test].sum((1, 2))))
        if probe == "cell":
            target = labels.cells[layer] if layer in labels.cells else labels.tiles
            keys = [tuple(t) for t in target]
            common = max(set(keys[i] for i in train), key=[keys[i] for i in train].count)
            return float(np.mean([keys[i] == common for i in test]))
        guess = np.rint(labels.tiles[train].mean(0))
        return float(np.mean((labels.tiles[test] == guess).all(1)))

    def _plot(self, ctx: EvalContext, layers: list[str], table: dict, by_size: dict) -> str:
        """Accuracy per layer (trained, random init, shuffled, chance) for each probe, and the
        trained conv probe by maze size."""
        fig, axes = new_panels(4, size_inches=4.2)
        names = [short_name(layer) for layer in layers]
        positions = np.arange(len(layers))
        styles = {"trained": ("C0", "o-"), "random_init": ("C1", "s--"), "shuffled": ("C2", "^:"),
                  "chance": ("0.5", "-")}
        for ax, probe in zip(axes, PROBES):
            for condition, (colour, style) in styles.items():
                ax.plot(positions, table[probe][condition], style, color=colour, label=condition.replace("_", " "))
            ax.set_title(f"{probe} probe")
        for index, (size, values) in enumerate(by_size["conv"].items()):
            axes[3].plot(positions, values, "o-", color=f"C{index}", label=f"{size}×{size}")
        axes[3].set_title("conv probe (trained) by maze size")
        for ax in axes:
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel("held-out accuracy")
            ax.set_xticks(positions, names, rotation=60, ha="right", fontsize=7)
            ax.legend(fontsize=7)
        fig.tight_layout()
        return save_figure(fig, ctx.artifact("probe_accuracy.png"))


def _labels(mazes: list[EvalMaze], acts: dict[str, torch.Tensor], env: TrainEnv) -> _Labels:
    world = env.world_dim
    tiles = np.array([world_tile(m.cheese, m.maze_dim, world) for m in mazes])
    cells, masks = {}, {}
    for layer, value in acts.items():
        if value.dim() != 4:
            continue
        side = value.shape[-1]
        cells[layer] = np.array([activation_square_cell(m.cheese, m.maze_dim, world, env.obs, side) for m in mazes])
        masks[layer] = np.stack([maze_cells(m.maze_dim, world, env.obs, side) for m in mazes])
    return _Labels(tiles, cells, masks, np.array([m.maze_dim for m in mazes]), world)


def _numpy(acts: torch.Tensor) -> np.ndarray:
    return acts.float().contiguous().cpu().numpy()


def _stderr(right: np.ndarray) -> Optional[float]:
    return float(right.std(ddof=1) / math.sqrt(len(right))) if len(right) > 1 else None
