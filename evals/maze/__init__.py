"""Evals of procgen maze policies: behaviour (``goal_misgeneralization``, ``finetune_to_cheese``),
steering and retargeting, and interpretability (``probes``, ``activation_patching``,
``causal_scrubbing``, ``jacobian_svd``, ``saliency_pca``, ``relu_ablation``); with what they share:
vector fields (``vector_field``), test mazes and activation caches (``inputs``, ``common``), maze
pictures (``render``) and ``--log-episodes`` records (``episode_log``)."""
