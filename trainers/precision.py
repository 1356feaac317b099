"""``trainer.precision: auto``: bf16-mixed where it was measured to train faster at equal learning
(a CPU with AMX-BF16 matrix units), float32 everywhere else.

Why not always bf16: on a CPU without native bf16 arithmetic autocast emulates it and runs slower
than float32, and on GPUs this project has not yet measured learning parity.
"""

from __future__ import annotations

AUTO = "auto"
FAST_CPU_FLAG = "amx_bf16"  # Linux /proc/cpuinfo flag of the AMX bf16 tile unit


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def uses_cpu(accelerator: str) -> bool:
    """Whether Lightning will train on the CPU for this ``trainer.accelerator``."""
    if accelerator == "cpu":
        return True
    if accelerator != "auto":
        return False
    import torch  # only here: reading a config must not import torch

    return not (torch.cuda.is_available() or torch.backends.mps.is_available())


def resolve_precision(precision: str, accelerator: str, flags: set[str] | None = None) -> str:
    """The Lightning precision a run trains with: ``precision`` itself unless it is ``auto``."""
    if precision != AUTO:
        return precision
    if uses_cpu(accelerator) and FAST_CPU_FLAG in (cpu_flags() if flags is None else flags):
        return "bf16-mixed"
    return "32-true"


def device_precision(precision: str, device_type: str) -> str:
    """:func:`resolve_precision` for code that holds a torch device type rather than an accelerator name."""
    return resolve_precision(precision, "cuda" if device_type == "cuda" else "cpu")
