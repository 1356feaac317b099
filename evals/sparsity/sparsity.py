"""How sparse are a network's activations, and how robust is it to input noise?

Per activation site (the classifier's ``act{i}``, the IMPALA policy's ReLU hook points, which see
the sparse activation's output; a MiniGrid CNN/MLP's ``conv*_out``/``fc*_out``) on a seeded batch
of inputs (the classifier's test split; maze or MiniGrid observations from seeded random rollouts
of the training env):

- ``density``: fraction of non-zero values (L0 / size);
- ``dead_fraction``: fraction of units never non-zero on the batch (a unit is a feature, or a
  channel of a conv map);
- ``duty_entropy``: entropy of the units' share of all activity, divided by log(units): 1 when
  every unit fires equally often, 0 when one unit does all the firing;
- classifier only: ``class_selectivity`` (mean over live units of (μ_max − μ_rest)/(μ_max + μ_rest),
  μ = mean |activation| per class) and the density per class (``class_density.png``).

Noise robustness: Gaussian noise of standard deviation σ is added to the inputs (images in [0, 1],
clipped back to [0, 1]); the score is test accuracy (classifier) or agreement of the greedy action
with the noise-free one (policy), and ``noise_auc`` is the area under score-vs-σ divided by the σ
range, i.e. the mean score over the noise levels. ``majority_baseline`` is the score of always
giving the most common answer (the commonest class, or the policy's commonest clean action): a
policy that collapses to one action under heavy noise scores about that much, so agreement near
it means the noise destroyed the policy's input, not that it is robust.

MiniGrid observations are index (or one-hot) grids with values in [0, top], top = the batch's
largest value: σ and the pixel value are scaled by top and the noisy input is clipped to [0, top].

Pixel noise is numenta's test ("How Can We Be So Dense", nupic.research's RandomNoise): a random
fraction η of each input's values is set to ``pixel_noise_value`` (0.75 = MNIST's mean + 2 std, a
bright dot); ``pixel_noise_score`` is the mean score over the η levels (their noise score, the
correct answers summed over levels, divided by levels × inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from shardlab.evals.suite.base import Eval
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.registry import register
from shardlab.evals.suite.results import Result, write_json_atomic
from shardlab.models.hooks import hooked
from shardlab.trainers.bars import progress_kwargs
from shardlab.trainers.kinds import Kind, get_kind

BATCH = 256


@dataclass
class LayerStats:
    """Running counts for one activation site over a batch of inputs."""

    nonzero: float = 0.0
    values: float = 0.0
    unit_active: Optional[torch.Tensor] = None  # per unit: non-zero count
    unit_seen: float = 0.0  # per unit: values seen (samples × positions)
    class_nonzero: dict[int, float] = field(default_factory=dict)
    class_values: dict[int, float] = field(default_factory=dict)
    class_magnitude: dict[int, torch.Tensor] = field(default_factory=dict)  # per unit: sum of mean |a|
    class_count: dict[int, int] = field(default_factory=dict)

    def add(self, act: torch.Tensor, labels: Optional[torch.Tensor]) -> None:
        """Count one batch of activations (N, D) or (N, C, H, W); units are features or channels."""
        act = act.float().reshape(act.shape[0], act.shape[1], -1) if act.dim() == 4 else act.float().reshape(act.shape[0], -1, 1)
        active = act != 0  # (N, units, positions)
        self.nonzero += active.sum().item()
        self.values += active.numel()
        per_unit = active.sum(dim=(0, 2)).double()
        self.unit_active = per_unit if self.unit_active is None else self.unit_active + per_unit
        self.unit_seen += act.shape[0] * act.shape[2]
        if labels is None:
            return
        magnitude = act.abs().mean(dim=2)  # (N, units)
        for label in labels.unique().tolist():
            rows = labels == label
            self.class_nonzero[label] = self.class_nonzero.get(label, 0.0) + active[rows].sum().item()
            self.class_values[label] = self.class_values.get(label, 0.0) + active[rows].numel()
            total = magnitude[rows].sum(0).double()
            self.class_magnitude[label] = self.class_magnitude[label] + total if label in self.class_magnitude else total
            self.class_count[label] = self.class_count.get(label, 0) + int(rows.sum())

    def density(self) -> float:
        """Fraction of non-zero values."""
        return self.nonzero / self.values

    def dead_fraction(self) -> float:
        """Fraction of units never non-zero."""
        return float((self.unit_active == 0).double().mean())

    def duty_entropy(self) -> float:
        """Normalised entropy of the units' share of activity (1 = evenly used)."""
        duty = self.unit_active / self.unit_seen
        units = duty.numel()
        if units < 2 or duty.sum() == 0:
            return 0.0
        share = duty / duty.sum()
        share = share[share > 0]
        return float(-(share * share.log()).sum() / math.log(units))

    def class_density(self) -> dict[int, float]:
        """Density per class."""
        return {c: self.class_nonzero[c] / self.class_values[c] for c in sorted(self.class_values)}

    def class_selectivity(self) -> float:
        """Mean class-selectivity index over units active for some class (nan for one class)."""
        if len(self.class_magnitude) < 2:
            return math.nan
        means = torch.stack([self.class_magnitude[c] / self.class_count[c] for c in sorted(self.class_magnitude)])
        best, _ = means.max(0)
        rest = (means.sum(0) - best) / (means.shape[0] - 1)
        live = (best + rest) > 0
        if not live.any():
            return math.nan
        return float(((best - rest) / (best + rest))[live].mean())


@dataclass
class SparsityReport:
    """Everything the sparsity eval measures for one network."""

    layers: dict[str, LayerStats]
    noise_levels: list[float]
    noise_scores: list[float]
    score_name: str  # accuracy (classifier) or agreement (policy)
    samples: int
    clean_accuracy: Optional[float] = None
    majority_baseline: float = 0.0  # the score of always answering the most common reference answer
    pixel_levels: list[float] = field(default_factory=list)  # fractions of input values replaced
    pixel_scores: list[float] = field(default_factory=list)

    def pixel_noise_score(self) -> float:
        """Mean score over the pixel-noise levels (numenta's noise score per input and level)."""
        return float(np.mean(self.pixel_scores)) if self.pixel_scores else math.nan

    def noise_auc(self) -> float:
        """Area under score-vs-σ divided by the σ range (the mean score over the noise levels)."""
        if len(self.noise_levels) < 2:
            return self.noise_scores[0]
        return float(np.trapz(self.noise_scores, self.noise_levels) / (self.noise_levels[-1] - self.noise_levels[0]))


def short_name(site: str) -> str:
    """Site name without the ``embedder.`` prefix, for tables and plots."""
    return site.removeprefix("embedder.")


def _random_observations(env, n: int, num_actions: int, seed: int, desc: str, progress: bool) -> torch.Tensor:
    """The first ``n`` observations of seeded uniformly random rollouts of ``env`` (which is closed)."""
    from shardlab.trainers.rollout import rollout

    generator = torch.Generator().manual_seed(seed)
    steps = math.ceil(n / env.num_envs)
    frames = []

    def record(t, obs, *_):
        frames.append(obs.clone())
        bar.update(1)

    try:
        with tqdm(total=steps, desc=desc, disable=not progress, **progress_kwargs()) as bar:
            rollout(env, lambda obs: torch.randint(0, num_actions, (env.num_envs,), generator=generator),
                    steps=steps, until="steps", on_step=record)
    finally:
        env.close()
    return torch.cat(frames)[:n]


def env_observations(train_config: DictConfig, n: int, seed: int, progress: bool = False) -> torch.Tensor:
    """``n`` uint8 observations from seeded random rollouts of the training env (of the config's kind)."""
    kind = get_kind(train_config.algo)
    env_config = kind.load("env_config")
    # as many envs as the family's default batch (64 mazes, 16 MiniGrid envs), at most n, whatever
    # the run trained with: the batch decides which observations come out
    defaults = type(env_config(train_config))()
    num_envs = min(n, defaults.num_envs)
    env = kind.load("make_env")(env_config(train_config, num_envs=num_envs, seed=seed))
    return _random_observations(env, n, env.num_actions, seed, f"{kind.algo} observations", progress)


def _inputs(kind: Kind, train_config: DictConfig, samples: int, seed: int, split: str,
            progress: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    if kind.env_config is None:  # no env: a classifier is measured on its dataset's images and labels
        from shardlab.trainers.datasets import load_splits
        splits = load_splits(train_config.data)
        x, y = splits.x[split], splits.y[split]
        return x[:samples], y[:samples]
    obs = env_observations(train_config, samples, seed, progress)
    # the default memory layout whatever the kind's preprocessing picks (the maze's is channels-last)
    return kind.load("preprocess")(obs).contiguous(), None


def _predict(model: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    out = model(x.to(device))
    return (out[0] if isinstance(out, tuple) else out).argmax(-1).cpu()


@torch.no_grad()
def measure(model: nn.Module, kind: str, train_config: DictConfig, samples: int = 1024,
            noise_levels: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0), noise_repeats: int = 3,
            seed: int = 0, split: str = "test", device: torch.device = torch.device("cpu"),
            progress: bool = False, pixel_levels: tuple[float, ...] = (),
            pixel_value: float = 0.75) -> SparsityReport:
    """Activation statistics on a seeded input batch and the score under increasing input noise."""
    model = model.eval().to(device)
    adapter = get_kind(kind)
    x, y = _inputs(adapter, train_config, samples, seed, split, progress)
    sites = adapter.activation_sites(model)
    layers = {site: LayerStats() for site in sites}
    clean = []
    for start in range(0, len(x), BATCH):
        labels = None if y is None else y[start:start + BATCH]
        with hooked(model, cache=sites) as acts:
            clean.append(_predict(model, x[start:start + BATCH], device))
        for site in sites:
            layers[site].add(acts[site].cpu(), labels)
    clean = torch.cat(clean)
    reference = clean if y is None else y
    generator = torch.Generator().manual_seed(seed)
    # images lie in [0, 1]; MiniGrid's index grids in [0, top]: noise and the pixel value scale with it
    top = 1.0 if adapter.unit_inputs else max(float(x.max()), 1.0)
    scores = []
    for sigma in tqdm(noise_levels, desc="noise levels", disable=not progress, **progress_kwargs()):
        hits = 0.0
        for _ in range(noise_repeats if sigma > 0 else 1):
            noisy = (x + sigma * top * torch.randn(x.shape, generator=generator)).clamp_(0, top)
            predicted = torch.cat([_predict(model, noisy[s:s + BATCH], device) for s in range(0, len(x), BATCH)])
            hits += (predicted == reference).float().mean().item() / (noise_repeats if sigma > 0 else 1)
        scores.append(hits)
    pixel_scores = []
    for fraction in tqdm(pixel_levels, desc="pixel noise", disable=not progress, **progress_kwargs()):
        hits = 0.0
        for _ in range(noise_repeats if fraction > 0 else 1):
            noisy = with_pixel_noise(x, fraction, pixel_value * top, generator)
            predicted = torch.cat([_predict(model, noisy[s:s + BATCH], device) for s in range(0, len(x), BATCH)])
            hits += (predicted == reference).float().mean().item() / (noise_repeats if fraction > 0 else 1)
        pixel_scores.append(hits)
    accuracy = None if y is None else (clean == y).float().mean().item()
    # a policy that collapses to one action under noise still agrees with its clean choice this often
    majority = torch.bincount(reference).max().item() / len(reference)
    return SparsityReport(layers, list(noise_levels), scores, "accuracy" if y is not None else "agreement",
                          len(x), accuracy, majority, list(pixel_levels), pixel_scores)


def with_pixel_noise(x: torch.Tensor, fraction: float, value: float, generator: torch.Generator) -> torch.Tensor:
    """``x`` with ``int(fraction · size)`` randomly chosen values of each input set to ``value``."""
    flat = x.reshape(len(x), -1)
    count = int(flat.shape[1] * fraction)
    chosen = torch.rand(flat.shape, generator=generator).argsort(dim=1)[:, :count]
    return flat.clone().scatter_(1, chosen, value).reshape(x.shape)


def _binomial_stderr(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def plot_density(reports: dict[str, SparsityReport], path: str) -> str:
    """Bars of density and dead-unit fraction per layer, one colour per network."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shardlab.evals.maze.render import save_pyplot_figure

    names = list(next(iter(reports.values())).layers)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.7 * len(names) * len(reports) + 4), 4), sharey=False)
    width = 0.8 / len(reports)
    for i, (label, report) in enumerate(reports.items()):
        positions = np.arange(len(names)) + i * width
        axes[0].bar(positions, [report.layers[n].density() for n in names], width, label=label)
        axes[1].bar(positions, [report.layers[n].dead_fraction() for n in names], width, label=label)
    for ax, title in zip(axes, ("activation density (fraction non-zero)", "dead-unit fraction")):
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, [short_name(n) for n in names], rotation=60,
                      ha="right", fontsize=7)
        ax.set_title(title)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    return save_pyplot_figure(fig, path, dpi=110)


def plot_noise(reports: dict[str, SparsityReport], path: str) -> str:
    """Score (accuracy or action agreement) against Gaussian σ and, if measured, against the
    pixel-noise fraction, one line per network."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shardlab.evals.maze.render import save_pyplot_figure

    pixels = all(report.pixel_scores for report in reports.values())
    fig, axes = plt.subplots(1, 2 if pixels else 1, figsize=(11 if pixels else 5.5, 4), squeeze=False)
    score = next(iter(reports.values())).score_name
    for label, report in reports.items():
        axes[0, 0].plot(report.noise_levels, report.noise_scores, marker="o",
                        label=f"{label} (AUC {report.noise_auc():.3f})")
        if pixels:
            axes[0, 1].plot(report.pixel_levels, report.pixel_scores, marker="o",
                            label=f"{label} (score {report.pixel_noise_score():.3f})")
    axes[0, 0].set_xlabel("input noise σ (Gaussian, inputs in [0, 1])")
    if pixels:
        axes[0, 1].set_xlabel("fraction of input values set to a bright value (numenta's noise)")
    for ax in axes[0]:
        ax.set_ylabel("test accuracy" if score == "accuracy" else "greedy-action agreement with clean input")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_pyplot_figure(fig, path, dpi=110)


def plot_class_density(report: SparsityReport, path: str) -> str:
    """Heatmap of activation density per class (rows) and layer (columns)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shardlab.evals.maze.render import save_pyplot_figure

    names = list(report.layers)
    classes = sorted(next(iter(report.layers.values())).class_values)
    grid = np.array([[report.layers[n].class_density()[c] for n in names] for c in classes])
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 0.35 * len(classes) + 1.5))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
    ax.set_xticks(range(len(names)), [short_name(n) for n in names])
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set_ylabel("class")
    ax.set_title("activation density per class")
    fig.colorbar(image, ax=ax)
    return save_pyplot_figure(fig, path, dpi=110)


@register("sparsity")
class Sparsity(Eval):
    """Activation density, dead units and duty-cycle entropy per layer; class-wise sparsity; noise robustness."""

    kinds = ("classify", "ppo", "ppo_minigrid")

    @dataclass
    class Config:
        """Input batch and noise levels."""

        samples: int = 1024  # classifier: first test images (all if fewer); maze: random-rollout observations
        noise_levels: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0])
        noise_repeats: int = 3  # noise draws per level (averaged)
        # numenta's pixel noise: fractions of input values set to pixel_noise_value ([] to skip)
        pixel_noise_levels: list[float] = field(default_factory=lambda: [round(0.05 * i, 2) for i in range(11)])
        pixel_noise_value: float = 0.75
        split: str = "test"  # classifier: which split to measure (train, val or test)

    def __init__(self, config: "Sparsity.Config"):
        levels = list(config.noise_levels)
        if not levels or levels != sorted(levels) or levels[0] < 0:
            raise ValueError(f"sparsity.noise_levels must be non-negative and increasing, got {levels}")
        pixels = list(config.pixel_noise_levels)
        if pixels and (pixels != sorted(pixels) or pixels[0] < 0 or pixels[-1] > 1):
            raise ValueError(f"sparsity.pixel_noise_levels must be increasing fractions in [0, 1], got {pixels}")
        if config.samples < 1 or config.noise_repeats < 1:
            raise ValueError("sparsity.samples and sparsity.noise_repeats must be >= 1")
        if config.split not in ("train", "val", "test"):
            raise ValueError(f"sparsity.split must be train, val or test, got {config.split!r}")
        self.config = config

    def run(self, ctx: EvalContext) -> Result:
        """Measure, then report per-layer metrics, means over layers, the noise curve and PNGs."""
        report = measure(ctx.model, ctx.kind, ctx.train_config, ctx.count(self.config.samples),
                         tuple(self.config.noise_levels), self.config.noise_repeats, ctx.seed,
                         self.config.split, ctx.device, ctx.progress, tuple(self.config.pixel_noise_levels),
                         self.config.pixel_noise_value)
        result = Result()
        add_report(result, report)
        result.artifacts.append(plot_density({"model": report}, ctx.artifact("density_per_layer.png")))
        result.artifacts.append(plot_noise({"model": report}, ctx.artifact("noise_curve.png")))
        if report.clean_accuracy is not None:
            result.artifacts.append(plot_class_density(report, ctx.artifact("class_density.png")))
            table = {short_name(n): {str(c): d for c, d in s.class_density().items()} for n, s in report.layers.items()}
            path = ctx.artifact("class_density.json")
            write_json_atomic(path, table)
            result.artifacts.append(path)
        return result


def add_report(result: Result, report: SparsityReport) -> None:
    """Append a report's metrics to ``result`` (per layer, means over layers, noise curve)."""
    n = report.samples
    per_layer = {"density": [], "dead_fraction": [], "duty_entropy": []}
    for site, stats in report.layers.items():
        name = short_name(site)
        values = {"density": stats.density(), "dead_fraction": stats.dead_fraction(),
                  "duty_entropy": stats.duty_entropy()}
        for key, value in values.items():
            per_layer[key].append(value)
            result.add(f"{key}/{name}", value, n=n)
        if report.clean_accuracy is not None:
            result.add(f"class_selectivity/{name}", stats.class_selectivity(), n=n)
    for key, values in per_layer.items():
        result.add(key, float(np.mean(values)), n=n, higher_is_better={"dead_fraction": False}.get(key))
    if report.clean_accuracy is not None:
        result.add("accuracy", report.clean_accuracy, stderr=_binomial_stderr(report.clean_accuracy, n), n=n,
                   higher_is_better=True)
        spreads = [max(d.values()) - min(d.values()) for d in (s.class_density() for s in report.layers.values())]
        result.add("class_density_spread", float(np.mean(spreads)), n=n)
    for sigma, score in zip(report.noise_levels, report.noise_scores):
        result.add(f"noise_{report.score_name}/sigma={sigma:g}", score, stderr=_binomial_stderr(score, n), n=n,
                   higher_is_better=True)
    result.add("noise_auc", report.noise_auc(), n=n, higher_is_better=True)
    for fraction, score in zip(report.pixel_levels, report.pixel_scores):
        result.add(f"pixel_noise_{report.score_name}/fraction={fraction:g}", score,
                   stderr=_binomial_stderr(score, n), n=n, higher_is_better=True)
    if report.pixel_scores:
        result.add("pixel_noise_score", report.pixel_noise_score(), n=n, higher_is_better=True)
    result.add(f"noise_{report.score_name}/majority_baseline", report.majority_baseline, n=n)
