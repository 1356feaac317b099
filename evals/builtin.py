"""Imports the evals shipped with shardlab so their @register decorators run."""

import shardlab.evals.finetune_to_cheese  # noqa: F401
import shardlab.evals.goal_misgeneralization  # noqa: F401
import shardlab.evals.retargeting  # noqa: F401
import shardlab.evals.steering  # noqa: F401
import shardlab.evals.dt_rtg  # noqa: F401
import shardlab.evals.sparsity  # noqa: F401
import shardlab.evals.dt_steering  # noqa: F401
import shardlab.evals.dt_attention  # noqa: F401
import shardlab.evals.probes  # noqa: F401
import shardlab.evals.activation_patching  # noqa: F401
import shardlab.evals.causal_scrubbing  # noqa: F401
import shardlab.evals.jacobian_svd  # noqa: F401
import shardlab.evals.saliency_pca  # noqa: F401
import shardlab.evals.relu_ablation  # noqa: F401
import shardlab.evals.minigrid_return  # noqa: F401
