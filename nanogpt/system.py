"""Choosing the device, the number format and whether to compile, for the machine at hand."""

import contextlib
import ctypes
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from nanogpt.errors import SettingError, UnavailableError


def resolve_device(name):
    """'auto' -> the best device present: cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = name.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise UnavailableError(
            f"device {name!r} asked for, but this PyTorch sees no CUDA GPU; use --device=cpu or --device=auto"
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UnavailableError(
            f"device {name!r} asked for, but MPS is not available here; use --device=cpu or --device=auto"
        )
    if kind not in ("cpu", "cuda", "mps"):
        raise SettingError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return name


def resolve_dtype(name, device, quantize="none"):
    """'auto' -> bfloat16 on GPUs that support it, float16 on older GPUs, float32 elsewhere.

    Half precision on the CPU is slower than float32 on most processors, so 'auto' keeps float32 there,
    except under int8 weights (--quantize=int8): PyTorch's CPU int8 kernel is fast with bfloat16
    inputs and slower than float32's matmul with float32 ones (bench/cpu_generate.py).
    """
    if name == "auto":
        if device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "bfloat16" if quantize == "int8" else "float32"
    if name not in ("float32", "bfloat16", "float16"):
        raise SettingError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
    return name


def autocast_context(device, dtype):
    """Mixed precision for the forward pass; a no-op for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    device_type = device.split(":")[0]
    return torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))


def keep_freed_memory():
    """Let the CPU memory a training step frees stay in the process for the next step (Linux, glibc).

    glibc's malloc takes blocks of more than a few MB from the kernel as fresh mappings and unmaps them
    when they are freed, so every step faults its activations in again page by page, each page zeroed by
    the kernel: for the 6 x 384 char model on the CPU, 300,000 to 400,000 page faults a step, which made
    it 1.15x slower (bench/cpu_speedups.py). With mmap off, large blocks come from the heap and go back
    to it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # another C library: its malloc is left as it is
        return
    m_trim_threshold, m_mmap_max = -1, -4  # option numbers from glibc's malloc.h
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 1 << 30)  # nor give the heap's free top back below 1 GB


def reset_peak_memory(device):
    """Start measuring peak memory from now: torch's allocator on CUDA, the resident set on the CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    elif sys.platform.startswith("linux"):
        Path("/proc/self/clear_refs").write_text("5")  # restarts VmHWM from the current size


def current_memory_mb(device):
    """Memory in use now, as peak_memory_mb counts it: torch's allocated bytes on CUDA, the resident set
    on the CPU (Linux; NaN elsewhere), in MiB."""
    if device.startswith("cuda"):
        return torch.cuda.memory_allocated() / 2**20
    return process_status_mb("VmRSS")


def peak_memory_mb(device):
    """Peak since reset_peak_memory(): torch's allocated bytes on CUDA, the resident set size on the CPU
    (Linux; NaN elsewhere), in MiB."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return process_status_mb("VmHWM")


def process_status_mb(key):
    """A memory figure of /proc/self/status (VmRSS, VmHWM) in MiB; NaN where there is none."""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.is_file() else []:
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def check_attention_kernel(name, device):
    """attention= names a CUDA kernel: refused elsewhere, before anything loads."""
    if name != "auto" and not device.startswith("cuda"):
        raise SettingError(f"attention={name!r} picks among CUDA attention kernels; leave it 'auto' on {device}")


@contextlib.contextmanager
def attention_kernel(name):
    """Keep training's attention on one CUDA kernel inside the block ('auto': torch's own order, which
    on Hopper in torch 2.11 tries cuDNN first); torch's choice is a process-wide flag, put back after.
    The math kernel stays on as the fallback for shapes the chosen one cannot take."""
    if name == "auto":
        yield
        return
    backends = torch.backends.cuda
    before = (backends.flash_sdp_enabled(), backends.cudnn_sdp_enabled(), backends.mem_efficient_sdp_enabled())
    backends.enable_flash_sdp(name == "flash")
    backends.enable_cudnn_sdp(name == "cudnn")
    backends.enable_mem_efficient_sdp(name == "efficient")
    try:
        yield
    finally:
        for enable, value in zip(
            (backends.enable_flash_sdp, backends.enable_cudnn_sdp, backends.enable_mem_efficient_sdp), before
        ):
            enable(value)


def bfloat16_matmul_speed(device):
    """How many times faster a bfloat16 matmul runs here than a float32 one. On CUDA taken from the card
    (2.0 where it has bfloat16, else 0); on a CPU measured, 256 x 256 matmuls of each in turn, seven
    rounds, the fastest of each (a few milliseconds; taking turns keeps another process's burst from
    landing on one side only). CPUs without AVX-512 BF16 or AMX emulate bfloat16, 10 to 50 times slower."""
    if device.startswith("cuda"):
        return 2.0 if torch.cuda.is_bf16_supported() else 0.0
    a = torch.randn(256, 256, device=device)
    operands = {dtype: a.to(dtype) for dtype in (torch.float32, torch.bfloat16)}
    fastest = {}
    for x in operands.values():
        x @ x  # warm-up: thread pool, kernel choice
    for _ in range(7):
        for dtype, x in operands.items():
            t0 = time.perf_counter()
            x @ x
            fastest[dtype] = min(fastest.get(dtype, float("inf")), time.perf_counter() - t0)
    return fastest[torch.float32] / fastest[torch.bfloat16]


def check_fp8(device, dtype):
    """fp8=True's needs, refused in one sentence each before anything loads."""
    if not device.startswith("cuda") or torch.cuda.get_device_capability(device) < (8, 9):
        where = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"device {device!r}"
        raise UnavailableError(
            "fp8=True needs an NVIDIA GPU with float8 matmuls (compute capability 8.9 or later: Ada, "
            f"Hopper), not {where}; leave fp8 off"
        )
    if dtype != "bfloat16":
        raise SettingError(
            f"fp8=True runs the rest of the model in bfloat16; use --dtype=bfloat16 (or auto), not {dtype}"
        )
    if importlib.util.find_spec("torchao") is None:
        raise UnavailableError("fp8=True needs torchao 0.17 or later: pip install torchao (or pip install -e '.[fp8]')")


def float8_training(model):
    """Swap the Linear layers inside the blocks for torchao's Float8Linear: their matmuls run in float8
    (e4m3 forward, e5m2 gradients, one scale per tensor) and their weights stay as they are, so
    checkpoints do not change. Embeddings and the output head stay in bfloat16 (torchao's own example
    leaves the last layer out too), and so do layers with a side not a multiple of 16, which float8
    GEMMs need.
    Returns how many layers were swapped."""
    from torchao.float8 import convert_to_float8_training

    def in_blocks(module, name):
        return name.startswith("transformer.h.") and module.in_features % 16 == 0 and module.out_features % 16 == 0

    before = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    convert_to_float8_training(model, module_filter_fn=in_blocks)
    return before - sum(type(m) is torch.nn.Linear for m in model.modules())


def compile_model(model, compile_flag, device):
    """torch.compile where it pays off: by default on CUDA only (on the CPU the start-up cost of
    compiling outweighs the gain for the small models people train there). Falls back to eager with a
    one-line warning where the compiler backend is missing: Triton on GPUs (e.g. on Windows), a C++
    compiler on CPUs (torch.compile would otherwise fail at the first step)."""
    device_type = device.split(":")[0]
    if compile_flag is None:
        compile_flag = device_type == "cuda"
    if not compile_flag:
        return model
    missing = None
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            missing = "Triton is not installed"
    elif device_type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler
        from torch._inductor.exc import InvalidCxxCompiler

        try:
            get_cpp_compiler()
        except InvalidCxxCompiler:
            missing = "no C++ compiler was found (install g++ or clang++, or set CXX)"
    if missing:
        print(f"warning: compile=True but {missing}; running without torch.compile", file=sys.stderr)
        return model
    return torch.compile(model)


# Dense matmul peak, in FLOPS, of the GPUs people train on, for the MFU estimate. Bfloat16 / float16
# tensor-core figures without sparsity, from the vendors' data sheets.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,  # listed before "H100": the first name found in the device's name wins
    "H100": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L4": 121e12,
    "V100": 125e12,
    "T4": 65e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def measured_cpu_peak_flops():
    """The float32 matmul FLOPS this CPU reaches with torch's thread count: CPUs have no datasheet
    figure that means much, so a 2048 x 2048 matmul is timed once (about a second) and the result
    cached per CPU model, thread count and torch version in ~/.cache/nanogpt/."""
    key = f"{cpu_name()} | {torch.get_num_threads()} threads | torch {torch.__version__}"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nanogpt" / "cpu_peak_flops.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        n = 2048
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(2):
            a @ b  # warm-up: thread pool, caches
        best = 0.0
        for _ in range(5):
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
        known[key] = best
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(known, indent=1))
        except OSError:
            pass  # a read-only home only costs a re-measurement next time
    return known[key]


def peak_flops(device):
    """Peak FLOPS of the device in use: the datasheet figure of known GPUs, the measured matmul
    rate of a CPU, or None (unlisted GPUs, MPS)."""
    if device == "cpu":
        return measured_cpu_peak_flops()
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_FLOPS.items():
        if key in name:
            return flops
    return None
