"""The eval registry: which evals exist and the class behind a name.

The evals shipped with shardlab are listed in :data:`BUILTIN` (module names, imported when the
registry is first asked); other packages add evals through the ``shardlab.evals`` entry-point
group. An eval declares itself with ``@register("name")`` from ``base``, which imports nothing
of the registry, so the registry importing the evals closes no import cycle."""

from __future__ import annotations

import difflib
import importlib
from importlib import metadata

from shardlab.evals.suite.base import DECLARED, EvalError, register
from shardlab.trainers.kinds import stored_kind

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "EvalError", "available", "check_fits", "get", "register"]

ENTRY_POINT_GROUP = "shardlab.evals"
BUILTIN = (
    "shardlab.evals.dt.attention",
    "shardlab.evals.dt.rtg",
    "shardlab.evals.dt.steering",
    "shardlab.evals.maze.activation_patching",
    "shardlab.evals.maze.causal_scrubbing",
    "shardlab.evals.maze.finetune_to_cheese",
    "shardlab.evals.maze.goal_misgeneralization",
    "shardlab.evals.maze.jacobian_svd",
    "shardlab.evals.maze.probes",
    "shardlab.evals.maze.relu_ablation",
    "shardlab.evals.maze.retargeting",
    "shardlab.evals.maze.saliency_pca",
    "shardlab.evals.maze.steering",
    "shardlab.evals.minigrid.minigrid_return",
    "shardlab.evals.sparsity.sparsity",
)
_loaded = False


def _load() -> None:
    """Import the built-in evals and the plugins once; their @register decorators fill DECLARED."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN:
        importlib.import_module(module)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry.load()  # a module (its decorators run) or an eval class decorated where it is defined


def available() -> list[str]:
    """Names of all registered evals, plugins included."""
    _load()
    return sorted(DECLARED)


def check_fits(cls: type, kind: str, checkpoint: str) -> None:
    """EvalError unless the eval's ``kinds`` (default: any) include the checkpoint's kind."""
    # a plugin written before kinds were spelled as algos may still say "ppo_maze"
    kinds = tuple(stored_kind(name) for name in getattr(cls, "kinds", None) or ())
    if kinds and kind not in kinds:
        raise EvalError(f"eval {cls.name!r} needs a {' or '.join(kinds)} checkpoint but {checkpoint} is "
                        f"a {kind} checkpoint; drop it with --only or use a suite for {kind}")


def get(name: str) -> type:
    """The eval class registered as ``name``; EvalError with close names if there is none."""
    _load()
    if name not in DECLARED:
        close = difflib.get_close_matches(name, DECLARED, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; available: {', '.join(sorted(DECLARED))}"
        raise EvalError(f"unknown eval {name!r}{hint}")
    return DECLARED[name]
