"""Evals of PPO policies on MiniGrid/BabyAI: ``minigrid_return`` (success rate, return, length)."""
