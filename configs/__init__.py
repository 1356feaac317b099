"""The recipes (``train/*.yaml``) and eval suites (``evals/*.yaml``) that ship with shardlab,
addressable by name (``maze_demo``, ``ci``) or by path. Reading them imports no torch."""

from __future__ import annotations

import difflib
import os
from typing import NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
FOLDERS = {"recipe": "train", "suite": "evals"}


class Shipped(NamedTuple):
    """One shipped YAML file: its name, path and the first line of its header comment."""

    name: str
    path: str
    summary: str


def shipped(what: str) -> list[Shipped]:
    """Every shipped recipe (``what="recipe"``) or suite (``"suite"``), sorted by name."""
    folder = os.path.join(HERE, FOLDERS[what])
    found = []
    for file in sorted(os.listdir(folder)):
        if file.endswith(".yaml"):
            path = os.path.join(folder, file)
            found.append(Shipped(file[:-len(".yaml")], path, _summary(path)))
    return found


def resolve(what: str, name_or_path: str) -> str:
    """The file a recipe/suite argument names: an existing path as given, else a shipped name.

    A missing name raises ``FileNotFoundError`` with a one-line message naming the close matches;
    callers turn it into their own error type.
    """
    if os.path.isfile(name_or_path):
        return name_or_path
    if os.path.isdir(name_or_path):
        raise FileNotFoundError(f"{what} {name_or_path!r} is a folder; pass a YAML file or a shipped {what} name "
                                f"(`shardlab list {what}s`)")
    stem = os.path.basename(name_or_path)
    stem = stem[:-len(".yaml")] if stem.endswith(".yaml") else stem
    names = {entry.name: entry.path for entry in shipped(what)}
    looks_like_path = os.sep in name_or_path or name_or_path.endswith((".yaml", ".yml"))
    if stem in names and (not looks_like_path or _shipped_spelling(name_or_path, what)):
        return names[stem]
    close = difflib.get_close_matches(stem, list(names), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; shipped {what}s: {', '.join(names)}"
    kind = "file" if looks_like_path else f"{what} name"
    raise FileNotFoundError(f"{what} {name_or_path!r}: no such {kind}{hint} (`shardlab list {what}s`)")


def _shipped_spelling(path: str, what: str) -> bool:
    """True for the repository spelling of a shipped file (configs/train/x.yaml), so README
    commands written for a checkout also work from an installed package."""
    parts = os.path.normpath(path).split(os.sep)
    return len(parts) >= 3 and parts[-3] == "configs" and parts[-2] == FOLDERS[what]


def _summary(path: str) -> str:
    """The first line of a YAML file's header comment (empty if it has none)."""
    try:
        with open(path, encoding="utf-8") as handle:
            first = handle.readline().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return first.lstrip("#").strip() if first.startswith("#") else ""
