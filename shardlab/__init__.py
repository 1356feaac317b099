"""shardlab: train toy agents and transformers, then test what they learned.

``shardlab.trainers``, ``shardlab.envs``, ``shardlab.models``, ``shardlab.evals`` and
``shardlab.configs`` are the repository's top-level folders of the same names. The Python API
(``shardlab.evaluate``, ``shardlab.load``) is imported on first use, so ``import shardlab`` stays
light (no torch).
"""

from __future__ import annotations

import os as _os

__version__ = "0.2.0"
__all__ = ["__version__", "evaluate", "load", "Results"]

# In a checkout (or an editable install) the subpackages are the folders beside this one; a wheel
# puts them inside this package, where the normal lookup finds them first.
_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "trainers")) and _os.path.isfile(_os.path.join(_root, "trainers", "__init__.py")):
    __path__.append(_root)  # noqa: F821  (a package's __path__)

_API = {"evaluate": "shardlab.api", "load": "shardlab.api", "Results": "shardlab.api"}


def __getattr__(name: str):
    """The API names, imported on first use."""
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'shardlab' has no attribute {name!r}")
