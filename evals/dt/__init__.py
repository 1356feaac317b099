"""Evals of decision transformers on MiniGrid/BabyAI: return-to-go calibration (``rtg``, eval
``dt_rtg``), RTG steering vectors (``steering``, ``dt_steering``) and attention (``attention``,
``dt_attention``), all playing seeded episodes through ``rollout``."""
