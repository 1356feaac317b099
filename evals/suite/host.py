"""Where an eval ran, for results.json: torch version, device and the host's CPU.

Numbers from two machines can differ in the last digits (kernels, thread counts), so a baseline
comparison that finds a small change can be checked against these fields.
"""

from __future__ import annotations

import os
import platform
from typing import Any, Optional

import torch


def cpu_model() -> Optional[str]:
    """The CPU's marketing name (``model name`` in /proc/cpuinfo on Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def host_info(device: torch.device) -> dict[str, Any]:
    """results.json's provenance fields: ``torch_version``, ``device_name`` and ``host`` (machine,
    processor, CPU model, CPU count, OS, Python)."""
    device = torch.device(device)
    info: dict[str, Any] = {"torch_version": torch.__version__}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda_version"] = torch.version.cuda
    else:
        info["device_name"] = cpu_model()
    info["host"] = {"machine": platform.machine(), "processor": platform.processor() or None,
                    "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
                    "system": f"{platform.system()} {platform.release()}".strip(),
                    "python": platform.python_version()}
    return info
