"""What the benchmarks share: progress lines, JSON reports, and the iteration and phase clocks."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Optional

if TYPE_CHECKING:  # torch is imported inside the functions, after argument parsing
    import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXIT_OK, EXIT_BAD_INPUT = 0, 2


def write_json_report(path: str, report: dict[str, Any]) -> None:
    """Write a benchmark's numbers as JSON (folders created) and say where."""
    from shardlab.atomic import write_json

    write_json(path, report, make_parents=True)
    progress(f"wrote {path}")


def finish_report(table: str, report: dict[str, Any], json_path: Optional[str]) -> int:
    """Print a benchmark's table, write its JSON report when asked (``--json``), return EXIT_OK."""
    print(table)
    if json_path:
        write_json_report(json_path, report)
    return EXIT_OK


def progress(message: str) -> None:
    """One progress line on stderr, so a long run shows it is alive without cluttering stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Measurement:
    """Timings of one measurement: the timed window and a per-phase breakdown of it."""

    name: str
    repeat: int
    env_steps: int  # env steps (or their network-only equivalent) in the timed window
    seconds: float
    cpu_seconds: float  # process CPU time in the window, all threads
    warmup_seconds: float
    iteration_seconds: list[float] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase over the window
    notes: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Env steps per second over the timed window."""
        return self.env_steps / self.seconds

    def to_json(self) -> dict:
        """Plain JSON-able dict including the rate and CPU use."""
        return {**asdict(self), "env_steps_per_sec": self.rate, "cores_used": self.cpu_seconds / self.seconds}


class IterationClock:
    """Marks iteration boundaries (wall and CPU time) and prints a progress line for each."""

    def __init__(self, name: str, warmup: int, iterations: int, steps_per_iteration: int,
                 device: "torch.device"):
        self.name, self.warmup, self.iterations = name, warmup, iterations
        self.steps_per_iteration, self.device = steps_per_iteration, device
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def start(self) -> None:
        """Mark the start of the first (warm-up) iteration."""
        self._mark()

    def end_iteration(self) -> None:
        """Mark the end of an iteration and report it."""
        self._mark()
        done = len(self.wall) - 1
        seconds = self.wall[-1] - self.wall[-2]
        if done <= self.warmup:
            progress(f"{self.name}: warm-up iteration {done}/{self.warmup} took {seconds:.1f} s")
        else:
            progress(f"{self.name}: iteration {done - self.warmup}/{self.iterations} took {seconds:.1f} s "
                     f"({self.steps_per_iteration / seconds:,.0f} env steps/s)")

    def _mark(self) -> None:
        import torch
        if self.device.type == "cuda":  # kernels are async; a boundary means the work is done
            torch.cuda.synchronize(self.device)
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def measurement(self, repeat: int, phases: dict[str, float], notes: dict[str, float] | None = None
                    ) -> Measurement:
        """The timed window (after the warm-up) as a :class:`Measurement`."""
        w = self.warmup
        if len(self.wall) != w + self.iterations + 1:
            raise RuntimeError(f"{self.name}: saw {len(self.wall) - 1} iterations, expected "
                               f"{w + self.iterations}")
        return Measurement(
            name=self.name, repeat=repeat, env_steps=self.steps_per_iteration * self.iterations,
            seconds=self.wall[-1] - self.wall[w], cpu_seconds=self.cpu[-1] - self.cpu[w],
            warmup_seconds=self.wall[w] - self.wall[0],
            iteration_seconds=[b - a for a, b in zip(self.wall[w:], self.wall[w + 1:])],
            phases=phases, notes=notes or {})


class PhaseTimer:
    """Accumulates wall seconds per named phase, counting only the timed (post-warm-up) iterations."""

    def __init__(self, device: "torch.device"):
        self.device = device
        self.totals: dict[str, float] = {}
        self.counting = False

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        """Time the enclosed block as ``phase``."""
        import torch
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            if self.counting:
                self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - start
