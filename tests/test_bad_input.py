"""Bad input to every subcommand, table-driven: each case exits 2 with one stderr line naming the
key (or option) and the fix, and leaves the test folder exactly as it was (no run directory, no
output folder, no half-written file, existing files untouched).

The cases are the escapes found by trying bad values for every argument, config key and eval
config field by hand (tracebacks, exit 1 after running, files written before failing), plus a
representative set of the cases that already behaved, per subcommand. tests/test_config.py,
tests/test_cli.py, tests/test_evals.py and tests/test_collect.py hold the older cases.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Callable, Optional

import numpy as np
import pytest
import torch

from shardlab import cli
from tests.test_dt_trainer import tiny_dataset

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")

# overrides that keep a maze run tiny, should a bad value ever pass validation
TINY = ["env.num_envs=2", "ppo.num_steps=16", "ppo.minibatch_size=32", "ppo.epochs=1", "trainer.total_steps=32",
        "trainer.progress_bar=false"]
MG_TINY = [*TINY[:4], "trainer.total_steps=32", "trainer.progress_bar=false"]
SUITE = ("seed: 0\nevals:\n" + "".join(f"  {name}: {{}}\n" for name in (
    "goal_misgeneralization", "steering", "retargeting", "probes", "activation_patching", "causal_scrubbing",
    "jacobian_svd", "saliency_pca", "relu_ablation", "finetune_to_cheese", "sparsity")))


@pytest.fixture(autouse=True)
def not_a_worker(monkeypatch, tmp_path):
    """Rank 0, from an empty working folder (a default runs/<name> would appear in it)."""
    for name in ("LOCAL_RANK", "RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def tiny_run(tiny_maze_checkpoint) -> pathlib.Path:
    """The run directory of the session's tiny maze checkpoint (copied before a case changes it)."""
    return pathlib.Path(tiny_maze_checkpoint).parents[1]


def snapshot(root: pathlib.Path) -> dict[str, Optional[bytes]]:
    """Every file (its bytes) and folder (None) under ``root``."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def write(path: pathlib.Path, data) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def run_main(argv: list[str], capsys) -> tuple[object, list[str]]:
    """``shardlab.cli.main`` in-process: (exit code, stderr lines); argparse errors are SystemExit."""
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


def check_refused(argv: list[str], needles: tuple[str, ...], tmp_path: pathlib.Path, capsys) -> None:
    before = snapshot(tmp_path)
    code, lines = run_main(argv, capsys)
    assert code == 2, f"exit {code}, stderr:\n" + "\n".join(lines)
    assert len(lines) == 1, "expected one stderr line, got:\n" + "\n".join(lines)
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert snapshot(tmp_path) == before, "a refused command must not create or change files"


def edit_checkpoint(path: pathlib.Path, change: Callable[[dict], dict]) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    torch.save(change(state), path)


# -- train / config --------------------------------------------------------------------------------------

def _npz(path: pathlib.Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def _dt_data_without_episodes(tmp: pathlib.Path) -> None:
    """Passes the cheap pre-run check (metadata and observations arrays) but is no trajectory file."""
    _npz(tmp / "dt.npz", metadata=np.array(json.dumps({"obs_shape": [7, 7, 3]})),
         observations=np.zeros((2, 7, 7, 3), np.uint8))


TRAIN = {
    # id: (recipe, overrides, setup(tmp_path) or None, needles); "{tmp}" is the test folder
    "algo-a-list": ("maze_ppo_cpu", ["algo=[1]"], None, ("algo [1]", "not a training kind")),
    "name-a-path": ("maze_ppo_cpu", ["name=../escaped"], None, ("name must be a plain folder name",)),
    "override-bad-yaml": ("maze_ppo_cpu", ["ppo.lr=[1"], None, ("ppo.lr=[1", "not valid YAML")),
    "env-seed-negative": ("maze_ppo_cpu", ["env.seed=-1"], None, ("env.seed",)),
    "env-seed-over-int32": ("maze_ppo_cpu", ["env.seed=3000000000"], None, ("env.seed",)),
    "start-level-over-int32": ("maze_ppo_cpu", ["env.start_level=2147483648"], None, ("env.start_level",)),
    "max-maze-size-over-world": ("maze_ppo_cpu", ["env.max_maze_size=17"], None, ("env.max_maze_size 17", "15×15")),
    "min-maze-size-over-max": ("maze_ppo_cpu", ["env.min_maze_size=11"], None, ("env.min_maze_size", "max_maze_size")),
    "cheese-reward-nan": ("maze_ppo_cpu", ["env.cheese_reward=.nan"], None, ("env.cheese_reward", "finite")),
    "lr-inf": ("maze_ppo_cpu", ["ppo.lr=.inf"], None, ("ppo.lr", "finite")),
    "minibatch-zero": ("maze_ppo_cpu", ["ppo.minibatch_size=0"], None, ("ppo.minibatch_size must be >= 1",)),
    "boost-strength-inf": ("maze_ppo_cpu", ["model.activation=kwta", "model.boost_strength=.inf"], None,
                           ("model.boost_strength", "finite")),
    "trainer-seed-negative": ("maze_ppo_cpu", ["trainer.seed=-1"], None, ("trainer.seed",)),
    "trainer-seed-over-uint32": ("maze_ppo_cpu", ["trainer.seed=4294967296"], None, ("trainer.seed",)),
    "precision-64-true-ppo": ("maze_ppo_cpu", ["trainer.precision=64-true"], None, ("trainer.precision=64-true",)),
    "precision-bf16-true-ppo": ("maze_ppo_cpu", ["trainer.precision=bf16-true"], None, ("trainer.precision",)),
    "accelerator-mps-missing": ("maze_ppo_cpu", ["trainer.accelerator=mps"], None, ("trainer.accelerator=mps",)),
    "run-dir-holds-a-tb-file": ("maze_ppo_cpu", [], lambda tmp: write(tmp / "run" / "tb", "not a folder"),
                                ("tb is a file", "tensorboard")),
    # already one line before this sweep
    "unknown-key": ("maze_ppo_cpu", ["ppo.lrr=1"], None, ("'ppo.lrr'", "ppo.lr")),
    "gamma-out-of-range": ("maze_ppo_cpu", ["ppo.gamma=1.5"], None, ("ppo.gamma",)),
    "recipe-is-a-folder": ("{tmp}/recipes", [], lambda tmp: (tmp / "recipes").mkdir(), ("is a folder",)),
    # ppo_minigrid
    "minigrid-seed-negative": ("minigrid_ppo_doorkey", ["env.seed=-1"], None, ("env.seed",)),
    "minigrid-sparse-layers-on-cnn": ("minigrid_ppo_doorkey", ["model.activation=kwta", "model.sparse_layers=[conv1]"],
                                      None, ("model.sparse_layers", "model.kind=impala")),
    "minigrid-precision-16-true": ("minigrid_ppo_doorkey", ["trainer.precision=16-true"], None, ("trainer.precision",)),
    "minigrid-unknown-env": ("minigrid_ppo_doorkey", ["env.env_id=MiniGrid-Nope-v0"], None, ("env.env_id",)),
    # dt
    "dt-split-seed-negative": ("dt_doorkey", ["data.split_seed=-1"], None, ("data.split_seed",)),
    "dt-spec-num-actions-negative": ("dt_doorkey", ["spec.num_actions=-1"], None, ("spec.num_actions",)),
    "dt-spec-obs-shape-vs-onehot": ("dt_doorkey", ["data.path={tmp}/d.npz", "spec.obs_shape=[7,7,20]",
                                                   "spec.num_actions=7"], lambda tmp: tiny_dataset(tmp / "d.npz"),
                                    ("model.state_encoding=onehot", "(7, 7, 20)")),
    "dt-rtg-scale-inf": ("dt_doorkey", ["model.rtg_scale=.inf"], None, ("model.rtg_scale", "finite")),
    "dt-data-not-trajectories": ("dt_doorkey", ["data.path={tmp}/dt.npz"], _dt_data_without_episodes,
                                 ("data.path", "dt.npz")),
    "dt-data-missing": ("dt_doorkey", ["data.path={tmp}/none.npz"], None, ("data.path", "not found")),
    # classify: the data is read when the module is built, which now happens before the run dir exists
    "classify-npz-missing": ("digits_dense", ["data.source=npz", "data.path={tmp}/none.npz"], None,
                             ("data file", "none.npz", "data.path")),
    "classify-npz-labels-do-not-fit": ("digits_dense", ["data.source=npz", "data.path={tmp}/xy.npz"],
                                       lambda tmp: _npz(tmp / "xy.npz", x=np.zeros((10, 8, 8)), y=np.zeros(9)),
                                       ("xy.npz", "y has shape (9,)")),
    "classify-folder-without-classes": ("digits_dense", ["data.source=folder", "data.path={tmp}/images"],
                                        lambda tmp: (tmp / "images").mkdir(), ("image folder", "subfolders")),
    "classify-num-classes-wrong": ("digits_dense", ["data.num_classes=3"], None, ("data.num_classes is 3",)),
    "classify-split-impossible": ("digits_dense", ["data.val_fraction=0.001"], None, ("cannot split",)),
    "classify-split-seed-negative": ("digits_dense", ["data.split_seed=-1"], None, ("data.split_seed",)),
    "classify-precision-64-true": ("digits_dense", ["trainer.precision=64-true"], None, ("trainer.precision",)),
}


@pytest.mark.parametrize("case", list(TRAIN), ids=list(TRAIN))
def test_train_bad_input(case, tmp_path, capsys):
    recipe, overrides, setup, needles = TRAIN[case]
    if case == "accelerator-mps-missing" and torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device")
    if setup is not None:
        setup(tmp_path)
    fill = lambda text: text.replace("{tmp}", str(tmp_path))  # noqa: E731
    tiny = MG_TINY if recipe.startswith("minigrid") else TINY if recipe.startswith("maze") else []
    run_dir = [] if case == "name-a-path" else ["--run-dir", str(tmp_path / "run")]
    check_refused(["train", fill(recipe), *tiny, *map(fill, overrides), *run_dir], needles, tmp_path, capsys)


def test_config_refuses_what_train_refuses(tmp_path, capsys):
    """`shardlab config` runs the same validation: exit 2, one line."""
    check_refused(["config", "maze_demo", "name=a/b"], ("name must be a plain folder name",), tmp_path, capsys)
    check_refused(["config", "maze_demo", "trainer.seed=-1"], ("trainer.seed",), tmp_path, capsys)


# -- resume ----------------------------------------------------------------------------------------------

def _weights_only(state: dict) -> dict:
    return {key: state[key] for key in ("state_dict", "hyper_parameters", "shardlab")}


def _misshapen(state: dict) -> dict:
    return {**state, "state_dict": {k: v[:1] if v.ndim else v for k, v in state["state_dict"].items()}}


RESUME = {
    # id: (how to damage the copied run folder ``run``, extra arguments, needles)
    "run-dir-is-a-file": (lambda run: (shutil.rmtree(run), write(run, "a file")), [], ("is a file, not a run directory",)),
    "last-ckpt-is-a-folder": (lambda run: ((run / "checkpoints" / "last.ckpt").unlink(),
                                           (run / "checkpoints" / "last.ckpt").mkdir()), [], ("is a folder",)),
    "ckpt-without-config": (lambda run: edit_checkpoint(run / "checkpoints" / "last.ckpt", lambda s: {
        k: v for k, v in s.items() if k != "hyper_parameters"}), [], ("carries no config",)),
    "ckpt-config-a-string": (lambda run: edit_checkpoint(run / "checkpoints" / "last.ckpt", lambda s: {
        **s, "hyper_parameters": {"config": "x"}}), [], ("carries no config",)),
    "ckpt-shardlab-block-not-a-mapping": (lambda run: edit_checkpoint(run / "checkpoints" / "last.ckpt", lambda s: {
        **s, "shardlab": 3}), [], ("not a mapping",)),
    "ckpt-without-progress-counter": (lambda run: edit_checkpoint(run / "checkpoints" / "last.ckpt", lambda s: {
        **s, "shardlab": {"format": 1}}), [], ("shardlab.env_steps",)),
    "ckpt-weights-only": (lambda run: edit_checkpoint(run / "checkpoints" / "last.ckpt", _weights_only),
                          ["trainer.total_steps=256"], ("no training state", "optimizer_states")),
    "ckpt-weights-misshapen": (lambda run: edit_checkpoint(run / "checkpoints" / "last.ckpt", _misshapen),
                               ["trainer.total_steps=256"], ("does not fit", "shape mismatch")),
    "config-yaml-is-a-folder": (lambda run: ((run / "config.yaml").unlink(), (run / "config.yaml").mkdir()), [],
                                ("config.yaml is not a file",)),
    "metrics-jsonl-corrupt-line": (lambda run: write(run / "metrics.jsonl", "{not json\n"), ["trainer.total_steps=256"],
                                   ("metrics.jsonl line 1",)),
    "metrics-jsonl-binary": (lambda run: write(run / "metrics.jsonl", b"\xff\xfe\x00\x81\n"),
                             ["trainer.total_steps=256"], ("metrics.jsonl is not UTF-8",)),
    "csv-metrics-binary": (lambda run: write(run / "csv" / "metrics.csv", b"\xff\xfe\x00\x81\n"),
                           ["trainer.total_steps=256"], ("metrics.csv is not a metrics table",)),
    "tb-is-a-file": (lambda run: (shutil.rmtree(run / "tb"), write(run / "tb", "x")), ["trainer.total_steps=256"],
                     ("tb is a file",)),
    "override-seed-negative": (lambda run: None, ["trainer.seed=-1"], ("trainer.seed",)),
    "override-precision-64-true": (lambda run: None, ["trainer.precision=64-true"], ("trainer.precision",)),
    "override-accelerator-tpu": (lambda run: None, ["trainer.accelerator=tpu"], ("trainer.accelerator=tpu",)),
    # already one line before this sweep
    "ckpt-truncated": (lambda run: write(run / "checkpoints" / "last.ckpt",
                                         (run / "checkpoints" / "last.ckpt").read_bytes()[:2000]), [],
                       ("corrupt or truncated",)),
    "override-unknown-key": (lambda run: None, ["ppo.lrr=1"], ("'ppo.lrr'",)),
}


@pytest.mark.parametrize("case", list(RESUME), ids=list(RESUME))
def test_resume_bad_input(case, tmp_path, tiny_run, capsys):
    damage, extra, needles = RESUME[case]
    if case == "override-accelerator-tpu":
        import importlib.util
        if importlib.util.find_spec("torch_xla") is not None:
            pytest.skip("torch_xla is installed")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    damage(run)
    check_refused(["resume", str(run), *extra], needles, tmp_path, capsys)


def test_resume_drops_a_metrics_line_cut_off_by_a_kill(tmp_path, tiny_run, capsys):
    """The one damaged metrics.jsonl a crash leaves (a last line without its newline) is not bad input."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    rows = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(rows + '{"env_steps": 9')
    assert cli.main(["resume", str(run), "trainer.total_steps=256"]) == 0
    steps = [json.loads(line)["env_steps"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 256


# -- collect ---------------------------------------------------------------------------------------------

COLLECT_BASE = ["collect", "--env", "MiniGrid-DoorKey-5x5-v0", "--source", "random", "--episodes", "2",
                "--no-progress"]
COLLECT = {
    # id: (arguments after COLLECT_BASE, setup(tmp_path) or None, needles)
    "seed-negative": (["--seed", "-1", "--out", "{tmp}/x.npz"], None, ("--seed must be >= 0",)),
    "out-empty": (["--out", ""], None, ("--out is empty",)),
    "out-under-a-file": (["--out", "{tmp}/file/x.npz"], lambda tmp: write(tmp / "file", "keep"), ("is a file",)),
    "append-and-force": (["--out", "{tmp}/x.npz", "--append", "--force"], lambda tmp: write(tmp / "x.npz", "keep"),
                         ("--append and --force",)),
    "temperature-inf": (["--temperature", "inf", "--out", "{tmp}/x.npz"], None, ("(0, inf)", "--temperature")),
    "source-a-folder": (["--source", "{tmp}/ckpts", "--out", "{tmp}/x.npz"], lambda tmp: (tmp / "ckpts").mkdir(),
                        ("is a folder",)),
    # already one line before this sweep
    "num-envs-zero": (["--num-envs", "0", "--out", "{tmp}/x.npz"], None, ("--num-envs",)),
    "seed-not-an-int": (["--seed", "abc", "--out", "{tmp}/x.npz"], None, ("--seed",)),
    "out-a-folder": (["--out", "{tmp}"], None, ("is a directory",)),
}


@pytest.mark.parametrize("case", list(COLLECT), ids=list(COLLECT))
def test_collect_bad_input(case, tmp_path, capsys):
    extra, setup, needles = COLLECT[case]
    if setup is not None:
        setup(tmp_path)
    argv = [*COLLECT_BASE, *(a.replace("{tmp}", str(tmp_path)) for a in extra)]
    check_refused(argv, needles, tmp_path, capsys)


# -- eval: arguments, suite files, checkpoints -------------------------------------------------------------

def _suite(tmp: pathlib.Path, text: str) -> None:
    write(tmp / "suite.yaml", text)


GM = "evals:\n  goal_misgeneralization: {mazes: 2, decision_mazes: 2}\n"
EVAL = {
    # id: (arguments after `eval CKPT --suite {tmp}/suite.yaml --out {tmp}/o --no-progress`, setup, needles)
    "suite-without-evals": ([], lambda tmp: _suite(tmp, "evals: {}\n"), ("names no evals",)),
    "suite-evals-a-number": ([], lambda tmp: _suite(tmp, "evals: 3\n"), ("names no evals",)),
    "suite-eval-config-a-list": ([], lambda tmp: _suite(tmp, "evals:\n  goal_misgeneralization: [1]\n"),
                                 ("goal_misgeneralization", "must be a mapping")),
    "suite-eval-name-a-number": ([], lambda tmp: _suite(tmp, "evals:\n  3: {}\n"), ("eval name 3",)),
    "suite-thresholds-a-list": ([], lambda tmp: _suite(tmp, GM + "thresholds: [1]\n"), ("thresholds in suite",)),
    "threshold-not-a-number": ([], lambda tmp: _suite(tmp, GM + "thresholds:\n  goal_misgeneralization.p_cheese: "
                                                      "{min: abc}\n"), ("min must be a finite number",)),
    "threshold-min-above-max": ([], lambda tmp: _suite(tmp, GM + "thresholds:\n  goal_misgeneralization.p_cheese: "
                                                       "{min: 1, max: 0}\n"), ("can never hold",)),
    "threshold-without-eval": ([], lambda tmp: _suite(tmp, GM + "thresholds:\n  p_cheese: {min: 0}\n"),
                               ("EVAL.METRIC",)),
    "threshold-for-another-eval": ([], lambda tmp: _suite(tmp, GM + "thresholds:\n  steering.x: {min: 0}\n"),
                                   ("steering", "does not run")),
    "suite-seed-negative": ([], lambda tmp: _suite(tmp, "seed: -1\n" + GM), ("seed in suite",)),
    "suite-seed-a-bool": ([], lambda tmp: _suite(tmp, "seed: true\n" + GM), ("seed in suite",)),
    "seed-negative": (["--seed", "-1"], lambda tmp: _suite(tmp, GM), ("--seed",)),
    "seed-over-procgen-range": (["--seed", "99999999999"], lambda tmp: _suite(tmp, GM), ("--seed",)),
    "loggers-twice": (["--loggers", "csv,csv"], lambda tmp: _suite(tmp, GM), ("--loggers", "twice")),
    "loggers-empty": (["--loggers", ""], lambda tmp: _suite(tmp, GM), ("--loggers", "logger names")),
    "out-csv-not-a-table": (["--loggers", "csv"], lambda tmp: (_suite(tmp, GM), write(tmp / "o" / "csv" / "metrics.csv",
                                                                                      b"\xff\xfe\x00")),
                            ("metrics.csv is not a metrics table",)),
    "override-bad-yaml": (["goal_misgeneralization.mazes=[1"], lambda tmp: _suite(tmp, GM), ("not valid YAML",)),
    "suite-a-folder": (["--suite", "{tmp}/suites"], lambda tmp: (tmp / "suites").mkdir(), ("is a folder",)),
    "ckpt-config-a-string": (["--checkpoint", "{tmp}/c.ckpt"], lambda tmp: _suite(tmp, GM), ("carries no config",)),
    "ckpt-shardlab-block-a-number": (["--checkpoint", "{tmp}/c.ckpt"], lambda tmp: _suite(tmp, GM), ("not a mapping",)),
    # already one line before this sweep
    "unknown-eval": ([], lambda tmp: _suite(tmp, "evals:\n  goal_misgeneralisation: {}\n"), ("did you mean",)),
    "oracle-without-recipe": (["--checkpoint", "oracle:cheese_seeker"], lambda tmp: _suite(tmp, GM), ("--recipe",)),
    "device-unknown": (["--device", "tpu"], lambda tmp: _suite(tmp, GM), ("device 'tpu'",)),
    "env-backend-unknown": (["--env-backend", "gym"], lambda tmp: _suite(tmp, GM), ("--env-backend", "'gym'")),
}


@pytest.mark.parametrize("case", list(EVAL), ids=list(EVAL))
def test_eval_bad_input(case, tmp_path, tiny_maze_checkpoint, capsys):
    extra, setup, needles = EVAL[case]
    setup(tmp_path)
    checkpoint = tiny_maze_checkpoint
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    if "--checkpoint" in extra:  # a case's own checkpoint (not an option of `shardlab eval`)
        at = extra.index("--checkpoint")
        checkpoint = extra[at + 1]
        del extra[at:at + 2]
    if case == "ckpt-config-a-string":
        state = torch.load(tiny_maze_checkpoint, map_location="cpu", weights_only=True)
        torch.save({**state, "hyper_parameters": {"config": "x"}}, tmp_path / "c.ckpt")
    elif case == "ckpt-shardlab-block-a-number":
        state = torch.load(tiny_maze_checkpoint, map_location="cpu", weights_only=True)
        torch.save({**state, "shardlab": 3}, tmp_path / "c.ckpt")
    suite = [] if "--suite" in extra else ["--suite", str(tmp_path / "suite.yaml")]
    check_refused(["eval", checkpoint, *suite, "--out", str(tmp_path / "o"), "--no-progress", *extra], needles,
                  tmp_path, capsys)


def test_eval_env_backend_native_refuses_a_network_of_a_fixed_level_set(tmp_path, capsys):
    """The native backend draws fresh mazes only: a network trained on procgen's level seeds
    (env.num_levels > 0) is refused before anything runs."""
    from omegaconf import OmegaConf

    from shardlab.trainers.config import load_config
    from shardlab.trainers.kinds import get_kind

    recipe = OmegaConf.load(ROOT / "configs" / "train" / "maze_ppo_cpu_rgb.yaml")
    recipe.env.num_levels = 100
    OmegaConf.save(recipe, tmp_path / "levels.yaml")
    network = get_kind("ppo").build_network(load_config(tmp_path / "levels.yaml"))
    torch.save(network.state_dict(), tmp_path / "levels.pth")
    _suite(tmp_path, GM)
    check_refused(["eval", "--weights", str(tmp_path / "levels.pth"), "--recipe", str(tmp_path / "levels.yaml"),
                   "--suite", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "o"), "--no-progress",
                   "--env-backend", "native"], ("--env-backend native", "env.num_levels: 100", "drop --env-backend"),
                  tmp_path, capsys)


# -- eval: every maze eval's config, checked against the checkpoint before anything runs --------------------

EVAL_CONFIG = [
    # (override, needles); each runs with --only <its eval>
    ("goal_misgeneralization.mazes=0", ("goal_misgeneralization.mazes",)),
    ("goal_misgeneralization.max_size=2", ("goal_misgeneralization.max_size",)),
    ("goal_misgeneralization.region=99", ("goal_misgeneralization", "region 99")),
    ("steering.layer=bogus", ("steering.layer", "bogus")),
    ("steering.min_size=99", ("steering", "min_size 99")),
    ("steering.cheese_coefficient=.nan", ("cheese_coefficient", "finite")),
    ("retargeting.targets=[]", ("retargeting targets",)),
    ("retargeting.cell_radii=[]", ("cell_radii",)),
    ("retargeting.layer=bogus", ("retargeting.layer",)),
    ("retargeting.channels=[9999]", ("retargeting.channels", "9999")),
    ("retargeting.top_channels=9999", ("top_channels", "9999")),
    ("retargeting.value=.nan", ("'value'", "finite")),
    ("retargeting.max_size=2", ("retargeting.max_size",)),
    ("probes.layers=[bogus]", ("probes.layers", "bogus")),
    ("probes.regularization=[.nan]", ("regularization", "finite")),
    ("probes.mazes=0", ("probes.mazes",)),
    ("activation_patching.layer=bogus", ("activation_patching.layer",)),
    ("activation_patching.channel_layers=[bogus]", ("activation_patching.channel_layers",)),
    ("activation_patching.channels=[9999]", ("activation_patching.channels", "9999")),
    ("activation_patching.channels=published", ("activation_patching.channels", "published")),
    ("activation_patching.report_channels=-1", ("activation_patching.report_channels",)),
    ("causal_scrubbing.layer=bogus", ("causal_scrubbing.layer",)),
    ("causal_scrubbing.channels=[9999]", ("causal_scrubbing.channels", "9999")),
    ("causal_scrubbing.hypotheses={h: [{features: [cheese_location], layer: bogus}]}", ("hypothesis 'h' layer",)),
    ("jacobian_svd.layers=[]", ("jacobian_svd", "layers")),
    ("jacobian_svd.layers=[bogus]", ("jacobian_svd.layers",)),
    ("jacobian_svd.mazes=0", ("jacobian_svd", "mazes")),
    ("saliency_pca.top_k=0", ("saliency_pca", "top_k")),
    ("saliency_pca.layers=[bogus]", ("saliency_pca.layers",)),
    ("relu_ablation.relus=[]", ("relu_ablation.relus",)),
    ("relu_ablation.mazes=0", ("relu_ablation.mazes",)),
    ("finetune_to_cheese.eval_mazes=0", ("finetune_to_cheese", "eval_mazes")),
    ("finetune_to_cheese.confirm_mazes=0", ("finetune_to_cheese", "confirm_mazes")),
    ("finetune_to_cheese.lr=0", ("finetune_to_cheese.lr",)),
    ("finetune_to_cheese.overrides=[model.scale=2]", ("finetune_to_cheese", "model")),
    ("finetune_to_cheese.overrides=[ppo.lr=abc]", ("finetune_to_cheese", "ppo.lr")),
    ("finetune_to_cheese.overrides=[trainer.seed=-1]", ("finetune_to_cheese", "trainer.seed")),
    ("sparsity.pixel_noise_value=.nan", ("pixel_noise_value", "finite")),
    ("sparsity.noise_levels=[.inf]", ("noise_levels", "finite")),
    # already one line before this sweep
    ("steering.coefficients=[]", ("steering",)),
    ("saliency_pca.action=bogus", ("saliency_pca.action",)),
]


@pytest.mark.parametrize("override, needles", EVAL_CONFIG, ids=[o for o, _ in EVAL_CONFIG])
def test_eval_config_bad_value(override, needles, tmp_path, tiny_maze_checkpoint, capsys):
    _suite(tmp_path, SUITE)
    name = override.split(".", 1)[0]
    check_refused(["eval", tiny_maze_checkpoint, "--suite", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "o"),
                   "--no-progress", "--only", name, override], needles, tmp_path, capsys)


# the decision-transformer and MiniGrid evals' configs, checked without a checkpoint of their kind
UNIT_EVAL_CONFIG = [
    ("dt_rtg", {"episodes": 0}, "dt_rtg needs episodes >= 1"),
    ("dt_rtg", {"max_steps": 0}, "max_steps"),
    ("dt_rtg", {"targets": [float("nan")]}, "targets[0]"),
    ("dt_steering", {"coefficients": []}, "dt_steering.coefficients"),
    ("dt_steering", {"windows": 0}, "windows"),
    ("dt_steering", {"random_vectors": -1}, "random_vectors"),
    ("dt_steering", {"condition_b": float("inf")}, "condition_b"),
    ("dt_attention", {"episodes": 0}, "dt_attention needs episodes >= 1"),
    ("dt_attention", {"max_steps": -3}, "max_steps"),
    ("dt_attention", {"target": float("nan")}, "'target'"),
    ("minigrid_return", {"episodes": 0}, "minigrid_return.episodes"),
]


@pytest.mark.parametrize("name, values, needle", UNIT_EVAL_CONFIG,
                         ids=[f"{n}-{next(iter(v))}" for n, v, _ in UNIT_EVAL_CONFIG])
def test_eval_config_checks_without_a_checkpoint(name, values, needle):
    from shardlab.evals.suite.registry import EvalError, get
    from shardlab.evals.suite.suite_file import eval_config

    with pytest.raises((EvalError, ValueError)) as info:
        get(name)(eval_config(get(name), name, values))
    message = str(info.value)
    assert needle in message and len(message.splitlines()) == 1, message


# -- as a user runs them: a clean stderr and the process's own exit code ------------------------------------

def _run_each(warm_python, cases: list[list[str]], cwd: pathlib.Path) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of `python -m shardlab ARGV` for each ARGV, run from ``cwd``: each a
    process of its own, forked from an interpreter that has imported torch and Lightning already (most
    of a process's start-up, the same for every case; tests/warm_python.py). shardlab itself is
    imported by each case, as a fresh process would."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for name in ("LOCAL_RANK", "RANK", "NODE_RANK"):
        env.pop(name, None)
    done = [warm_python.run(argv, str(cwd), env, timeout=600) for argv in cases]
    return [(run.returncode, run.stdout, run.stderr) for run in done]


def test_former_tracebacks_exit_2_in_a_real_process(tmp_path, warm_python, tiny_run):
    """Cases that used to end in a traceback (or exit 1 after writing), each run as its own process."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    edit_checkpoint(run / "checkpoints" / "last.ckpt", _weights_only)
    write(tmp_path / "suite.yaml", "evals: 3\n")
    before = snapshot(tmp_path)
    cases = [
        (["train", "maze_ppo_cpu", "algo=[1]", "--run-dir", str(tmp_path / "new")], "algo"),
        (["train", "maze_ppo_cpu", *TINY, "trainer.seed=-1", "--run-dir", str(tmp_path / "new")], "trainer.seed"),
        (["resume", str(run), "trainer.total_steps=256"], "no training state"),
        (["collect", *COLLECT_BASE[1:], "--seed", "-1", "--out", str(tmp_path / "x.npz")], "--seed"),
        (["eval", str(run / "checkpoints" / "step-000000000128.ckpt"), "--suite", str(tmp_path / "suite.yaml"),
          "--out", str(tmp_path / "o")], "names no evals"),
    ]
    ran = _run_each(warm_python, [argv for argv, _ in cases], tmp_path)
    for (argv, needle), (returncode, _, stderr) in zip(cases, ran):
        lines = stderr.strip().splitlines()
        assert returncode == 2 and len(lines) == 1 and needle in lines[0], (argv, returncode, stderr)
        assert lines[0].startswith(f"shardlab {argv[0]}: error: "), lines[0]
    assert snapshot(tmp_path) == before
