"""trainer.precision: auto picks bf16-mixed only on a CPU with AMX-BF16, and a run trains with it."""

import torch

from shardlab.trainers.config import load_config
from shardlab.trainers.precision import cpu_flags, resolve_precision
from shardlab.trainers.run import fit
from tiny_suites import MAZE_RECIPE, TINY_PPO


def test_auto_is_bf16_only_with_amx_on_the_cpu():
    amx = {"avx512f", "amx_tile", "amx_bf16"}
    assert resolve_precision("auto", "cpu", flags=amx) == "bf16-mixed"
    assert resolve_precision("auto", "cpu", flags={"avx2", "avx512f"}) == "32-true"
    assert resolve_precision("auto", "gpu", flags=amx) == "32-true"  # GPU learning parity not measured yet


def test_explicit_precision_passes_through():
    for precision in ("32-true", "bf16-mixed", "16-mixed"):
        assert resolve_precision(precision, "cpu", flags=set()) == precision


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse2 amx_bf16 avx2\n\n")
    assert cpu_flags(str(info)) == {"fpu", "sse2", "amx_bf16", "avx2"}
    assert cpu_flags(str(tmp_path / "missing")) == set()


def test_a_run_with_auto_trains_in_the_resolved_precision(tmp_path, capsys):
    cfg = load_config(MAZE_RECIPE, TINY_PPO + ["trainer.precision=auto", "trainer.total_steps=128",
                                               "trainer.accelerator=cpu", "trainer.loggers=[]"])
    expected = resolve_precision("auto", "cpu")
    seen = []
    original = torch.autocast.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("dtype"))
        original(self, *args, **kwargs)

    torch.autocast.__init__ = spy
    try:
        fit(cfg, str(tmp_path / "run"))
    finally:
        torch.autocast.__init__ = original
    assert f"trainer.precision auto: training in {expected}" in capsys.readouterr().out
    assert (torch.bfloat16 in seen) == (expected == "bf16-mixed")
