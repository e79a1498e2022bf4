"""Compute precision chosen by what the hardware does well, never by assumption.

    precision = choose_precision(params.compute.precision)   # "auto" | "bf16" | "fp32"
    precision.record()  # -> {"precision": "fp32", "dtype": "float32", "autocast_bf16": false, "reason": ...}

- CUDA with bf16 support: bf16 weights (TRL's `bf16=True`);
- a CPU with native bf16 (`avx512_bf16` or `amx_bf16` in /proc/cpuinfo) whose bf16 matmul
  is confirmed not slower than fp32 by a micro-benchmark of about 0.2 s: fp32 weights with
  bf16 autocast;
- anything else: fp32. On a CPU without native bf16 (AVX2 only, most laptops), bf16 is
  emulated: a matmul ran at 0.9 GFLOP/s against 132 in fp32, and a DPO step took 124-168 s
  instead of 6-10 s.
Forcing `bf16` where it is slow is honoured, with one warning line naming the slowdown.
The capability and the matmul measurement can be injected, so every branch is testable on
any machine.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Requested = Literal["auto", "bf16", "fp32"]
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# bf16 must reach this share of the fp32 matmul rate to count as native (flags can lie
# under some hypervisors; a real AVX512_BF16/AMX unit runs bf16 at 1.5-3x fp32).
MIN_BF16_SPEEDUP = 0.9


@dataclass(frozen=True)
class Capability:
    """What the machine offers, as detected (or injected by a test)."""

    cuda: bool
    cuda_bf16: bool
    cpu_flags: frozenset[str] = field(default_factory=frozenset)
    torch_cpu_capability: str = "unknown"

    @property
    def cpu_native_bf16(self) -> bool:
        return any(f in self.cpu_flags for f in NATIVE_BF16_FLAGS)


@dataclass(frozen=True)
class Precision:
    """The precision a torch stage runs in, and why."""

    requested: str
    precision: Literal["bf16", "fp32"]
    device: Literal["cuda", "cpu"]
    dtype: Literal["bfloat16", "float32"]  # dtype of the frozen weights
    autocast_bf16: bool  # CPU: fp32 weights, matmuls under torch.autocast("cpu", bfloat16)
    reason: str
    cpu_capability: str
    matmul_gflops: dict[str, float] | None = None

    def record(self) -> dict[str, Any]:
        """For metrics/train.json and the usage files."""
        return asdict(self)

    @property
    def states_key(self) -> str:
        """What a stored activation depends on: device, weight dtype and autocast (frozen-layer states)."""
        return f"{self.device}:{self.dtype}{':bf16-autocast' if self.autocast_bf16 else ''}"

    @property
    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def detect_capability() -> Capability:
    import torch

    cuda = torch.cuda.is_available()
    return Capability(
        cuda=cuda,
        cuda_bf16=bool(cuda and torch.cuda.is_bf16_supported()),
        cpu_flags=read_cpu_flags(),
        torch_cpu_capability=str(torch.backends.cpu.get_cpu_capability()),
    )


def measure_matmul_gflops(seconds: float = 0.1, size: int = 256) -> dict[str, float]:
    """fp32 and bf16 matmul rates on this CPU, about `seconds` each (0.2 s in all)."""
    import torch

    rates: dict[str, float] = {}
    for name in ("float32", "bfloat16"):
        a = torch.randn(size, size, dtype=getattr(torch, name))
        b = torch.randn(size, size, dtype=getattr(torch, name))
        torch.mm(a, b)  # warm-up
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            torch.mm(a, b)
            n += 1
        rates[name] = round(2 * size**3 * n / elapsed / 1e9, 2)
    return rates


def choose_precision(
    requested: Requested = "auto",
    capability: Capability | None = None,
    measure: Callable[[], dict[str, float]] = measure_matmul_gflops,
    warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> Precision:
    cap = capability or detect_capability()
    base = {"requested": requested, "cpu_capability": cap.torch_cpu_capability}

    if cap.cuda:
        if requested == "fp32":
            return Precision(**base, precision="fp32", device="cuda", dtype="float32", autocast_bf16=False, reason="fp32 requested")
        if cap.cuda_bf16:
            return Precision(**base, precision="bf16", device="cuda", dtype="bfloat16", autocast_bf16=False,
                             reason="CUDA device supports bf16")  # fmt: skip
        if requested == "bf16":
            warn("warning: compute.precision is bf16 but this CUDA device has no bf16 support; using fp32")
        return Precision(**base, precision="fp32", device="cuda", dtype="float32", autocast_bf16=False,
                         reason="CUDA device without bf16 support")  # fmt: skip

    if requested == "fp32":
        return Precision(**base, precision="fp32", device="cpu", dtype="float32", autocast_bf16=False, reason="fp32 requested")
    rates = measure()
    speedup = rates["bfloat16"] / rates["float32"] if rates.get("float32") else 0.0
    rate_text = f"bf16 matmul {rates['bfloat16']:.1f} GFLOP/s vs fp32 {rates['float32']:.1f}"
    native = cap.cpu_native_bf16 and speedup >= MIN_BF16_SPEEDUP
    if requested == "bf16":
        if not native:
            warn(f"warning: compute.precision is bf16 but this CPU has no native bf16 ({rate_text}: "
                 f"{1 / max(speedup, 1e-9):.0f}x slower); set compute.precision: auto")  # fmt: skip
        return Precision(**base, precision="bf16", device="cpu", dtype="float32", autocast_bf16=True,
                         reason=f"bf16 requested ({rate_text})", matmul_gflops=rates)  # fmt: skip
    if native:
        return Precision(**base, precision="bf16", device="cpu", dtype="float32", autocast_bf16=True,
                         reason=f"CPU has native bf16 ({rate_text})", matmul_gflops=rates)  # fmt: skip
    why = "CPU flags show no avx512_bf16/amx_bf16" if not cap.cpu_native_bf16 else "bf16 flags present but bf16 matmul is slow"
    return Precision(**base, precision="fp32", device="cpu", dtype="float32", autocast_bf16=False,
                     reason=f"{why} ({rate_text})", matmul_gflops=rates)  # fmt: skip


def bf16_matmul_weights(model: Any) -> int:
    """Store the frozen `nn.Linear` weights of `model` in bf16, for CPU bf16 autocast; returns how many.

    Under `torch.autocast("cpu", bfloat16)` a linear layer casts its fp32 weight to bf16 on
    every call; autocast caches the cast only for weights that require grad. Frozen
    weights (the DPO base, the reference, every answer-stage model) were therefore re-cast
    at every forward: for a decode step, the whole model read and written to multiply a few
    dozen rows. Cast once here, the matmuls get the same bf16 operands (the same
    round-to-nearest-even of the same fp32 weights), so their results are bit-identical.
    Trainable weights (LoRA's) keep fp32 master weights. Embeddings, norms and biases stay
    fp32, as under autocast; a frozen linear layer that shares its weight with the input
    embedding (a tied LM head) gets its own bf16 copy, so the embedding lookup stays fp32.
    Freeze an inference model first (`model.requires_grad_(False)`); call it on a DPO model
    after PEFT has wrapped it, so LoRA's initial weights are not rounded through bf16.
    """
    import torch

    embedding = model.get_input_embeddings().weight
    n = 0
    for module in model.modules():
        weight = module.weight if isinstance(module, torch.nn.Linear) else None
        if weight is None or weight.requires_grad or weight.dtype == torch.bfloat16:
            continue
        if weight is embedding:
            module.weight = torch.nn.Parameter(embedding.detach().to(torch.bfloat16), requires_grad=False)
        else:
            weight.data = weight.data.to(torch.bfloat16)
        n += 1
    return n
