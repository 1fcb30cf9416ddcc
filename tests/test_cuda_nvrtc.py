"""Every CUDA source compiles with NVRTC for sm_80 and sm_90 without register spills (no GPU needed).

Needs the ``nvrtc`` extra: ``pip install 'cuda-bindings>=13,<14' 'nvidia-cuda-nvrtc>=13,<14'``.
Compile times are printed by ``python -m xpcnn.kernels.cuda.nvrtc_check``, not asserted here.
"""

from __future__ import annotations

import pytest

from xpcnn.kernels.cuda import SOURCES, nvrtc_check, shim, source


@pytest.fixture(scope="module")
def nvrtc() -> object:
    try:
        return nvrtc_check.load_nvrtc()
    except nvrtc_check.NvrtcUnavailable as exc:
        pytest.skip(f"NVRTC is not installed (pip install 'xpcnn[nvrtc]'): {exc}")


@pytest.mark.parametrize("arch", nvrtc_check.ARCHS)
@pytest.mark.parametrize("name", SOURCES)
def test_source_compiles_without_spills(nvrtc: object, name: str, arch: str) -> None:
    result = nvrtc_check.compile_source(name, arch, nvrtc)
    assert result.ok, f"{name} does not compile for {arch}:\n{result.log}"
    assert result.cubin_bytes > 0
    # ptxas reported on every kernel the source defines, and none spills
    assert sorted(k.name for k in result.kernels) == sorted(shim.kernels_in(source(name)))
    assert not result.spills, f"{name} spills registers on {arch}: {result.spills}\n{result.log}"


def test_a_compile_error_is_reported(nvrtc: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvrtc_check, "source", lambda name: 'extern "C" __global__ void k() { undeclared = 1; }')
    result = nvrtc_check.compile_source("conv.cu", "sm_90", nvrtc)
    assert not result.ok and "undeclared" in result.log


def test_ptxas_report_parser_reads_spills() -> None:
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_90'\n"
           "ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 0 barriers\n")
    (report,) = nvrtc_check.parse_ptxas(log)
    assert (report.name, report.registers, report.spill_stores, report.spill_loads) == ("k", 255, 4, 12)
