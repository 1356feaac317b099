"""The wheel as a user gets it: built (not editable), installed into a fresh virtual environment,
and run from a folder outside the repository: help, list, a tiny train and an eval by name."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A fresh venv holding only the shardlab wheel; its dependencies are this environment's
    (a .pth line, so no network and no second torch install)."""
    base = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(base / "dist"), ROOT], check=True, capture_output=True, text=True, timeout=300)
    wheel = next((base / "dist").glob("shardlab-*.whl"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "zz_dependencies.pth"), "w") as handle:
        handle.write(sysconfig.get_paths()["purelib"] + "\n")
    work = base / "elsewhere"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    return {"wheel": wheel, "python": str(python), "shardlab": str(venv / "bin" / "shardlab"), "cwd": str(work),
            "env": env, "site": site}


def run(installed: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([installed["shardlab"], *args], cwd=installed["cwd"], env=installed["env"],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow("wheel")
def test_the_wheel_holds_one_shardlab_package_with_its_recipes_and_license(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"shardlab"}
    for folder in ("trainers", "envs", "models", "evals"):
        assert f"shardlab/{folder}/__init__.py" in names
        for base, _, files in os.walk(os.path.join(ROOT, folder)):  # its subpackages (evals/maze, ...) too
            package = os.path.relpath(base, ROOT).replace(os.sep, "/")
            assert "__init__.py" not in files or f"shardlab/{package}/__init__.py" in names, package
    assert "shardlab/configs/train/maze_demo.yaml" in names and "shardlab/configs/evals/ci.yaml" in names
    assert any(re.search(r"dist-info/(licenses/)?LICENSE$", name) for name in names)


@pytest.mark.slow("wheel")
def test_the_installed_package_is_the_one_imported(installed):
    code = ("import shardlab, importlib.util; print(shardlab.__file__); "
            "print([m for m in ('trainers', 'evals', 'envs', 'models') if importlib.util.find_spec(m)])")
    out = subprocess.run([installed["python"], "-c", code], cwd=installed["cwd"], env=installed["env"],
                         capture_output=True, text=True, timeout=60)
    path, stray = out.stdout.strip().splitlines()
    assert path.startswith(installed["site"]) and not path.startswith(ROOT)
    assert stray == "[]"  # no top-level trainers/evals/... modules


@pytest.mark.slow("wheel")
def test_help_list_train_and_eval_from_outside_the_repository(installed):
    helped = run(installed, "--help")
    assert helped.returncode == 0 and all(f"    {c} " in helped.stdout for c in ("train", "eval", "list", "config"))
    suites = run(installed, "list", "suites")
    assert suites.returncode == 0 and {"ci", "demo", "interp"} <= {line.split()[0] for line in suites.stdout.splitlines()}
    trained = run(installed, "train", "maze_ppo_cpu", "env.num_envs=2", "ppo.num_steps=16", "ppo.minibatch_size=32",
                  "ppo.epochs=1", "trainer.total_steps=32", "trainer.progress_bar=false", "--run-dir", "run")
    assert trained.returncode == 0, trained.stderr[-2000:]
    evaluated = run(installed, "eval", "run/checkpoints/last.ckpt", "--suite", "ci", "--limit", "2", "--out", "ev",
                    "--no-progress")
    assert evaluated.returncode in (0, 1), evaluated.stderr[-2000:]  # 1: a 32-step policy may miss the threshold
    document = json.loads(open(os.path.join(installed["cwd"], "ev", "results.json")).read())
    assert document["suite"].startswith(installed["site"]) and document["results"]


def test_every_imported_third_party_module_is_a_declared_dependency():
    """Each module the package imports is the standard library, shardlab, or a distribution that
    setup.cfg names (install_requires or an extra)."""
    import ast
    import configparser
    from importlib import metadata

    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    requirements = parser["options"]["install_requires"].splitlines()
    requirements += [line for value in parser["options.extras_require"].values() for line in value.splitlines()]
    declared = {re.split(r"[<>=;! \[]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
                for line in requirements if line.strip()}
    # procgen-mirror installs the import name procgen; the marker picks one or the other
    declared.add("procgen")
    distributions = metadata.packages_distributions()
    modules = set()
    for folder in ("shardlab", "trainers", "envs", "models", "evals", "configs"):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for file in files:
                if file.endswith(".py"):
                    tree = ast.parse(open(os.path.join(base, file)).read())
                    for node in ast.walk(tree):
                        if isinstance(node, ast.Import):
                            modules |= {alias.name.split(".")[0] for alias in node.names}
                        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                            modules.add(node.module.split(".")[0])
    missing = {}
    for module in sorted(modules - set(sys.stdlib_module_names) - {"shardlab", "__future__"}):
        owners = {name.lower().replace("_", "-") for name in distributions.get(module, [module])}
        if not owners & declared:
            missing[module] = sorted(owners)
    assert missing == {}, f"imported but not declared in setup.cfg: {missing}"
