"""A checkpoint file is read once per eval and once per resume: its weights, config and SHA-256
all come from that one read (counted with an audit hook on every ``open``)."""

from __future__ import annotations

import hashlib
import os
import sys

import pytest

from shardlab import cli as shardlab
from tiny_suites import GOAL_MISGENERALIZATION, MAZE_RECIPE, TINY_PPO

pytestmark = pytest.mark.usefixtures("one_thread")

_WATCHED: list[str] = []  # real paths whose reads are counted, while a test runs
_READS: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event != "open" or not _WATCHED or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path, mode, flags = args
    reading = ("r" in mode and "+" not in mode) if isinstance(mode, str) else (flags or 0) & os.O_ACCMODE == os.O_RDONLY
    if reading and os.path.realpath(os.fsdecode(path)) in _WATCHED:
        _READS.append(os.fsdecode(path))


sys.addaudithook(_audit)  # hooks cannot be removed; this one is idle unless a test fills _WATCHED


class counting_reads:
    """Count the reads of ``paths`` (any name for the same file: last.ckpt is a hard link)."""

    def __init__(self, *paths: str):
        self.paths = [os.path.realpath(p) for p in paths]

    def __enter__(self) -> list[str]:
        _READS.clear()
        _WATCHED[:] = self.paths
        return _READS

    def __exit__(self, *exc) -> None:
        _WATCHED.clear()


def _sha(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_the_audit_hook_sees_torch_and_plain_reads(tmp_path):
    import torch

    path = str(tmp_path / "x.pt")
    torch.save({"a": torch.ones(1)}, path)
    with counting_reads(path) as reads:
        torch.load(path, weights_only=True)
        open(path, "rb").close()
        os.close(os.open(path, os.O_RDONLY))
    assert len(reads) == 3


def test_an_eval_reads_its_checkpoint_once(tiny_maze_checkpoint, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(GOAL_MISGENERALIZATION)
    out = tmp_path / "out"
    with counting_reads(tiny_maze_checkpoint) as reads:
        assert shardlab.main(["eval", tiny_maze_checkpoint, "--suite", str(suite), "--out", str(out), "--limit", "2",
                              "--no-progress", "--loggers", "none"]) == 0
    assert len(reads) == 1, reads
    import json

    document = json.loads((out / "results.json").read_text())
    assert document["checkpoint_sha256"] == _sha(tiny_maze_checkpoint)  # the hash of the bytes it loaded
    import shardlab as api

    with counting_reads(tiny_maze_checkpoint) as reads:
        results = api.evaluate(tiny_maze_checkpoint, suite=str(suite), limit=2, out=str(tmp_path / "api"))
    assert len(reads) == 1 and results.meta["checkpoint_sha256"] == _sha(tiny_maze_checkpoint)


def test_a_resume_reads_its_checkpoint_once(tmp_path):
    run = tmp_path / "run"
    assert shardlab.main(["train", MAZE_RECIPE, *TINY_PPO, "trainer.total_steps=128", "trainer.loggers=[]",
                          "--run-dir", str(run)]) == 0
    last = str(run / "checkpoints" / "last.ckpt")
    with counting_reads(last) as reads:
        assert shardlab.main(["resume", str(run), "trainer.total_steps=256"]) == 0
    assert len(reads) == 1, reads
    from shardlab.trainers.checkpointing import load_checkpoint

    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["shardlab"]["env_steps"] == 256
