"""``benchmark.py interp``: forward passes/s of ImpalaPolicy with activation hooks against without.

For each scale and batch size, on one random input batch under ``torch.inference_mode``, four
ways of running the same weights are timed:

* ``no_hookpoints`` — a copy of the policy whose HookPoint modules are replaced by a plain identity
  function (the same forward code and module calls; what the network would cost without them);
* ``unhooked`` — ``policy(x)``: the HookPoints are there but no hook is attached;
* ``hooked`` — a copy of the policy with hooks attached for the whole measurement
  (``hooked(copy, edits={LAYER: add(v, 1)}, cache=[LAYER])``), LAYER = the published
  ``embedder.block2.res1.resadd_out``;
* ``hooked_per_call`` — the same ``hooked`` context entered and left around every forward pass
  (the ``run_with_cache`` pattern: name lookup, registration, removal each time).

Every forward pass is timed on its own, and the ways take turns forward by forward (in rotating
order), so load that drifts over milliseconds on a shared machine hits them alike; timing blocks of
forwards one way after another moved whole-forward ratios by ±15% on this 2-core VM even when it
was idle, while the interleaved per-forward medians agree to a point or two between runs. A repeat
is ``--min-time`` seconds' worth of rounds; its per-way medians give one overhead (time ratio − 1
against ``unhooked``; for the HookPoints, ``unhooked`` against ``no_hookpoints``), and the median
over repeats is reported, for wall time and for process CPU time. The target is ≤ 10% for the two
hooked ways. The pieces hooks add are also timed on their own (fastest of several CPU timings): all
HookPoint calls of one forward, one firing of the cache + add hook, one enter + exit of
``hooked``; divided by the fastest unhooked forward they give a lower bound (timed alone, with warm
caches, the calls are cheaper than inside a forward pass).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from typing import Any, Callable

from benchmarks.common import finish_report

NAME = "interp"
HELP = ("ImpalaPolicy forward passes/s with activation hooks vs without, and the HookPoints' "
        "own cost (target hook overhead <= 10%%)")
LAYER = "embedder.block2.res1.resadd_out"
WAYS = ("no_hookpoints", "unhooked", "hooked", "hooked_per_call")
TARGET_OVERHEAD = 0.10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``benchmark.py interp``."""
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4], help="IMPALA scales (default 1 4)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], help="batch sizes (default 1 64)")
    parser.add_argument("--image-size", type=int, default=64,
                        help="input side: 64 for procgen's RGB image (default), 15 or 25 for the grid view")
    parser.add_argument("--repeats", type=int, default=5,
                        help="repeats, each giving one overhead per way; medians reported (default 5)")
    parser.add_argument("--min-time", type=float, default=1.0,
                        help="seconds of unhooked forwards per repeat; the other ways run as many (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")


def without_hookpoints(policy: Any) -> Any:
    """A copy of ``policy`` whose HookPoint modules are replaced by a plain identity function: the
    same forward code and module calls, minus the HookPoints' own ``nn.Module.__call__``."""
    import copy

    from shardlab.models.hooks import HookPoint

    bare = copy.deepcopy(policy)
    for name, module in list(bare.named_modules()):
        if isinstance(module, HookPoint):
            parent_name, _, attribute = name.rpartition(".")
            parent = bare.get_submodule(parent_name)
            delattr(parent, attribute)  # a child module slot cannot hold a function
            object.__setattr__(parent, attribute, _identity)
    return bare


def _identity(x: Any) -> Any:
    return x


def _ways(policy: Any, x: Any, stack: Any) -> dict[str, Callable[[], None]]:
    """Each way as a function running one forward pass; ``stack`` (an ExitStack) keeps the
    attached-once hooks on their own copy of the policy until the measurement ends."""
    import copy

    import torch

    from shardlab.models.hooks import add, hooked

    with hooked(policy, cache=[LAYER]) as acts:
        policy(x)
    vector = torch.randn(acts[LAYER].shape[1:], generator=torch.Generator().manual_seed(0))
    bare = without_hookpoints(policy)
    # a copy so that the hooks stay attached while the unhooked policy is timed in between
    with_hooks = copy.deepcopy(policy)
    stack.enter_context(hooked(with_hooks, edits={LAYER: add(vector, 1.0)}, cache=[LAYER]))

    def hooked_per_call() -> None:
        with hooked(policy, edits={LAYER: add(vector, 1.0)}, cache=[LAYER]):
            policy(x)

    return {"no_hookpoints": lambda: bare(x), "unhooked": lambda: policy(x), "hooked": lambda: with_hooks(x),
            "hooked_per_call": hooked_per_call}


def measure_one(scale: int, batch: int, image_size: int, repeats: int, min_time: float) -> dict[str, Any]:
    """Forward passes/s of every way at one scale and batch size, with per-repeat overheads."""
    import contextlib

    import torch

    from shardlab.models.impala import ImpalaPolicy

    torch.manual_seed(0)
    policy = ImpalaPolicy(scale=scale, image_size=image_size).eval().to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), contextlib.ExitStack() as stack:
        reference = policy(x)
        plain = without_hookpoints(policy)(x)
        if not (torch.equal(reference[0], plain[0]) and torch.equal(reference[1], plain[1])):
            raise RuntimeError("the HookPoint-free forward does not reproduce ImpalaPolicy's outputs")
        ways = _ways(policy, x, stack)
        for run in ways.values():
            for _ in range(2):
                run()  # warm-up: oneDNN primitives, allocator
        start = time.perf_counter()
        ways["unhooked"]()
        iterations = max(5, math.ceil(min_time / max(time.perf_counter() - start, 1e-9)))
        seconds: dict[str, list[float]] = {name: [] for name in WAYS}
        cpu: dict[str, list[float]] = {name: [] for name in WAYS}
        for _ in range(repeats):
            calls: dict[str, list[float]] = {name: [] for name in WAYS}
            calls_cpu: dict[str, list[float]] = {name: [] for name in WAYS}
            for i in range(iterations):
                # one forward of every way per round, in rotating order: load that drifts over
                # milliseconds hits all ways alike, which block timings could not ensure
                for name in WAYS[i % 4:] + WAYS[:i % 4]:
                    start, start_cpu = time.perf_counter(), time.process_time()
                    ways[name]()
                    calls[name].append(time.perf_counter() - start)
                    calls_cpu[name].append(time.process_time() - start_cpu)
            for name in WAYS:
                seconds[name].append(statistics.median(calls[name]))
                cpu[name].append(statistics.median(calls_cpu[name]))
        parts = component_costs(policy, x, repeats)
    forward = min(cpu["unhooked"])
    overhead = _overheads(seconds)
    overhead_cpu = _overheads(cpu)
    return {"scale": scale, "batch": batch, "image_size": image_size, "iterations": iterations,
            "forwards_per_sec": {name: 1 / statistics.median(values) for name, values in seconds.items()},
            "seconds_per_forward": seconds, "cpu_seconds_per_forward": cpu,
            "overhead": {name: statistics.median(values) for name, values in overhead.items()},
            "overhead_cpu": {name: statistics.median(values) for name, values in overhead_cpu.items()},
            "overhead_runs": overhead,
            "component_us": {name: value * 1e6 for name, value in parts.items()},
            # the parts over the fastest unhooked forward: the overheads without the machine's noise
            "overhead_from_parts": {"hookpoints": parts["hookpoint_calls"] / forward,
                                    "hooked": parts["hook_fire"] / forward,
                                    "hooked_per_call": (parts["hook_fire"] + parts["context"]) / forward}}


def component_costs(policy: Any, x: Any, repeats: int) -> dict[str, float]:
    """CPU seconds (fastest of ``repeats`` timings) of the pieces hooks add to a forward pass:
    all HookPoint calls of one forward, one firing of the cache + add hook on LAYER's activation,
    and one enter + exit of the ``hooked`` context."""
    import timeit

    import torch

    from shardlab.models.hooks import HookPoint, add, hooked

    points = [module for module in policy.modules() if isinstance(module, HookPoint)]
    with hooked(policy, cache=[LAYER]) as acts:
        policy(x)
    activation = acts[LAYER]
    point = dict(policy.named_modules())[LAYER]
    vector = torch.randn(activation.shape[1:], generator=torch.Generator().manual_seed(0))

    def fastest(function: Callable[[], Any], number: int) -> float:
        timer = timeit.Timer(function, timer=time.process_time)
        return min(timer.repeat(repeat=max(repeats, 3), number=number)) / number

    number = 2000 if activation.numel() < 100_000 else 200
    bare = fastest(lambda: point(activation), number)
    with hooked(policy, edits={LAYER: add(vector, 1.0)}, cache=[LAYER]):
        fired = fastest(lambda: point(activation), number)
    enter_exit = fastest(lambda: _enter_exit(policy, vector), 2000)
    return {"hookpoint_calls": len(points) * bare, "hook_fire": fired - bare, "context": enter_exit}


def _enter_exit(policy: Any, vector: Any) -> None:
    from shardlab.models.hooks import add, hooked

    with hooked(policy, edits={LAYER: add(vector, 1.0)}, cache=[LAYER]):
        pass


def _overheads(seconds: dict[str, list[float]]) -> dict[str, list[float]]:
    """Per-repeat time ratios − 1: the hooked ways against unhooked, unhooked against no HookPoints."""
    ratio = lambda a, b: [x / y - 1 for x, y in zip(seconds[a], seconds[b])]  # noqa: E731
    return {"hooked": ratio("hooked", "unhooked"), "hooked_per_call": ratio("hooked_per_call", "unhooked"),
            "hookpoints": ratio("unhooked", "no_hookpoints")}


def format_report(report: dict[str, Any]) -> str:
    """A table of forward passes/s and overheads per scale and batch size."""
    lines = [f"ImpalaPolicy forward passes/s, {report['image_size']}×{report['image_size']} input, "
             f"torch threads {report['threads']}, medians of {report['repeats']} repeats of per-forward timings "
             f"taken in turns; "
             f"hooks: cache + add at {LAYER}",
             f"{'scale':>5} {'batch':>5} {'no HookPoints':>14} {'unhooked':>10} {'hooked':>10} {'hooked/call':>12} "
             f"{'HookPoints':>11} {'hooked':>8} {'per call':>9}   {'CPU time:':>9} {'HookPoints':>10} {'hooked':>8} "
             f"{'per call':>9}",
             f"{'':>5} {'':>5} {'':>14} {'':>10} {'':>10} {'':>12} {'overhead':>11} {'overhead':>8} {'overhead':>9}"
             f"   {'':>9} {'overhead':>10} {'overhead':>8} {'overhead':>9}"]
    for row in report["rows"]:
        rates, over, cpu = row["forwards_per_sec"], row["overhead"], row["overhead_cpu"]
        lines.append(f"{row['scale']:>5} {row['batch']:>5} {rates['no_hookpoints']:>14,.1f} "
                     f"{rates['unhooked']:>10,.1f} {rates['hooked']:>10,.1f} {rates['hooked_per_call']:>12,.1f} "
                     f"{over['hookpoints']:>+11.1%} {over['hooked']:>+8.1%} {over['hooked_per_call']:>+9.1%}   "
                     f"{'':>9} {cpu['hookpoints']:>+10.1%} {cpu['hooked']:>+8.1%} {cpu['hooked_per_call']:>+9.1%}")
    lines.append("the parts alone (fastest CPU timings over the fastest unhooked forward; a lower bound):")
    lines.append(f"{'scale':>5} {'batch':>5} {'forward us':>11} {'HookPoints us':>14} {'hook fire us':>13} "
                 f"{'hooked() us':>12} {'HookPoints':>11} {'hooked':>8} {'per call':>9}")
    for row in report["rows"]:
        parts, share = row["component_us"], row["overhead_from_parts"]
        forward = min(row["cpu_seconds_per_forward"]["unhooked"]) * 1e6
        lines.append(f"{row['scale']:>5} {row['batch']:>5} {forward:>11,.0f} {parts['hookpoint_calls']:>14.1f} "
                     f"{parts['hook_fire']:>13.1f} {parts['context']:>12.1f} {share['hookpoints']:>+11.1%} "
                     f"{share['hooked']:>+8.1%} {share['hooked_per_call']:>+9.1%}")
    worst = {kind: max(max(row[kind]["hooked"], row[kind]["hooked_per_call"]) for row in report["rows"])
             for kind in ("overhead", "overhead_cpu", "overhead_from_parts")}
    verdict = lambda value: "met" if value <= TARGET_OVERHEAD else "MISSED"  # noqa: E731
    lines.append(f"worst hook overhead (target <= {TARGET_OVERHEAD:.0%}): {worst['overhead']:+.1%} wall time "
                 f"({verdict(worst['overhead'])}), {worst['overhead_cpu']:+.1%} CPU time "
                 f"({verdict(worst['overhead_cpu'])}; counts both threads' work unless --threads 1), {worst['overhead_from_parts']:+.1%} from the parts "
                 f"({verdict(worst['overhead_from_parts'])}); load average "
                 f"{report['load_average']['before']:.2f} before, {report['load_average']['after']:.2f} after")
    return "\n".join(lines)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every scale × batch size; the report format_report prints."""
    import torch

    from shardlab.trainers.config import ConfigError

    if min(args.scales) < 1 or min(args.batch_sizes) < 1 or args.repeats < 1 or args.min_time <= 0:
        raise ConfigError("--scales, --batch-sizes and --repeats must be >= 1 and --min-time > 0")
    if args.image_size < 8:
        raise ConfigError(f"--image-size must be >= 8, got {args.image_size}")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows = []
    for scale in args.scales:
        for batch in args.batch_sizes:
            print(f"[{time.strftime('%H:%M:%S')}] scale {scale}, batch {batch}", flush=True, file=sys.stderr)
            rows.append(measure_one(scale, batch, args.image_size, args.repeats, args.min_time))
    return {"benchmark": "interp", "image_size": args.image_size, "repeats": args.repeats,
              "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
              "layer": LAYER, "rows": rows, "target_overhead": TARGET_OVERHEAD,
              "load_average": {"before": load_before, "after": os.getloadavg()[0]}}


def run(args: argparse.Namespace) -> int:
    """Time hooked against unhooked forward passes, interleaved."""
    report = measure(args)
    return finish_report(format_report(report), report, args.json)
