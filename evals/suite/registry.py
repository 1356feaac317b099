"""The eval registry: which evals exist and the class behind a name.

The evals shipped with shardlab are listed in :data:`BUILTIN` (eval name -> module, a module
imported when its eval is first asked for); other packages add evals through the ``shardlab.evals`` entry-point
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
# eval name -> the module that registers it: a lookup imports only the eval it names, so
# `shardlab eval --only steering` does not pay for Lightning, which only the fine-tuning eval needs
BUILTIN = {
    "dt_attention": "shardlab.evals.dt.attention",
    "dt_rtg": "shardlab.evals.dt.rtg",
    "dt_steering": "shardlab.evals.dt.steering",
    "activation_patching": "shardlab.evals.maze.activation_patching",
    "causal_scrubbing": "shardlab.evals.maze.causal_scrubbing",
    "finetune_to_cheese": "shardlab.evals.maze.finetune_to_cheese",
    "goal_misgeneralization": "shardlab.evals.maze.goal_misgeneralization",
    "jacobian_svd": "shardlab.evals.maze.jacobian_svd",
    "probes": "shardlab.evals.maze.probes",
    "relu_ablation": "shardlab.evals.maze.relu_ablation",
    "retargeting": "shardlab.evals.maze.retargeting",
    "saliency_pca": "shardlab.evals.maze.saliency_pca",
    "steering": "shardlab.evals.maze.steering",
    "minigrid_return": "shardlab.evals.minigrid.minigrid_return",
    "sparsity": "shardlab.evals.sparsity.sparsity",
}
_loaded = False


def _load() -> None:
    """Import every built-in eval and the plugins once; their @register decorators fill DECLARED."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in dict.fromkeys(BUILTIN.values()):
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
    if name in BUILTIN and name not in DECLARED:
        importlib.import_module(BUILTIN[name])  # a built-in: its own module only
    if name not in DECLARED:
        _load()  # a plugin, or a misspelling that wants the whole list
    if name not in DECLARED:
        close = difflib.get_close_matches(name, DECLARED, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; available: {', '.join(sorted(DECLARED))}"
        raise EvalError(f"unknown eval {name!r}{hint}")
    return DECLARED[name]
