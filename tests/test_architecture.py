"""The project's shape: one atomic writer for every file it writes, no second copy of it."""

from __future__ import annotations

import ast
import json
import os
import subprocess

import pytest

from shardlab import atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_FOLDERS = ("shardlab", "trainers", "envs", "models", "evals", "configs")

# -- the atomic writer ---------------------------------------------------------------------------


def test_atomic_write_writes_text_and_bytes_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")
    atomic.write_text(path, "néw ✅")
    assert path.read_text(encoding="utf-8") == "néw ✅" and os.listdir(tmp_path) == ["report.md"]
    atomic.write_bytes(tmp_path / "blob", b"\x00\x01")
    with atomic.atomic_write(tmp_path / "handle.txt") as handle:
        handle.write("a\n")
        handle.write("b\n")
    assert (tmp_path / "blob").read_bytes() == b"\x00\x01" and (tmp_path / "handle.txt").read_text() == "a\nb\n"
    assert sorted(os.listdir(tmp_path)) == ["blob", "handle.txt", "report.md"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_exception_keeps_the_old_content_and_removes_the_temp_file(tmp_path, error):
    path = tmp_path / "results.json"
    path.write_text("old")
    seen = []
    with pytest.raises(error):
        with atomic.atomic_write(path, "w") as handle:
            handle.write("half of the new ")
            seen.extend(os.listdir(tmp_path))
            raise error
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]
    # the temp file was beside the target, hidden, and named by the one scheme
    temp = [name for name in seen if name != "results.json"]
    assert len(temp) == 1 and temp[0].startswith(".results.json.tmp-") and atomic.is_temp_name(temp[0])
    with pytest.raises(ValueError):  # a save callback that fails leaves no new file either
        atomic.save_with(tmp_path / "new.bin", lambda handle: (handle.write(b"x"), int("boom")))
    assert os.listdir(tmp_path) == ["results.json"]


def test_save_with_json_folders_permissions_and_bad_mode(tmp_path):
    saved = atomic.save_with(tmp_path / "a" / "b" / "x.bin", lambda handle: handle.write(b"saved"), make_parents=True,
                             sync_dir=True)
    assert open(saved, "rb").read() == b"saved"
    atomic.write_json(tmp_path / "x.json", {"b": [1, 2.5], "a": None}, sort_keys=True)
    text = (tmp_path / "x.json").read_text()
    assert json.loads(text) == {"a": None, "b": [1, 2.5]} and text.endswith("}\n")
    with pytest.raises(ValueError):
        atomic.write_json(tmp_path / "nan.json", {"a": float("nan")}, allow_nan=False)
    assert not (tmp_path / "nan.json").exists()
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "x.json").st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    with pytest.raises(ValueError, match="mode"):
        with atomic.atomic_write(tmp_path / "y", "a"):
            pass
    with pytest.raises(FileNotFoundError):  # no folder, and not asked to make it
        atomic.write_text(tmp_path / "missing" / "x.txt", "x")


def test_link_atomic_points_the_target_at_the_source(tmp_path):
    (tmp_path / "step-1.ckpt").write_bytes(b"one")
    (tmp_path / "step-2.ckpt").write_bytes(b"two")
    atomic.link_atomic(tmp_path / "step-1.ckpt", tmp_path / "last.ckpt")
    atomic.link_atomic(tmp_path / "step-2.ckpt", tmp_path / "last.ckpt", sync_dir=True)
    assert (tmp_path / "last.ckpt").read_bytes() == b"two"
    assert os.path.samefile(tmp_path / "last.ckpt", tmp_path / "step-2.ckpt")
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt", "step-1.ckpt", "step-2.ckpt"]
    assert atomic.is_temp_name("step-2.ckpt.tmp-1234")  # the names older versions left are cleaned too


# -- no second writer ----------------------------------------------------------------------------

# files that rename without writing a file, and why
RENAME_ALLOWED = {
    os.path.join("shardlab", "atomic.py"): "the atomic writer itself",
    # keep_csv_rows moves Lightning's metrics.csv aside (it would delete it) and logs its rows again
    os.path.join("trainers", "loggers.py"): "moves an existing file aside; writes nothing",
}


def _python_files():
    """Every .py file of the package folders and scripts/, and at the top of the repository."""
    found = [name for name in os.listdir(ROOT) if name.endswith(".py")]
    for folder in (*PACKAGE_FOLDERS, "scripts"):
        for base, dirs, files in os.walk(os.path.join(ROOT, folder)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            found += [os.path.relpath(os.path.join(base, name), ROOT) for name in files if name.endswith(".py")]
    return sorted(found)


def _renames(tree: ast.AST) -> list[int]:
    """Lines that rename or link a file into place: os.replace/os.rename/os.link/shutil.move, any
    ``.rename(``, a one-argument ``.replace(`` (pathlib's; str.replace takes two), or one of those
    imported by name."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            one_argument = len(node.args) == 1 and not node.keywords
            if node.func.attr == "rename" or (owner == "os" and node.func.attr in ("replace", "link")) \
                    or (owner == "shutil" and node.func.attr == "move") \
                    or (node.func.attr == "replace" and one_argument and owner != "dataclasses"):
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module in ("os", "shutil"):
            if {alias.name for alias in node.names} & {"replace", "rename", "link", "move"}:
                lines.append(node.lineno)
    return lines


def test_no_second_temp_then_rename_writer():
    """Files are written with shardlab.atomic; a new hand-written temp-file-then-rename (or a new
    rename of any kind) fails here until it uses the atomic writer or is allowed above with a reason."""
    found = {}
    for rel in _python_files():
        if rel in RENAME_ALLOWED:
            continue
        with open(os.path.join(ROOT, rel), encoding="utf-8") as handle:
            lines = _renames(ast.parse(handle.read(), rel))
        if lines:
            found[rel] = lines
    assert found == {}, f"renames outside shardlab/atomic.py (use shardlab.atomic): {found}"
    assert all(os.path.isfile(os.path.join(ROOT, rel)) for rel in RENAME_ALLOWED)


def test_the_walk_sees_the_writers_it_guards_against(tmp_path):
    """The check above would catch the hand-written writers this project used to have."""
    code = ("import os, shutil\nfrom pathlib import Path\n"
            "def save(path, text):\n    tmp = path + '.tmp'\n    open(tmp, 'w').write(text)\n    os.replace(tmp, path)\n"
            "def move(a, b):\n    Path(a).rename(b)\n    shutil.move(a, b)\n    os.link(a, b)\n"
            "    Path(a).replace(b)\n    a.replace('x', 'y')\n")
    assert _renames(ast.parse(code)) == [6, 8, 9, 10, 11]


# -- configs beside their code -------------------------------------------------------------------

HEAVY = ("torch", "procgen", "gym3", "minigrid", "gymnasium", "torchrl", "tensordict", "lightning",
         "pytorch_lightning", "lightning_fabric", "matplotlib")
# the one env library a kind's validation asks: a MiniGrid env id is checked against gymnasium's
# registry, which minigrid fills when imported (envs/minigrid_registry.py; still no torch)
REGISTRY_LOOKUP = {"ppo_minigrid": ("gymnasium", "minigrid")}


def _recipes() -> list[str]:
    from shardlab import configs

    return [entry.name for entry in configs.shipped("recipe")]


@pytest.fixture(scope="module")
def trajectory_file(tmp_path_factory) -> str:
    """The smallest file the dt schema's check accepts as a dataset (it reads only the metadata)."""
    import numpy as np

    path = tmp_path_factory.mktemp("dt") / "doorkey.npz"
    np.savez(path, metadata=np.array(json.dumps({"obs_shape": [7, 7, 3]})),
             observations=np.zeros((1, 7, 7, 3), np.uint8))
    return str(path)


def _run_python(code: str) -> str:
    import sys

    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_importing_the_config_module_is_light():
    code = ("import sys, json; import shardlab.trainers.config, shardlab.trainers.kinds, shardlab.configs.checks; "
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    assert json.loads(_run_python(code)) == []


@pytest.fixture(scope="module")
def warm_torch(tmp_path_factory):
    """Forks ``python -c`` programs from an interpreter that has imported torch and nothing else
    (tests/warm_python.py): each child still imports all of shardlab and what it imports afresh."""
    from warm_python import WarmPython

    server = WarmPython(str(tmp_path_factory.mktemp("warm_torch")), preload=("torch",))
    yield server
    server.close()


def _fork_python(warm_torch, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return warm_torch.run([], ROOT, env, timeout=900, code=code)  # imports take minutes on a loaded machine


def test_importing_the_trainers_and_evals_prints_nothing(warm_torch):
    """gym prints a notice when first imported (procgen and torchrl import it); config loading used
    to import procgen quietly before anything else, now each importer silences it itself."""
    for code in ("import shardlab.trainers.ppo", "from shardlab.evals.suite.registry import available; available()",
                 "import shardlab.envs.maze_views"):  # available() imports every shipped eval
        out = _fork_python(warm_torch, code)
        assert out.returncode == 0 and out.stderr == "", (code, out.stderr[-2000:])


# what only training needs: evaluating a maze checkpoint starts without them (seconds per process)
TRAINING_ONLY = ("pytorch_lightning", "lightning_fabric", "torchrl", "tensordict", "minigrid", "gymnasium")


def test_evaluating_a_maze_checkpoint_imports_nothing_only_training_needs(tmp_path, warm_torch):
    """`shardlab eval` on a maze checkpoint, TensorBoard scalars included, in a fresh interpreter:
    the checkpoint's network loads without its LightningModule, the suite imports only the evals
    it names, and the scalars are written with torch's SummaryWriter."""
    suite = tmp_path / "suite.yaml"
    suite.write_text("evals:\n  steering: {mazes: 2}\n")
    checkpoint = os.path.join(ROOT, "tests", "fixtures", "ci_policy.ckpt")
    code = ("import sys, json\nfrom shardlab import cli\n"
            f"code = cli.main(['eval', {checkpoint!r}, '--suite', {str(suite)!r}, '--out', {str(tmp_path / 'out')!r}, "
            "'--no-progress', '--loggers', 'tensorboard'])\n"
            f"print(json.dumps([code, sorted(m for m in {TRAINING_ONLY!r} if m in sys.modules)]))")
    out = _fork_python(warm_torch, code)
    assert out.returncode == 0, out.stderr[-3000:]
    code, imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert code == 0 and imported == []
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "out" / "tb"))


def test_the_registry_table_names_the_module_that_registers_each_builtin_eval():
    import importlib

    from shardlab.evals.suite import registry

    for name, module in registry.BUILTIN.items():
        importlib.import_module(module)
        assert registry.DECLARED[name].__module__ == module, name
    registry.available()  # every shipped module: none registers an eval the table leaves out
    shipped = {name for name, cls in registry.DECLARED.items() if cls.__module__.startswith("shardlab.")}
    assert shipped == set(registry.BUILTIN)


@pytest.mark.parametrize("recipe", _recipes())
def test_loading_and_validating_a_shipped_recipe_imports_no_torch_or_env_library(recipe, trajectory_file):
    """In a fresh interpreter, load_config (read, merge, validate) of each shipped recipe imports
    neither torch nor Lightning nor an env library, other than the registry lookup above."""
    from shardlab import configs

    path = configs.resolve("recipe", recipe)
    overrides = [f"data.path={trajectory_file}"] if recipe.startswith("dt_") else []
    code = ("import sys, json\nfrom shardlab.trainers.config import load_config\n"
            f"cfg = load_config({path!r}, {overrides!r})\n"
            f"print(json.dumps([cfg.algo, sorted(m for m in {HEAVY!r} if m in sys.modules)]))")
    algo, imported = json.loads(_run_python(code))
    assert imported == sorted(REGISTRY_LOOKUP.get(algo, ())), f"{recipe} ({algo}) imported {imported}"


def test_every_kind_keeps_its_schema_validator_and_env_config_in_a_torch_free_module():
    from shardlab.trainers.kinds import KINDS

    for kind in KINDS.values():
        # the env-config builders too: turning a config's env section into its dataclass stays light
        for field in ("schema", "validate") + (("env_config",) if kind.env_config else ()):
            module = getattr(kind, field).split(":")[0]
            assert module.endswith("_config"), f"{kind.algo}.{field} = {getattr(kind, field)}"


# -- imports -------------------------------------------------------------------------------------

PACKAGES = {"shardlab": "shardlab", "shardlab.trainers": "trainers", "shardlab.envs": "envs",
            "shardlab.models": "models", "shardlab.evals": "evals", "shardlab.configs": "configs"}


def _modules() -> dict[str, str]:
    """Module name → file of every .py file in the package folders (setup.cfg's package_dir)."""
    found = {}
    for package, folder in PACKAGES.items():
        base = os.path.join(ROOT, folder)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if os.path.isfile(os.path.join(dirpath, d, "__init__.py")))
            rel = os.path.relpath(dirpath, base)
            sub = package if rel == "." else f"{package}.{rel.replace(os.sep, '.')}"
            for name in sorted(filenames):
                if name.endswith(".py"):
                    found[sub if name == "__init__.py" else f"{sub}.{name[:-3]}"] = os.path.join(dirpath, name)
    return found


def _module_level_imports(tree: ast.Module, in_functions: bool = False) -> list[ast.stmt]:
    """The import statements that run when the module is imported: not those under
    ``if TYPE_CHECKING:``, and not those inside functions unless ``in_functions``."""
    found = []

    def visit(statements):
        for statement in statements:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)) and not in_functions:
                continue
            if isinstance(statement, (ast.Import, ast.ImportFrom)):
                found.append(statement)
            elif isinstance(statement, ast.If) and "TYPE_CHECKING" in ast.unparse(statement.test):
                visit(statement.orelse)
            else:
                for name in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(statement, name, None) or [])

    visit(tree.body)
    return found


def import_graph(in_functions: bool = False) -> dict[str, set[str]]:
    """Module → the package modules it imports at module level (also inside functions with
    ``in_functions``); ``from pkg import sub`` counts as ``pkg.sub`` when that is a module, else as
    ``pkg``; relative imports are resolved."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
        edges = set()
        for node in _module_level_imports(tree, in_functions):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name in modules}
                continue
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    edges.add(f"{base}.{alias.name}")
                elif base in modules:
                    edges.add(base)
        edges.discard(module)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] if there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_no_import_cycles_between_files():
    graph = import_graph()
    assert "shardlab.trainers.kinds" in graph["shardlab.trainers.config"]  # the walk sees imports
    assert "shardlab.envs.maze_state" in graph["shardlab.envs.maze"]  # ... and `from pkg import module`
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_no_cycle_is_hidden_in_an_import_inside_a_function_or_the_registry_table():
    """Deferring an import into a function hides a cycle from the test above but not from Python;
    nor does importing by name. Counting imports inside functions and the eval registry's table of
    built-in eval modules (imported by name on first lookup) as imports, there is no cycle: the
    evals import ``base`` for @register, never the registry."""
    from shardlab.evals.suite import registry

    graph = import_graph(in_functions=True)
    graph["shardlab.evals.suite.registry"] |= set(registry.BUILTIN.values())
    assert set(registry.BUILTIN.values()) <= set(graph)  # every table entry is a module of the package
    cycle = find_cycle(graph)
    assert not cycle, "import cycle through an import inside a function: " + " -> ".join(cycle)


def test_nothing_below_reaches_up_into_the_api_or_the_command_line():
    """evals/ and trainers/ serve ``shardlab.api`` and ``shardlab.cli``; they never import them,
    not even inside a function."""
    graph = import_graph(in_functions=True)
    climbing = sorted((module, target) for module, targets in graph.items()
                      if module.startswith(("shardlab.evals", "shardlab.trainers"))
                      for target in targets if target in ("shardlab.api", "shardlab.cli"))
    assert climbing == []


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    code = "from typing import TYPE_CHECKING\nimport x\nif TYPE_CHECKING:\n    import y\ndef f():\n    import z\n" \
           "try:\n    import w\nexcept ImportError:\n    pass\nclass C:\n    import v\n"
    imported = [alias.name for node in _module_level_imports(ast.parse(code)) for alias in node.names]
    assert imported == ["TYPE_CHECKING", "x", "w", "v"]


@pytest.mark.parametrize("module", ["shardlab.atomic", "shardlab.configs.checks", "shardlab.envs.seeding",
                                    "shardlab.bars", "shardlab.paths"])
def test_leaf_modules_import_nothing_of_shardlab(module):
    assert import_graph()[module] == set()


def test_models_import_nothing_of_envs_or_trainers():
    """Networks and their builders take what they need from the env as arguments (the kind's
    ``env_shapes``, trainers/kinds.py), so models/ never imports envs/ or trainers/, not even
    inside a function."""
    graph = import_graph(in_functions=True)
    reaching = sorted((module, target) for module, targets in graph.items() if module.startswith("shardlab.models")
                      for target in targets if target.startswith(("shardlab.envs", "shardlab.trainers")))
    assert "shardlab.models.sparse_config" in graph["shardlab.models.impala"]  # the walk sees models' imports
    assert reaching == []


def test_pngs_are_written_only_by_the_figure_writer():
    """Every figure is written by shardlab.figures.write_png_atomic; a new ``.savefig(`` elsewhere fails here."""
    found = []
    for rel in _python_files():
        if rel == os.path.join("shardlab", "figures.py"):  # write_png_atomic and png_bytes
            continue
        with open(os.path.join(ROOT, rel), encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), rel)
        found += [f"{rel}:{node.lineno}" for node in ast.walk(tree) if isinstance(node, ast.Call)
                  and isinstance(node.func, ast.Attribute) and node.func.attr in ("savefig", "imsave")]
    assert found == [], f"write figures with shardlab.figures.write_png_atomic: {found}"
