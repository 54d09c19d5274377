"""Issue 36: `--precision auto` on a CPU is bf16 only where the CPU computes bf16 natively (AMX, AVX512-BF16) and
the model's bf16 was measured to agree with fp32; a run says which precision it uses, and why, in its first line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import sanasr_cli.models.precision as precision
from tests.helpers import photo_folder, run

TORCH_THREADS = 1


def test_auto_is_bf16_on_a_cpu_only_with_native_bf16_and_a_model_whose_bf16_agrees(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: None)
    dtype, why = precision.auto_precision(cpu, bf16_agrees=True)
    assert dtype == torch.float32 and "no native bf16" in why
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: "AMX")
    dtype, why = precision.auto_precision(cpu, bf16_agrees=True)
    assert dtype == torch.bfloat16 and "AMX" in why
    assert precision.auto_precision(cpu, bf16_agrees=False)[0] == torch.float32
    assert precision.auto_precision(torch.device("cuda"), bf16_agrees=False)[0] == torch.bfloat16


@pytest.mark.skipif(not (sys.platform == "linux" and Path("/proc/cpuinfo").is_file()), reason="reads /proc/cpuinfo")
def test_native_bf16_is_what_the_cpu_reports():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    if not flags:
        pytest.skip("no x86 flags line")
    assert (precision.cpu_native_bf16() is not None) == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


def test_upscale_says_its_precision_and_why_first(tmp_path):
    src = photo_folder(tmp_path / "in", 1, size=(12, 16))
    result = run("upscale", src, "-o", tmp_path / "out", "--model", "tiny")
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("precision: fp32 (auto: "), first  # tiny's bf16 is not checked: fp32 on any CPU
    assert "no native bf16" in first or "not checked" in first
    result = run("upscale", src, "-o", tmp_path / "out2", "--model", "tiny", "--precision", "bf16")
    assert result.exit_code == 0 and result.output.splitlines()[0] == "precision: bf16 (--precision)"
