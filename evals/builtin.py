"""Imports the evals shipped with shardlab so their @register decorators run."""

import evals.goal_misgeneralization  # noqa: F401
