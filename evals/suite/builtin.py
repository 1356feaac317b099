"""Imports the evals shipped with shardlab so their @register decorators run."""

import shardlab.evals.dt.attention  # noqa: F401
import shardlab.evals.dt.rtg  # noqa: F401
import shardlab.evals.dt.steering  # noqa: F401
import shardlab.evals.maze.activation_patching  # noqa: F401
import shardlab.evals.maze.causal_scrubbing  # noqa: F401
import shardlab.evals.maze.finetune_to_cheese  # noqa: F401
import shardlab.evals.maze.goal_misgeneralization  # noqa: F401
import shardlab.evals.maze.jacobian_svd  # noqa: F401
import shardlab.evals.maze.probes  # noqa: F401
import shardlab.evals.maze.relu_ablation  # noqa: F401
import shardlab.evals.maze.retargeting  # noqa: F401
import shardlab.evals.maze.saliency_pca  # noqa: F401
import shardlab.evals.maze.steering  # noqa: F401
import shardlab.evals.minigrid.minigrid_return  # noqa: F401
import shardlab.evals.sparsity.sparsity  # noqa: F401
