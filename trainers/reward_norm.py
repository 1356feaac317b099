"""Reward normalisation: divide by the running std of the discounted return, then clip."""

from __future__ import annotations

import torch


class RewardNormalizer:
    """Per-env discounted returns feed a running variance; rewards are scaled by its sqrt."""

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, eps: float = 1e-8):
        self.gamma, self.clip, self.eps = gamma, clip, eps
        self.returns = torch.zeros(num_envs, dtype=torch.float64)
        self.mean = torch.zeros((), dtype=torch.float64)
        self.var = torch.ones((), dtype=torch.float64)
        self.count = torch.tensor(1e-4, dtype=torch.float64)

    def __call__(self, reward: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """Update the statistics with one step and return the normalised, clipped reward."""
        self.returns = self.returns * self.gamma + reward.double()
        self._update(self.returns)
        self.returns[done] = 0.0
        scaled = reward.double() / torch.sqrt(self.var + self.eps)
        return scaled.clamp_(-self.clip, self.clip).float()

    def _update(self, batch: torch.Tensor) -> None:
        # Chan et al. parallel variance update
        batch_mean, batch_var, n = batch.mean(), batch.var(unbiased=False), batch.numel()
        delta, total = batch_mean - self.mean, self.count + n
        self.mean = self.mean + delta * n / total
        m2 = self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total
        self.var, self.count = m2 / total, total

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue exactly, for checkpoints."""
        return {"returns": self.returns.clone(), "mean": self.mean.clone(),
                "var": self.var.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict` (a different env count keeps the statistics only)."""
        if state["returns"].shape == self.returns.shape:
            self.returns = state["returns"].clone()
        self.mean, self.var, self.count = state["mean"].clone(), state["var"].clone(), state["count"].clone()
