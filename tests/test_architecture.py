"""The project's shape: one atomic writer for every file it writes, no second copy of it."""

from __future__ import annotations

import ast
import json
import os

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


def _python_files(folders=None):
    """Every .py file of the repository outside tests/ (and any virtual environment)."""
    for base, dirs, files in os.walk(ROOT):
        rel_base = os.path.relpath(base, ROOT)
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "build", "dist", "__pycache__")
                   and not d.endswith(".egg-info")]
        if folders is not None and rel_base.split(os.sep)[0] not in folders:
            continue
        for name in files:
            if name.endswith(".py"):
                yield os.path.normpath(os.path.join(rel_base, name))


def _renames(tree: ast.AST) -> list[int]:
    """Lines that rename or link a file into place: os.replace/os.rename/os.link/shutil.move, any
    ``.rename(`` (pathlib), or one of those imported by name."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            if node.func.attr == "rename" or (owner == "os" and node.func.attr in ("replace", "link")) \
                    or (owner == "shutil" and node.func.attr == "move"):
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
            "def move(a, b):\n    Path(a).rename(b)\n    shutil.move(a, b)\n    os.link(a, b)\n")
    assert _renames(ast.parse(code)) == [6, 8, 9, 10]
