"""Process-level speed settings: glibc malloc tuning is opt-in and takes effect."""

import platform
import subprocess
import sys
import textwrap

import pytest


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt exists only in glibc")
def test_tune_malloc_keeps_freed_blocks_in_the_heap():
    # With the default dynamic threshold a fresh 8 MiB block is mmap-ed (sbrk does not move);
    # after tuning it comes from the heap, so the program break grows by at least its size.
    script = textwrap.dedent("""
        import ctypes, sys
        libc = ctypes.CDLL("libc.so.6")
        libc.sbrk.restype = ctypes.c_void_p
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        if sys.argv[1] == "tuned":
            from xpcnn.perf import tune_malloc
            assert tune_malloc() == {"mmap_threshold": 32 << 20, "trim_threshold": 1 << 30, "top_pad": 64 << 20}
        before = libc.sbrk(0)
        block = libc.malloc(8 << 20)
        print(libc.sbrk(0) - before)
    """)
    grown = {mode: int(subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                                      check=True).stdout) for mode in ("plain", "tuned")}
    assert grown["plain"] < (8 << 20)
    assert grown["tuned"] >= (8 << 20)


def test_importing_xpcnn_does_not_tune_malloc():
    import xpcnn.perf

    out = subprocess.run([sys.executable, "-c", "import xpcnn, xpcnn.cli, xpcnn.perf; print(xpcnn.perf._applied)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "None"
    assert hasattr(xpcnn.perf, "tune_malloc")
