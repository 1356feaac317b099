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
with the noise-free one (policy; for a procgen maze policy the folded move — left, down, up,
right, noop — since its 15 actions make only 5 moves, with the raw 15-way agreement kept as
``noise_agreement/raw_action/sigma=S``), and ``noise_auc`` is the area under score-vs-σ divided by the σ
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

Uncertainty: the independent unit is a test image (classifier) or a rollout env (policy: the
frames of one env are consecutive steps of the same episodes, so 64 envs × 16 frames are 64
units, not 1,024). Every estimate row is a statistic of per-input values recomputed on bootstrap
resamples of whole units (stats.bootstrap over images, stats.cluster_bootstrap over envs); an
accuracy with one draw per image is a Wilson interval over images. ``dead_fraction`` is a
property of the batch (kind ``data``): "never fired on these inputs" can only grow when a
resample holds fewer distinct inputs, so a bootstrap interval would sit wholly above the value.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from shardlab.bars import progress_kwargs
from shardlab.evals.suite import stats
from shardlab.evals.suite.base import Eval, register
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.results import Result, write_json_atomic
from shardlab.models.hooks import hooked
from shardlab.trainers.kinds import Kind, get_kind

BATCH = 256
# a statistic of the batch given input weights: how often each input is drawn (all ones = the batch).
# Estimate rows also take a (resamples, inputs) array of weights and return one value per row, so
# that a bootstrap is a few array operations instead of a Python call per resample.
Statistic = Callable[[np.ndarray], "float | np.ndarray"]


def _or_ones(weights: Optional[np.ndarray], n: int) -> np.ndarray:
    """Per-input weights of a statistic: ``weights`` (how often each input is drawn), else all ones (the batch)."""
    return np.ones(n) if weights is None else weights


def _value(x: "float | np.ndarray") -> "float | np.ndarray":
    """A statistic's result: a float for one weight vector, an array for a (resamples, inputs) block."""
    return float(x) if np.ndim(x) == 0 else np.asarray(x, dtype=float)


@dataclass
class LayerStats:
    """Per-input activity at one activation site, so every statistic can be recomputed on a resample."""

    active_parts: list[np.ndarray] = field(default_factory=list)  # (inputs, units): non-zero positions
    magnitude_parts: list[np.ndarray] = field(default_factory=list)  # (inputs, units): mean |a| over positions
    label_parts: list[np.ndarray] = field(default_factory=list)
    positions: int = 1  # values per unit and input (H·W of a conv map)
    _totals: Optional[np.ndarray] = field(default=None, repr=False)  # per input: non-zero values

    @classmethod
    def of(cls, act: torch.Tensor, labels: Optional[torch.Tensor] = None) -> "LayerStats":
        """The statistics of one tensor of activations (N, D) or (N, C, H, W)."""
        layer = cls()
        layer.add(act, labels)
        return layer

    def add(self, act: torch.Tensor, labels: Optional[torch.Tensor]) -> None:
        """Record one batch of activations (N, D) or (N, C, H, W); units are features or channels."""
        act = act.float().reshape(act.shape[0], act.shape[1], -1) if act.dim() == 4 else act.float().reshape(act.shape[0], -1, 1)
        self.positions, self._totals = act.shape[2], None
        self.active_parts.append((act != 0).sum(dim=2).double().numpy())
        self.magnitude_parts.append(act.abs().mean(dim=2).double().numpy())
        if labels is not None:
            self.label_parts.append(labels.numpy())

    @staticmethod
    def _joined(parts: list[np.ndarray]) -> np.ndarray:
        if len(parts) > 1:
            parts[:] = [np.concatenate(parts)]
        return parts[0]

    @property
    def active(self) -> np.ndarray:
        """(inputs, units): how many of each unit's positions are non-zero on each input."""
        return self._joined(self.active_parts)

    @property
    def magnitude(self) -> np.ndarray:
        """(inputs, units): each unit's mean |activation| over its positions on each input."""
        return self._joined(self.magnitude_parts)

    @property
    def labels(self) -> Optional[np.ndarray]:
        """The inputs' class labels (None without labels)."""
        return self._joined(self.label_parts) if self.label_parts else None

    @property
    def totals(self) -> np.ndarray:
        """(inputs,): how many of each input's values are non-zero."""
        if self._totals is None:
            self._totals = self.active.sum(1)
        return self._totals


    def density(self, weights: Optional[np.ndarray] = None) -> "float | np.ndarray":
        """Fraction of non-zero values."""
        w = _or_ones(weights, len(self.active))
        return _value(w @ self.totals / (w.sum(-1) * self.active.shape[1] * self.positions))

    def unit_activity(self, weights: Optional[np.ndarray] = None) -> np.ndarray:
        """Per unit: how many of its values are non-zero over the (weighted) batch."""
        return _or_ones(weights, len(self.active)) @ self.active

    def dead_fraction(self, weights: Optional[np.ndarray] = None) -> "float | np.ndarray":
        """Fraction of units never non-zero on the batch."""
        return _value((self.unit_activity(weights) == 0).mean(-1))

    def duty_entropy(self, weights: Optional[np.ndarray] = None) -> "float | np.ndarray":
        """Normalised entropy of the units' share of activity (1 = evenly used; NaN when nothing fires)."""
        activity = self.unit_activity(weights)
        units = activity.shape[-1]
        if units < 2:
            return _value(np.full(activity.shape[:-1], math.nan))
        total = activity.sum(-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = activity / total
            # log(1) = 0 makes a unit that never fired add nothing, as 0·log 0 should
            entropy = -(share * np.log(np.where(share > 0, share, 1.0))).sum(-1) / math.log(units)
        return _value(np.where(total[..., 0] == 0, math.nan, entropy))

    def _class_weights(self, weights: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The classes present in the (weighted) batch and (classes, inputs) weights of their inputs."""
        labels, w = self.labels, _or_ones(weights, len(self.active))
        classes = np.unique(labels)
        per_class = (labels[None, :] == classes[:, None]) * w[None, :]
        present = per_class.sum(1) > 0  # a resample can miss a class
        return classes[present], per_class[present]

    def class_density(self, weights: Optional[np.ndarray] = None) -> dict[int, float]:
        """Density per class."""
        classes, per_class = self._class_weights(weights)
        values = self.active.shape[1] * self.positions
        densities = per_class @ self.totals / (per_class.sum(1) * values)
        return {int(c): float(d) for c, d in zip(classes, densities)}

    def class_density_spread(self, weights: Optional[np.ndarray] = None) -> float:
        """Largest minus smallest density over classes."""
        densities = list(self.class_density(weights).values())
        return max(densities) - min(densities)

    def class_selectivity(self, weights: Optional[np.ndarray] = None) -> float:
        """Mean class-selectivity index over units active for some class (NaN under two classes)."""
        classes, per_class = self._class_weights(weights)
        if len(classes) < 2:
            return math.nan
        means = per_class @ self.magnitude / per_class.sum(1, keepdims=True)  # (classes, units)
        best = means.max(0)
        rest = (means.sum(0) - best) / (means.shape[0] - 1)
        live = (best + rest) > 0
        if not live.any():
            return math.nan
        best, rest = best[live], rest[live]
        return float(((best - rest) / (best + rest)).mean())


@dataclass
class SparsityReport:
    """Everything the sparsity eval measures for one network, per input."""

    layers: dict[str, LayerStats]
    noise_levels: list[float]
    noise_hits: np.ndarray  # (levels, inputs): share of an input's noise draws scored correct
    score_name: str  # accuracy (classifier) or agreement (policy)
    clusters: np.ndarray  # (inputs,): the independent unit (image, env) each input belongs to
    unit: str  # "images" or "envs"
    reference: np.ndarray  # (inputs,): the right answer (label, or the clean greedy action)
    clean_hits: Optional[np.ndarray] = None  # classifier: (inputs,) clean prediction == label
    pixel_levels: list[float] = field(default_factory=list)  # fractions of input values replaced
    pixel_hits: Optional[np.ndarray] = None  # (levels, inputs), as noise_hits
    draws: int = 1  # noise draws per input at each level above 0
    inputs_digest: str = ""  # fingerprint of the inputs: two reports with equal digests saw the same batch
    raw_noise_hits: Optional[np.ndarray] = None  # maze policies: (levels, inputs) agreement of the raw 15-way action

    @property
    def samples(self) -> int:
        """Inputs measured."""
        return len(self.clusters)

    @property
    def units(self) -> int:
        """Independent units (images, envs) among the inputs."""
        return len(np.unique(self.clusters))

    @property
    def clean_accuracy(self) -> Optional[float]:
        """Test accuracy on the clean inputs (None for a policy)."""
        return None if self.clean_hits is None else float(self.clean_hits.mean())

    @property
    def noise_scores(self) -> list[float]:
        """Score per Gaussian noise level."""
        return [float(row.mean()) for row in self.noise_hits]

    @property
    def pixel_scores(self) -> list[float]:
        """Score per pixel-noise level."""
        return [] if self.pixel_hits is None else [float(row.mean()) for row in self.pixel_hits]


    def majority_hits(self) -> np.ndarray:
        """Per input: 1 where the reference is the batch's commonest answer (the majority baseline's hits)."""
        # the answer is chosen once, on the whole batch: re-choosing it on each resample would make
        # the resampled baseline a maximum, biased upwards
        return (self.reference == np.bincount(self.reference).argmax()).astype(float)

    def majority_baseline(self) -> float:
        """The score of always giving the commonest reference answer."""
        return float(self.majority_hits().mean())

    def noise_auc(self, weights: Optional[np.ndarray] = None) -> "float | np.ndarray":
        """Area under score-vs-σ divided by the σ range (the mean score over the noise levels)."""
        w = _or_ones(weights, self.samples)
        scores = w @ self.noise_hits.T / w.sum(-1)[..., None]  # (..., levels)
        if len(self.noise_levels) < 2:
            return _value(scores[..., 0])
        return _value(np.trapz(scores, self.noise_levels, axis=-1) / (self.noise_levels[-1] - self.noise_levels[0]))

    def pixel_noise_score(self, weights: Optional[np.ndarray] = None) -> "float | np.ndarray":
        """Mean score over the pixel-noise levels (numenta's noise score per input and level)."""
        if self.pixel_hits is None or not len(self.pixel_hits):
            return math.nan
        w = _or_ones(weights, self.samples)
        return _value((w @ self.pixel_hits.T / w.sum(-1)[..., None]).mean(-1))

    def resampled(self, statistic: Statistic) -> stats.Estimate:
        """``statistic(weights)`` with a bootstrap interval over the independent units (a bootstrap over
        images, or a cluster bootstrap over envs), all resamples' weights at once."""
        # every input its own unit (test images; one frame per env): resample the inputs themselves
        clusters = np.arange(self.samples) if self.units == self.samples else self.clusters
        return stats.weighted_bootstrap(statistic, clusters, self.unit)


@dataclass(frozen=True)
class Row:
    """How one metric is computed: a statistic of input weights, its kind and its direction."""

    statistic: Statistic
    # "data": a property of this batch, reported without an interval (see DATA_ROWS)
    kind: str = "estimate"
    flags: Optional[np.ndarray] = None  # one 0/1 outcome per independent unit: a Wilson interval
    undefined: str = "undefined on this batch"  # why, when the statistic is NaN
    higher_is_better: Optional[bool] = None


# Why these rows are kind "data" and not bootstrapped: each is an extreme over the batch, which a
# resample (fewer distinct inputs, the same per-class noise again) pushes one way, so a percentile
# interval would sit beside the value rather than around it. dead_fraction ("never fired on these
# inputs") can only grow on a resample; class_selectivity and class_density_spread take a maximum
# over noisy per-class means (about 36 test images per digit), which the resample's extra noise
# raises. They describe this batch; `inputs` says how large it was.
DATA_ROWS = ("dead_fraction", "class_selectivity", "class_density_spread")


def _score_row(report: SparsityReport, hits: np.ndarray, draws: int) -> Row:
    """A score row: Wilson over units when each unit gave one 0/1 answer, else a bootstrap over units."""
    single = draws == 1 and report.units == report.samples
    return Row(lambda w: _value(w @ hits / w.sum(-1)), flags=hits if single else None, higher_is_better=True)


def _mean_over_layers(report: SparsityReport, method: str) -> Statistic:
    """The mean over layers (those where it is defined) of a per-layer statistic of input weights."""
    def statistic(w: np.ndarray) -> "float | np.ndarray":
        values = np.stack([np.asarray(getattr(layer, method)(w), dtype=float) for layer in report.layers.values()])
        defined = ~np.isnan(values)
        count = defined.sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(defined, values, 0.0).sum(0) / count
        return _value(np.where(count > 0, mean, math.nan))
    return statistic


def report_rows(report: SparsityReport) -> dict[str, Row]:
    """Every metric of a report by name, in the order the results list them."""
    rows: dict[str, Row] = {}
    labelled = report.clean_hits is not None
    selective = "fewer than two classes, or no unit fired"
    for site, layer in report.layers.items():
        name = short_name(site)
        rows[f"density/{name}"] = Row(layer.density)
        rows[f"dead_fraction/{name}"] = Row(layer.dead_fraction, kind="data", higher_is_better=False)
        rows[f"duty_entropy/{name}"] = Row(layer.duty_entropy, undefined=f"no unit of {name} fired on the batch")
        if labelled:
            rows[f"class_selectivity/{name}"] = Row(layer.class_selectivity, kind="data", undefined=selective)
    rows["density"] = Row(_mean_over_layers(report, "density"))
    rows["dead_fraction"] = Row(_mean_over_layers(report, "dead_fraction"), kind="data", higher_is_better=False)
    rows["duty_entropy"] = Row(_mean_over_layers(report, "duty_entropy"), undefined="no unit of any layer fired")
    if labelled:
        rows["accuracy"] = _score_row(report, report.clean_hits, 1)
        rows["class_density_spread"] = Row(_mean_over_layers(report, "class_density_spread"), kind="data")
    for sigma, hits in zip(report.noise_levels, report.noise_hits):
        rows[f"noise_{report.score_name}/sigma={sigma:g}"] = _score_row(report, hits, report.draws if sigma > 0 else 1)
    for sigma, hits in zip(report.noise_levels, [] if report.raw_noise_hits is None else report.raw_noise_hits):
        rows[f"noise_{report.score_name}/raw_action/sigma={sigma:g}"] = _score_row(
            report, hits, report.draws if sigma > 0 else 1)
    rows["noise_auc"] = Row(report.noise_auc, higher_is_better=True)
    for fraction, hits in zip(report.pixel_levels, [] if report.pixel_hits is None else report.pixel_hits):
        rows[f"pixel_noise_{report.score_name}/fraction={fraction:g}"] = _score_row(
            report, hits, report.draws if fraction > 0 else 1)
    if report.pixel_scores:
        rows["pixel_noise_score"] = Row(report.pixel_noise_score, higher_is_better=True)
    rows[f"noise_{report.score_name}/majority_baseline"] = _score_row(report, report.majority_hits(), 1)
    return rows


def row_estimate(report: SparsityReport, row: Row) -> stats.Estimate:
    """The estimate of one estimate row: Wilson over units, or a bootstrap over units."""
    if math.isnan(row.statistic(np.ones(report.samples))):
        return stats.undefined(row.undefined, report.units, report.unit)
    if row.flags is not None:
        return stats.proportion(row.flags, unit=report.unit)
    return report.resampled(row.statistic)


def paired_difference(first: SparsityReport, second: SparsityReport, name: str) -> stats.Estimate:
    """``name`` of ``second`` minus that of ``first``, both networks measured on the same inputs: a
    paired bootstrap over the shared units (each resample draws the same units for both)."""
    if first.inputs_digest != second.inputs_digest or not np.array_equal(first.clusters, second.clusters):
        return stats.undefined("the two networks were measured on different inputs", first.units, first.unit)
    rows = [report_rows(report).get(name) for report in (first, second)]
    if any(row is None or row.kind != "estimate" for row in rows):
        return stats.undefined(f"{name} is not an estimate of both networks", first.units, first.unit)
    difference = lambda w: rows[1].statistic(w) - rows[0].statistic(w)
    if math.isnan(difference(np.ones(first.samples))):
        return stats.undefined(f"{name} is undefined for one of the networks", first.units, first.unit)
    return first.resampled(difference)


def add_report(result: Result, report: SparsityReport) -> None:
    """Append a report's metrics to ``result`` (per layer, means over layers, noise curves)."""
    result.add("inputs", report.samples, kind="count")
    for name, row in report_rows(report).items():
        if row.kind == "data":
            value = row.statistic(np.ones(report.samples))
            result.add(name, value, kind="data", higher_is_better=row.higher_is_better,
                       note=row.undefined if math.isnan(value) else None)
        else:
            result.add(name, row_estimate(report, row), higher_is_better=row.higher_is_better)


def short_name(site: str) -> str:
    """Site name without the ``embedder.`` prefix, for tables and plots."""
    return site.removeprefix("embedder.")


def _random_observations(env, n: int, num_actions: int, seed: int, desc: str, progress: bool) -> torch.Tensor:
    """The first ``n`` observations of seeded uniformly random rollouts of ``env`` (which is closed)."""
    from shardlab.envs.rollout import rollout

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


def rollout_envs(train_config: DictConfig, n: int) -> int:
    """How many envs :func:`env_observations` runs for ``n`` observations."""
    env_config = get_kind(train_config.algo).load("env_config")
    # as many envs as the family's default batch (64 mazes, 16 MiniGrid envs), at most n, whatever
    # the run trained with: the batch decides which observations come out
    return min(n, type(env_config(train_config))().num_envs)


def env_observations(train_config: DictConfig, n: int, seed: int, progress: bool = False) -> torch.Tensor:
    """``n`` uint8 observations from seeded random rollouts of the training env (of the config's kind);
    observation i comes from env ``i % rollout_envs(train_config, n)`` (one step of every env at a time)."""
    kind = get_kind(train_config.algo)
    env = kind.build_env(train_config, num_envs=rollout_envs(train_config, n), seed=seed)
    return _random_observations(env, n, env.num_actions, seed, f"{kind.algo} observations", progress)


def _inputs(kind: Kind, train_config: DictConfig, samples: int, seed: int, split: str,
            progress: bool) -> tuple[torch.Tensor, Optional[torch.Tensor], np.ndarray, str]:
    """The inputs, their labels (None for a policy), each input's independent unit and the unit's name."""
    if kind.env_config is None:  # no env: a classifier is measured on its dataset's images and labels
        from shardlab.trainers.datasets import load_splits
        splits = load_splits(train_config.data)
        x, y = splits.x[split][:samples], splits.y[split][:samples]
        return x, y, np.arange(len(x)), "images"
    obs = env_observations(train_config, samples, seed, progress)
    envs = np.arange(len(obs)) % rollout_envs(train_config, samples)  # consecutive frames of an env are one unit
    # the default memory layout whatever the kind's preprocessing picks (the maze's is channels-last)
    return kind.load("preprocess")(obs).contiguous(), None, envs, "envs"


def _predict(model: nn.Module, x: torch.Tensor, device: torch.device, fold: bool = False) -> torch.Tensor:
    """(N, 1) argmax answers; with ``fold`` (a procgen maze policy) (N, 2): the folded move
    (left/down/up/right/noop, the headline: 15 actions make only 5 moves) and the raw action."""
    from shardlab.evals.maze.vector_field import fold_actions

    out = model(x.to(device))
    logits = out[0] if isinstance(out, tuple) else out
    raw = logits.argmax(-1).cpu()
    if not fold:
        return raw[:, None]
    return torch.stack([fold_actions(logits.float().softmax(-1)).argmax(-1).cpu(), raw], 1)


def _hits(model: nn.Module, noisy: Callable[[], torch.Tensor], draws: int, reference: torch.Tensor,
          device: torch.device, fold: bool = False) -> np.ndarray:
    """Per input (and answer column, see _predict): the share of ``draws`` noisy versions
    (``noisy()``) answered like ``reference``."""
    hits = torch.zeros(reference.shape, dtype=torch.float64)
    for _ in range(draws):
        x = noisy()
        predicted = torch.cat([_predict(model, x[s:s + BATCH], device, fold) for s in range(0, len(x), BATCH)])
        hits += (predicted == reference).double()
    return (hits / draws).numpy()


@torch.no_grad()
def measure(model: nn.Module, kind: str, train_config: DictConfig, samples: int = 1024,
            noise_levels: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0), noise_repeats: int = 3,
            seed: int = 0, split: str = "test", device: torch.device = torch.device("cpu"),
            progress: bool = False, pixel_levels: tuple[float, ...] = (),
            pixel_value: float = 0.75) -> SparsityReport:
    """Activation statistics on a seeded input batch and the score under increasing input noise."""
    model = model.eval().to(device)
    adapter = get_kind(kind)
    x, y, clusters, unit = _inputs(adapter, train_config, samples, seed, split, progress)
    sites = adapter.activation_sites(model)
    layers = {site: LayerStats() for site in sites}
    fold = kind == "ppo"  # procgen maze policies: agreement of folded moves is the headline
    clean = []
    for start in range(0, len(x), BATCH):
        labels = None if y is None else y[start:start + BATCH]
        with hooked(model, cache=sites) as acts:
            clean.append(_predict(model, x[start:start + BATCH], device, fold))
        for site in sites:
            layers[site].add(acts[site].cpu(), labels)
    clean = torch.cat(clean)
    reference = clean if y is None else y[:, None]
    generator = torch.Generator().manual_seed(seed)
    # images lie in [0, 1]; MiniGrid's index grids in [0, top]: noise and the pixel value scale with it
    top = 1.0 if adapter.unit_inputs else max(float(x.max()), 1.0)
    noise_hits = np.array([_hits(model, lambda: (x + sigma * top * torch.randn(x.shape, generator=generator)
                                                 ).clamp_(0, top), noise_repeats if sigma > 0 else 1, reference,
                                 device, fold)
                           for sigma in tqdm(noise_levels, desc="noise levels", disable=not progress,
                                             **progress_kwargs())])
    pixel_hits = [_hits(model, lambda: with_pixel_noise(x, fraction, pixel_value * top, generator),
                        noise_repeats if fraction > 0 else 1, reference, device, fold)
                  for fraction in tqdm(pixel_levels, desc="pixel noise", disable=not progress, **progress_kwargs())]
    return SparsityReport(
        layers, list(noise_levels), noise_hits[..., 0], "accuracy" if y is not None else "agreement",
        clusters, unit, reference[:, 0].numpy(), None if y is None else (clean[:, 0] == y).double().numpy(),
        list(pixel_levels), np.array(pixel_hits)[..., 0] if pixel_hits else None, noise_repeats,
        hashlib.sha1(x.numpy().tobytes()).hexdigest(), raw_noise_hits=noise_hits[..., 1] if fold else None)


def with_pixel_noise(x: torch.Tensor, fraction: float, value: float, generator: torch.Generator) -> torch.Tensor:
    """``x`` with ``int(fraction · size)`` randomly chosen values of each input set to ``value``."""
    flat = x.reshape(len(x), -1)
    count = int(flat.shape[1] * fraction)
    chosen = torch.rand(flat.shape, generator=generator).argsort(dim=1)[:, :count]
    return flat.clone().scatter_(1, chosen, value).reshape(x.shape)


def plot_density(reports: dict[str, SparsityReport], path: str) -> str:
    """Bars of density and dead-unit fraction per layer, one colour per network."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shardlab.figures import write_png_atomic

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
    return write_png_atomic(fig, path, dpi=110, pyplot=True)


def plot_noise(reports: dict[str, SparsityReport], path: str) -> str:
    """Score (accuracy or action agreement) against Gaussian σ and, if measured, against the
    pixel-noise fraction, one line per network."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shardlab.figures import write_png_atomic

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
    return write_png_atomic(fig, path, dpi=110, pyplot=True)


def plot_class_density(report: SparsityReport, path: str) -> str:
    """Heatmap of activation density per class (rows) and layer (columns)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shardlab.figures import write_png_atomic

    names = list(report.layers)
    classes = sorted(next(iter(report.layers.values())).class_density())
    grid = np.array([[report.layers[n].class_density()[c] for n in names] for c in classes])
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 0.35 * len(classes) + 1.5))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
    ax.set_xticks(range(len(names)), [short_name(n) for n in names])
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set_ylabel("class")
    ax.set_title("activation density per class")
    fig.colorbar(image, ax=ax)
    return write_png_atomic(fig, path, dpi=110, pyplot=True)


@register("sparsity")
class Sparsity(Eval):
    """Activation density, dead units and duty-cycle entropy per layer; class-wise sparsity; noise robustness."""

    kinds = ("classify", "ppo", "ppo_minigrid")
    # 2: intervals over independent units (images, envs); dead_fraction is a data row; k-WTA keeps
    # nupic.torch's int(round(n·p)·factor) winners at test time (one fewer for some widths)
    version = 3  # 3: a maze policy's agreement is of folded moves (raw actions kept as raw_action)
    headline = ("density", "dead_fraction")

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


