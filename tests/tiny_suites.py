"""Suite files the eval-suite tests share: small enough to run in seconds on the tiny checkpoint."""

# goal_misgeneralization on 8 mazes, with a threshold that always holds
GOAL_MISGENERALIZATION = """
seed: 3
evals:
  goal_misgeneralization: {mazes: 8, decision_mazes: 8}
thresholds:
  goal_misgeneralization.p_neither: {max: 1.0}
"""
