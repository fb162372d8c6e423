import pytest
import torch

from dualattn.bench.memory import measure_peak_memory, reset_rss_peak

MB = 2**20
needs_hwm = pytest.mark.skipif(not reset_rss_peak(), reason="cannot reset VmHWM (/proc/self/clear_refs)")


def _alloc(mb):
    def fn():
        t = torch.ones(mb * MB // 4)  # touched pages count in RSS
        return float(t[-1])
    return fn


@needs_hwm
def test_cpu_peak_sees_a_transient_allocation():
    m = measure_peak_memory(_alloc(64))
    assert m.method == "rss-hwm"
    assert 60 * MB <= m.peak_bytes <= 100 * MB
    assert m.process_peak_bytes >= m.peak_bytes


@needs_hwm
def test_cpu_peak_is_not_hidden_by_memory_freed_earlier():
    _alloc(96)()  # freed memory must not be silently reused by the next call
    big = measure_peak_memory(_alloc(32))
    small = measure_peak_memory(lambda: None)
    assert 28 * MB <= big.peak_bytes <= 64 * MB
    assert small.peak_bytes < 8 * MB


def test_rejects_bad_device_and_fn():
    with pytest.raises(ValueError, match="device"):
        measure_peak_memory(lambda: None, device="meta")
    with pytest.raises(TypeError, match="fn"):
        measure_peak_memory(None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_counts_allocator_bytes():
    m = measure_peak_memory(lambda: torch.ones(16 * MB // 4, device="cuda").sum(), device="cuda")
    assert m.method == "cuda-max-allocated"
    assert m.peak_bytes >= 16 * MB


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc mallopt")
@pytest.mark.parametrize("steady", [False, True])
def test_steady_state_allocator_keeps_freed_pages(steady):
    """Timing workers keep freed memory in the process, so no method pays another's page faults."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from dualattn.bench.memory import current_rss_bytes, set_malloc_steady_state\n"
        f"assert set_malloc_steady_state() if {steady} else True\n"
        "before = current_rss_bytes()\n"
        "t = torch.ones(16 * 2**20 // 4); del t\n"
        "print((current_rss_bytes() - before) / 2**20)\n"
    )
    kept_mb = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert (kept_mb > 12) == steady
