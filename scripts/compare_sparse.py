"""Compare a dense and a sparse checkpoint of the same kind (classifier or maze policy).

    python scripts/compare_sparse.py DENSE.ckpt SPARSE.ckpt --out DIR

Both networks are measured by evals/sparsity/sparsity.py on the same seeded inputs; DIR receives
``comparison.md`` (a table: each value with its 95% interval over the independent units, test
images or rollout envs, and sparse − dense with a paired bootstrap interval over the same units),
``comparison.json`` (every metric of both, and the differences with their intervals),
``density_per_layer.png`` and ``noise_curve.png``. Exit 0, or 2 with a one-line error on bad input.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shardlab.atomic import write_text  # noqa: E402
from shardlab.evals.suite import stats  # noqa: E402
from shardlab.evals.suite.results import Metric, Result, write_json_atomic  # noqa: E402
from shardlab.evals.sparsity.sparsity import (Sparsity, SparsityReport, add_report, measure,  # noqa: E402
                                              paired_difference, plot_density, plot_noise)
from shardlab.trainers.checkpointing import CheckpointError  # noqa: E402
from shardlab.trainers.config import ConfigError  # noqa: E402
from shardlab.trainers.restore import load_trained  # noqa: E402

EXIT_OK, EXIT_BAD_INPUT = 0, 2
# rows of the markdown table: the metrics that sum a network up
HEADLINE = ("accuracy", "noise_auc", "pixel_noise_score", "density", "dead_fraction", "duty_entropy",
            "class_density_spread")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dense", help="checkpoint of the dense network")
    parser.add_argument("sparse", help="checkpoint of the sparse network")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--labels", nargs=2, default=("dense", "sparse"), metavar=("DENSE", "SPARSE"))
    parser.add_argument("--samples", type=int, default=1024, help="test images / maze observations")
    parser.add_argument("--noise-levels", type=float, nargs="+", default=Sparsity.Config().noise_levels)
    parser.add_argument("--noise-repeats", type=int, default=3)
    parser.add_argument("--pixel-noise-levels", type=float, nargs="*", default=Sparsity.Config().pixel_noise_levels,
                        help="fractions of input values set to a bright value (numenta's noise); none to skip")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def table_names(result: Result) -> list[str]:
    """The table's rows: headline metrics, then the noise curves and per-layer density."""
    names = [m.name for m in result.metrics]
    return ([n for n in HEADLINE if n in names]
            + [n for n in names if n.startswith(("noise_", "pixel_noise_")) and n not in HEADLINE]
            + [n for n in names if n.startswith("density/")])


def _cell(value: float, low: float | None, high: float | None, sign: str = "") -> str:
    interval = "" if low is None or high is None else f" [{low:{sign}.4f}, {high:{sign}.4f}]"
    return f"{value:{sign}.4f}{interval}"


def markdown_table(labels: tuple[str, str], results: tuple[Result, Result],
                   differences: dict[str, stats.Estimate]) -> str:
    """Headline metrics, then per-layer density and the noise curve, each with its 95% interval,
    and sparse − dense with its paired interval."""
    rows: list[dict[str, Metric]] = [{m.name: m for m in r.metrics} for r in results]
    lines = [f"| metric | {labels[0]} | {labels[1]} | {labels[1]} − {labels[0]} |", "|---|---:|---:|---:|"]
    for name in table_names(results[0]):
        cells = [_cell(r[name].value, r[name].ci_low, r[name].ci_high) if name in r else "—" for r in rows]
        d = differences.get(name)
        delta = "—" if d is None or not d.defined else _cell(d.value, d.ci_low, d.ci_high, "+")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {delta} |")
    units = next((m for m in results[0].metrics if m.n), None)
    if units is not None:
        lines.append(f"\n95% intervals over {units.n} independent {units.unit}; the difference is a paired "
                     f"bootstrap over the same {units.unit} (both networks saw the same inputs).")
    return "\n".join(lines) + "\n"


def differences(reports: tuple[SparsityReport, SparsityReport], names: list[str]) -> dict[str, stats.Estimate]:
    """second − first for every estimate row among ``names`` (paired over the shared units)."""
    return {name: paired_difference(reports[0], reports[1], name) for name in names}


def main(argv: list[str] | None = None) -> int:
    """Measure both checkpoints and write the table, JSON and plots."""
    args = _parser().parse_args(argv)
    try:
        Sparsity(Sparsity.Config(samples=args.samples, noise_levels=list(args.noise_levels),
                                 noise_repeats=args.noise_repeats,
                                 pixel_noise_levels=list(args.pixel_noise_levels)))  # checks the options
        trained = [load_trained(args.dense), load_trained(args.sparse)]
        kinds = {t.kind for t in trained}
        if len(kinds) > 1:
            raise ValueError(f"{args.dense} is a {trained[0].kind} checkpoint but {args.sparse} is a "
                             f"{trained[1].kind} checkpoint; compare two of the same kind")
        if trained[0].kind not in Sparsity.kinds:
            raise ValueError(f"{args.dense} is a {trained[0].kind} checkpoint; compare_sparse takes "
                             f"{' or '.join(Sparsity.kinds)} checkpoints")
        reports = {label: measure(t.model, t.kind, t.config, args.samples, tuple(args.noise_levels),
                                  args.noise_repeats, args.seed, progress=True,
                                  pixel_levels=tuple(args.pixel_noise_levels))
                   for label, t in zip(args.labels, trained)}
    except (CheckpointError, ConfigError, ValueError) as exc:
        print(f"compare_sparse: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if list(reports[args.labels[0]].layers) != list(reports[args.labels[1]].layers):
        print("compare_sparse: error: the two networks have different layers; compare the same architecture",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    os.makedirs(args.out, exist_ok=True)
    results = (Result(), Result())
    for result, report in zip(results, reports.values()):
        add_report(result, report)
    diffs = differences(tuple(reports.values()), table_names(results[0]))
    table = markdown_table(tuple(args.labels), results, diffs)
    write_text(os.path.join(args.out, "comparison.md"), table)
    write_json_atomic(os.path.join(args.out, "comparison.json"), {
        **{label: {"checkpoint": os.path.abspath(path), **{m.name: m.value for m in result.metrics}}
           for label, path, result in zip(args.labels, (args.dense, args.sparse), results)},
        f"{args.labels[1]} − {args.labels[0]}": {name: stats.as_row(d) for name, d in diffs.items()}})
    plot_density(reports, os.path.join(args.out, "density_per_layer.png"))
    plot_noise(reports, os.path.join(args.out, "noise_curve.png"))
    print(table)
    print(f"written: {args.out}/comparison.md, comparison.json, density_per_layer.png, noise_curve.png")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
