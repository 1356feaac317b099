"""Imports the evals shipped with shardlab so their @register decorators run."""

import evals.finetune_to_cheese  # noqa: F401
import evals.goal_misgeneralization  # noqa: F401
import evals.retargeting  # noqa: F401
import evals.steering  # noqa: F401
import evals.dt_rtg  # noqa: F401
import evals.sparsity  # noqa: F401
import evals.dt_steering  # noqa: F401
import evals.dt_attention  # noqa: F401
import evals.probes  # noqa: F401
import evals.activation_patching  # noqa: F401
import evals.causal_scrubbing  # noqa: F401
import evals.jacobian_svd  # noqa: F401
import evals.saliency_pca  # noqa: F401
import evals.relu_ablation  # noqa: F401
import evals.minigrid_return  # noqa: F401
