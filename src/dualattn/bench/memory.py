"""Peak memory of one call.

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``
(bytes held by torch's allocator).

CPU: torch has no peak counter, so we read the kernel's resident-set
high-water mark. On Linux the mark ``VmHWM`` can be reset by writing ``5`` to
``/proc/self/clear_refs``; then ``peak = VmHWM_after - VmRSS_before``. To make
RSS follow tensor lifetimes we first switch glibc malloc to a fixed, small
mmap threshold (``mallopt(M_MMAP_THRESHOLD, 64 KiB)``) and return free heap
pages with ``malloc_trim(0)``: every tensor buffer >= 64 KiB is then its own
mapping that is unmapped on free, so memory freed by an earlier call cannot
be silently reused and hide the peak. Afterwards the threshold is set to
32 MiB (where glibc's dynamic threshold settles), so later timing runs use
normal allocator behaviour. Run each measurement in a fresh process
(``dualattn.bench.worker``) so that nothing else lives in the heap.
Where ``clear_refs`` is unavailable we fall back to ``ru_maxrss`` (never
reset; only meaningful in a fresh process) and say so in ``method``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import resource
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from dualattn.bench.timing import synchronize

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
SMALL_MMAP_THRESHOLD = 64 * 1024
DEFAULT_MMAP_THRESHOLD = 32 * 1024 * 1024


@dataclass(frozen=True)
class MemorySample:
    """Peak memory of one call.

    ``peak_bytes``: high-water mark during the call minus usage right before
    it (inputs already allocated, gradients not). ``process_peak_bytes``: the
    absolute high-water mark (whole process on CPU, whole allocator on CUDA).
    ``method``: how it was measured.
    """

    peak_bytes: int
    process_peak_bytes: int
    method: str


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def set_malloc_mmap_threshold(nbytes: int, trim_bytes: int | None = None) -> bool:
    """glibc ``mallopt(M_MMAP_THRESHOLD, n)`` and ``M_TRIM_THRESHOLD = trim_bytes`` (default
    ``2n``); False if unsupported."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)) == 1
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, int(2 * nbytes if trim_bytes is None else trim_bytes)) == 1
    return bool(ok)


def set_malloc_steady_state() -> bool:
    """For timing on CPU: keep freed memory in the process; False if unsupported.

    glibc ``M_TRIM_THRESHOLD = 2 GiB - 1`` and ``M_MMAP_THRESHOLD = 32 MiB`` (its maximum), so
    a call reuses pages that earlier calls freed instead of faulting in fresh ones: the steady
    state of a training loop, and what torch's caching allocator does on CUDA. Without it,
    round-robin timing can charge a method for page faults on memory that the previously
    timed method returned to the OS.
    """
    return set_malloc_mmap_threshold(DEFAULT_MMAP_THRESHOLD, trim_bytes=2**31 - 1)


def malloc_trim() -> bool:
    """Return free heap pages to the OS (glibc ``malloc_trim(0)``)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_bytes() -> int:
    """Current resident set size of this process (``VmRSS``), in bytes."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    return ru_maxrss_bytes()  # best effort off Linux


def ru_maxrss_bytes() -> int:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` in bytes (KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def reset_rss_peak() -> bool:
    """Reset the kernel's ``VmHWM`` for this process; False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def rss_peak_bytes() -> int:
    """``VmHWM`` (peak RSS since the last reset) in bytes, else ``ru_maxrss``."""
    kib = _status_kib("VmHWM")
    return kib * 1024 if kib is not None else ru_maxrss_bytes()


def measure_peak_memory(
    fn: Callable[..., Any],
    inputs: Sequence[Any] = (),
    *,
    device: torch.device | str | None = None,
    control_malloc: bool = True,
) -> MemorySample:
    """Run ``fn(*inputs)`` once and return its peak memory (see module docstring)."""
    if not callable(fn):
        raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    gc.collect()
    if dev.type == "cuda":
        synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        fn(*inputs)
        synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev)
        return MemorySample(peak - before, peak, "cuda-max-allocated")
    if dev.type != "cpu":
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {dev.type!r}")

    controlled = control_malloc and set_malloc_mmap_threshold(SMALL_MMAP_THRESHOLD)
    if controlled:
        malloc_trim()
    try:
        exact = reset_rss_peak()
        before = current_rss_bytes()
        fn(*inputs)
        peak = rss_peak_bytes()
    finally:
        if controlled:
            set_malloc_mmap_threshold(DEFAULT_MMAP_THRESHOLD)
    method = "rss-hwm" if exact else "ru_maxrss"
    if not controlled:
        method += "-nomallopt"
    return MemorySample(max(0, peak - before), peak, method)


def available_memory_bytes(device: torch.device | str | None = None) -> int | None:
    """Free memory: ``MemAvailable`` on CPU (Linux), free device memory on CUDA."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
