"""The probes eval end to end on a random-init grid policy (15-tile world, mazes up to 7×7): every
row carries its interval; a layer whose single cell covers every maze (``block3``) is flagged
uninformative and never chosen (the old code scored it 1.0 against a chance of 1.0 and reported it
as the best layer); the headline xy accuracy, its worst size and the chance row recomputed with
plain torch, sklearn and numpy on the confirmation mazes; the split's layouts disjoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from shardlab.envs import maze_state
from shardlab.evals.maze.common import policy_input, train_env
from shardlab.evals.maze.inputs import fresh_network, interp_mazes
from shardlab.evals.maze.probes import PROBES, Probes, layout_ids, layout_split
from shardlab.evals.suite.context import EvalContext
from shardlab.trainers.config import load_config
from plain_impala import plain_forward
from tiny_suites import MAZE_RECIPE, assert_rows_have_intervals

pytestmark = pytest.mark.usefixtures("one_thread")

SEED = 0
WHOLE_MAZE = "embedder.block3.res2.resadd_out"  # 2×2 cells over the 15-tile world: one cell per ≤ 7×7 maze
LAYERS = ["embedder.block1.maxpool_out", WHOLE_MAZE, "embedder.relufc_out"]
CONFIG = Probes.Config(mazes=60, layers=LAYERS, regularization=[0.1, 1.0], cv_folds=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    train_config = load_config(MAZE_RECIPE, ["env.max_maze_size=7"])
    policy = fresh_network(train_config, 5)
    ctx = EvalContext(policy, train_config, str(tmp_path_factory.mktemp("probes")), seed=SEED, progress=False)
    with torch.random.fork_rng(devices=[]):  # the outcome episodes sample actions
        result = Probes(CONFIG).run(ctx)
    return train_config, policy, {m.name: m for m in result.metrics}, result


def test_every_row_has_its_interval_and_the_plot_is_written(run):
    _, _, rows, result = run
    assert_rows_have_intervals(result.metrics)
    assert result.artifacts and result.artifacts[0].endswith("probe_accuracy.png")
    assert rows["train_mazes"].value + rows["selection_mazes"].value + rows["confirmation_mazes"].value == 60
    # the headline rows count the confirmation mazes (the worst size: that size's mazes among them)
    for key in ("best/accuracy", "best/chance", "best/vs_chance", "best/vs_shuffled",
                "outcome/accuracy", "outcome/chance", "outcome/vs_majority", "outcome/vs_shuffled"):
        assert rows[key].n == rows["confirmation_mazes"].value, key
    assert rows["best/min_over_sizes"].n < rows["confirmation_mazes"].value
    assert rows["best/vs_shuffled"].method == rows["outcome/vs_majority"].method == "paired t"


def test_a_layer_whose_one_cell_covers_the_maze_is_uninformative_and_never_chosen(run):
    _, _, rows, _ = run
    name = "block3.res2.resadd_out"
    for probe in ("cell", "conv"):
        # the old code: accuracy 1.0, chance 1.0, and this layer reported as the probe's best
        assert rows[f"{probe}/{name}/cell_accuracy"].value == rows[f"{probe}/{name}/cell_chance"].value == 1.0
        assert rows[f"{probe}/{name}/uninformative"].value == 1
        # at tile resolution the one cell names the constant guess's tile: no better than chance
        assert rows[f"{probe}/{name}/accuracy"].value == rows[f"{probe}/{name}/chance"].value < 0.5
        assert rows[f"{probe}/best_layer"].value != LAYERS.index(WHOLE_MAZE)
    assert not (rows["best/layer"].value == LAYERS.index(WHOLE_MAZE) and rows["best/probe"].note in ("cell", "conv"))
    assert rows["best/probe"].note == PROBES[int(rows["best/probe"].value)]
    assert rows["best/layer"].note == LAYERS[int(rows["best/layer"].value)]


def _parts(train_config):
    env = train_env(train_config)
    mazes = interp_mazes(env, CONFIG.mazes, SEED, CONFIG.mouse)
    sizes = np.array([m.maze_dim for m in mazes])
    return env, mazes, layout_split(layout_ids(mazes), CONFIG.selection_fraction, CONFIG.confirmation_fraction,
                                    SEED, sizes)


def test_the_split_keeps_layouts_apart(run):
    train_config, _, rows, _ = run
    _, mazes, parts = _parts(train_config)
    assert [len(part) for part in parts] == [rows[f"{k}_mazes"].value for k in ("train", "selection", "confirmation")]
    walls = [{(m.maze_dim, (maze_state.inner_grid(m.state) == maze_state.WALL).tobytes()) for m in
              (mazes[i] for i in part)} for part in parts]
    assert not walls[0] & walls[1] and not walls[0] & walls[2] and not walls[1] & walls[2]


def test_the_headline_numbers_recomputed_with_plain_torch_sklearn_and_numpy(run):
    train_config, policy, rows, _ = run
    env, mazes, (train, _, confirm) = _parts(train_config)
    world = env.world_dim
    # the cheese's world tile (row from the top, column) and each maze's tiles, from the geometry
    tiles = np.array([[world - 1 - ((world - m.maze_dim) // 2 + m.cheese[1]), (world - m.maze_dim) // 2 + m.cheese[0]]
                      for m in mazes])
    layer = LAYERS[int(rows["xy/best_layer"].value)]
    with torch.no_grad():
        acts = plain_forward(policy, policy_input(policy, [m.state for m in mazes], env.obs))[2][layer]
    features = acts.reshape(len(mazes), -1).double().numpy()
    alpha = rows[f"xy/{layer.removeprefix('embedder.')}/regularization"].value
    ridge = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(features[train], tiles[train].astype(float))
    right = (np.rint(ridge.predict(features[confirm])) == tiles[confirm]).all(1)
    assert rows["xy/best_accuracy"].value == right.mean() and rows["xy/best_accuracy"].n == len(confirm)
    sizes = np.array([mazes[i].maze_dim for i in confirm])
    assert rows["xy/best_min_over_sizes"].value == min(right[sizes == s].mean() for s in set(sizes))
    # chance: the training mazes' most frequent cheese tile among each maze's tiles (ties: row-major first)
    counts = {}
    for i in train:
        counts[tuple(tiles[i])] = counts.get(tuple(tiles[i]), 0) + 1
    guessed = []
    for i in confirm:
        margin, size = (world - mazes[i].maze_dim) // 2, mazes[i].maze_dim
        region = [(r, c) for r in range(margin, margin + size) for c in range(margin, margin + size)]
        guess = max(region, key=lambda tile: (counts.get(tile, 0), -tile[0], -tile[1]))
        guessed.append(guess == tuple(tiles[i]))
    assert rows["best/chance"].value == rows["xy/best_chance"].value == np.mean(guessed)
