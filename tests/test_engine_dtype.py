"""The embedded engine runs bfloat16 only where the CPU computes it natively; anything else gets float32."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.stack.engine import engine_dtype
from serving.settings import ServingSettings

AVX2 = "flags\t\t: fpu vme sse sse2 avx avx2 fma\n"
AVX512_BF16 = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"


@pytest.mark.parametrize(("cpuinfo", "expected"), [
    (AVX2 * 2, "float32"),  # emulated bfloat16 served at a tenth of float32's rate
    (AVX512_BF16 * 2, "bfloat16"),
    ("processor\t: 0\n", "float32"),  # no flags line: never risk emulation
])
def test_auto_follows_the_cpu_flags(tmp_path: Path, cpuinfo: str, expected: str) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert engine_dtype(ServingSettings(_env_file=None), path) == expected  # type: ignore[call-arg]


def test_an_explicit_dtype_wins_and_an_unreadable_cpuinfo_means_float32(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(AVX2)
    assert engine_dtype(ServingSettings(_env_file=None, engine_dtype="bfloat16"), path) == "bfloat16"  # type: ignore[call-arg]
    assert engine_dtype(ServingSettings(_env_file=None), tmp_path / "missing") == "float32"  # type: ignore[call-arg]
