"""CI-friendly output: progress bars redraw rarely when stderr is not a terminal (one helper used
wherever tqdm is built), results.json records torch, device and host, and each row its eval version."""

from __future__ import annotations

import io
import json
import os
import re
import textwrap
from dataclasses import dataclass

import pytest

from shardlab import cli
from shardlab.bars import LOG_INTERVAL, TERMINAL_INTERVAL, progress_kwargs
from shardlab.evals.suite import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_kwargs_by_whether_stderr_is_a_terminal(monkeypatch):
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    assert progress_kwargs(stream=io.StringIO()) == {"mininterval": LOG_INTERVAL} and LOG_INTERVAL >= 2
    assert progress_kwargs(stream=_Terminal()) == {"mininterval": TERMINAL_INTERVAL}
    assert progress_kwargs(log_interval=30.0, stream=io.StringIO()) == {"mininterval": 30.0}
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert progress_kwargs() == {"mininterval": LOG_INTERVAL}  # the default stream is stderr
    monkeypatch.setenv("TQDM_MININTERVAL", "1")
    assert progress_kwargs() == {}  # tqdm's own setting wins


def test_a_logged_bar_redraws_at_most_every_few_seconds(monkeypatch):
    from tqdm import tqdm

    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    for _ in tqdm(range(10_000), file=log, **progress_kwargs()):
        pass
    assert log.getvalue().count("\r") <= 3  # start and end, not one line per update


def test_every_tqdm_bar_uses_progress_kwargs():
    """Each ``tqdm(`` call in the package and scripts passes ``**progress_kwargs(...)``."""
    missing = []
    for folder in ("evals", "trainers", "envs", "models", "scripts", "shardlab"):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(base, name)
                source = open(path, encoding="utf-8").read()
                for match in re.finditer(r"\btqdm\(", source):
                    call, depth = "", 0
                    for char in source[match.end() - 1:]:
                        call += char
                        depth += {"(": 1, ")": -1}.get(char, 0)
                        if depth == 0:
                            break
                    if "progress_kwargs(" not in call:
                        missing.append(f"{os.path.relpath(path, ROOT)}: {call[:60]}")
    assert not missing, missing


def test_every_registered_eval_has_a_version():
    versions = {name: registry.get(name).version for name in registry.available()}
    assert versions and all(isinstance(v, int) and v >= 1 for v in versions.values()), versions


def test_register_defaults_the_version_to_1_and_rejects_bad_ones():
    @dataclass
    class Settings:
        pass

    try:
        @registry.register("versionless_eval")
        class Versionless:
            Config = Settings

            def run(self, ctx):
                raise AssertionError

        assert Versionless.version == 1
        for bad in (0, "2", True, 1.5):
            with pytest.raises(TypeError, match="version must be a positive integer"):
                registry.register("bad_version_eval")(type("Bad", (), {"Config": Settings, "version": bad,
                                                                       "run": lambda self, ctx: None}))
    finally:
        registry.DECLARED.pop("versionless_eval", None)
        registry.DECLARED.pop("bad_version_eval", None)


@pytest.mark.usefixtures("one_thread")
def test_results_json_records_torch_device_host_and_eval_versions(tiny_maze_checkpoint, tmp_path):
    import torch

    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent("""
        evals:
          goal_misgeneralization: {mazes: 4, decision_mazes: 4}
    """))
    out = tmp_path / "out"
    assert cli.main(["eval", tiny_maze_checkpoint, "--suite", str(suite), "--out", str(out), "--limit", "1",
                     "--loggers", "none", "--no-progress", "--device", "cpu"]) == 0
    document = json.loads((out / "results.json").read_text())
    assert document["torch_version"] == torch.__version__ and document["device"] == "cpu"
    host = document["host"]
    assert host["cpu_count"] == os.cpu_count() and host["machine"] and "python" in host
    assert "processor" in host and "cpu_model" in host and "device_name" in document
    from shardlab.evals.maze.goal_misgeneralization import GoalMisgeneralization

    assert {row["eval_version"] for row in document["results"]} == {GoalMisgeneralization.version} == {2}
