"""Every built-in eval's rows are checked by ``assert_rows_have_intervals`` in some test that runs
it: a new eval cannot land with rows that carry no interval and no kind."""

from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.abspath(__file__))


def test_every_builtin_eval_has_its_rows_checked():
    from shardlab.evals.suite.registry import available

    checked = set()
    for name in os.listdir(ROOT):
        if not name.startswith("test_") or not name.endswith(".py"):
            continue
        with open(os.path.join(ROOT, name), encoding="utf-8") as handle:
            text = handle.read()
        if "assert_rows_have_intervals(" in text:
            checked |= {word for word in re.findall(r"[a-z_]+", text)}
    missing = [name for name in available() if name not in checked]
    assert not missing, f"no test checks the rows of: {', '.join(missing)}"
