"""The roofline model: is a kernel limited by arithmetic or by memory traffic?
(Williams, Waterman and Patterson 2009, "Roofline: an insightful visual performance model for
multicore architectures", Communications of the ACM 52(4)).

A kernel that does ``F`` floating-point operations and moves ``Q`` bytes between DRAM (on a
GPU: HBM or GDDR) and the chip needs at least ``F / peak_flops`` seconds of arithmetic and
``Q / bandwidth`` seconds of traffic. Its arithmetic intensity ``I = F / Q`` (FLOP per byte)
decides which bound bites: the attainable rate is ``min(peak_flops, I * bandwidth)``. The
*ridge point* ``peak_flops / bandwidth`` separates memory-bound kernels (left of it: softmax,
vector add, every elementwise op) from compute-bound ones (right of it: large matrix products).

:data:`PEAKS` lists published peak numbers of the GPUs Colab offers; :func:`copy_bandwidth`
measures what a plain copy achieves on the machine at hand, CPU included.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Peak:
    """Published peak numbers of one GPU (dense, no structured sparsity)."""

    name: str
    compute_capability: tuple[int, int]
    fp32_tflops: float  # plain FP32 on the CUDA cores
    tensor_tflops: float  # FP16 (and BF16 where supported) on tensor cores, FP32 accumulate
    bandwidth_gbs: float  # DRAM bandwidth, GB/s (10^9 bytes per second)
    memory_gb: int
    source: str

    def ridge(self, tensor_cores: bool = False) -> float:
        """FLOP per byte where the memory roof meets the compute roof."""
        return ridge(self.tensor_tflops if tensor_cores else self.fp32_tflops, self.bandwidth_gbs)


PEAKS = {
    "T4": Peak("T4", (7, 5), 8.1, 65.0, 320.0, 16, "NVIDIA T4 Tensor Core GPU datasheet (2019); FP16 only, no BF16"),
    "L4": Peak("L4", (8, 9), 30.3, 121.0, 300.0, 24, "NVIDIA L4 Tensor Core GPU datasheet (2023); 242 TFLOPS "
                                                      "FP16/BF16 is with 2:4 sparsity, 121 dense"),
    "A100": Peak("A100", (8, 0), 19.5, 312.0, 1555.0, 40, "NVIDIA A100 Tensor Core GPU datasheet (2021), 40 GB "
                                                          "SXM4; the 80 GB SXM4 has 2039 GB/s"),
    "H100": Peak("H100", (9, 0), 67.0, 989.0, 3350.0, 80, "NVIDIA H100 Tensor Core GPU datasheet (2023), SXM5; "
                                                          "1979 TFLOPS FP16/BF16 is with sparsity"),
}


def ridge(peak_tflops: float, bandwidth_gbs: float) -> float:
    """Ridge point in FLOP per byte: ``peak / bandwidth``."""
    return peak_tflops * 1e12 / (bandwidth_gbs * 1e9)


def attainable_tflops(intensity: float, peak_tflops: float, bandwidth_gbs: float) -> float:
    """The roofline: ``min(peak, intensity * bandwidth)`` in TFLOP/s for ``intensity`` FLOP per byte."""
    if intensity < 0:
        raise ValueError(f"intensity must be >= 0 FLOP/byte, got {intensity}")
    return min(peak_tflops, intensity * bandwidth_gbs * 1e9 / 1e12)


def peak_for(device_name: str) -> Peak | None:
    """The :data:`PEAKS` row for a device name as ``torch.cuda.get_device_name()`` gives it
    (``"Tesla T4"``, ``"NVIDIA A100-SXM4-40GB"``), or ``None`` when it is not listed (the
    H100 PCIe and NVL have other clocks and memory than the SXM5 row). An A100 80GB gets the
    A100 row with its faster memory (2039 GB/s SXM4, 1935 GB/s PCIe)."""
    words = device_name.upper().replace("-", " ").split()
    for key, peak in PEAKS.items():
        if key in words:
            if key == "H100" and ("PCIE" in words or "NVL" in words):
                return None  # other memory, clocks
            if key == "A100" and "80GB" in words:  # HBM2e: faster memory, same arithmetic (A100 datasheet)
                pcie = "PCIE" in words
                return replace(peak, name="A100 80GB", bandwidth_gbs=1935.0 if pcie else 2039.0, memory_gb=80,
                               source=f"NVIDIA A100 Tensor Core GPU datasheet (2021), 80 GB {'PCIe' if pcie else 'SXM4'}")
            return peak
    return None


def time_fn(fn: Callable[[], object], device: torch.device | str, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds. On a GPU the clock is read with CUDA events
    around each call (kernels run asynchronously); on the CPU with ``time.perf_counter``."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: torch.device | str, n_bytes: int | None = None, repeats: int = 10) -> float:
    """Measured GB/s of ``dst.copy_(src)``: each byte is read once and written once, so the
    traffic is ``2 * n_bytes``. The arrays are larger than the caches (256 MiB each on a GPU,
    128 MiB on a CPU) so the number is DRAM bandwidth, not cache bandwidth."""
    device = torch.device(device)
    if n_bytes is None:
        n_bytes = 2**28 if device.type == "cuda" else 2**27
    src = torch.ones(n_bytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = time_fn(lambda: dst.copy_(src), device, repeats=repeats)
    return 2 * src.numel() * 4 / seconds / 1e9


def matmul_tflops(device: torch.device | str, n: int | None = None, dtype: torch.dtype | None = None,
                  repeats: int = 5) -> float:
    """Measured TFLOP/s of an ``n x n`` by ``n x n`` matrix product (``2 n^3`` FLOPs): a practical
    compute roof. Defaults: ``n = 4096`` in float16 (tensor cores) on a GPU, ``n = 1024`` in
    float32 on a CPU."""
    device = torch.device(device)
    gpu = device.type == "cuda"
    n = n or (4096 if gpu else 1024)
    dtype = dtype or (torch.float16 if gpu else torch.float32)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    seconds = time_fn(lambda: a @ b, device, repeats=repeats, warmup=1)
    return 2 * n**3 / seconds / 1e12
