"""Reduced-precision synthesis, chosen from what the hardware does natively.

The synthesis network may run in bfloat16 or float16 while everything that is optimised (codes,
heads, noise maps), the loss and Adam's state stay float32: :func:`synthesis_generator` gives a
frozen copy of G cast to the reduced type (its fused modulated-conv op computes in its inputs'
type), and the engine casts the inputs in and the image out.

Reduced precision pays only where it is native: bfloat16 on CPUs with AVX512-BF16 or AMX-BF16
ran 1.9x faster per step here, while on an AVX2-only CPU the same pass was 28x slower (emulated
kernels). ``"auto"`` therefore picks bf16 only on such CPUs (``/proc/cpuinfo`` flags) or on a CUDA
device with bf16, fp16 on other CUDA devices, else fp32; :func:`resolve_precision` says why.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import GanInvertError
from .stylegan2 import StyleGAN2Generator

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")
_COPY_ATTRIBUTE = "_reduced_precision_copies"


@dataclass(frozen=True)
class Precision:
    """The chosen synthesis precision: its name (fp32, bf16, fp16), torch dtype and why it was chosen."""

    name: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU feature flags of the first processor in ``cpuinfo`` (empty where it is unreadable)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.split(":")[0].strip() in ("flags", "Features"):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(device: torch.device, flags: set[str] | None = None) -> bool:
    """Whether ``device`` computes bfloat16 natively (CPU flags, or the CUDA device's support)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(set(NATIVE_BF16_CPU_FLAGS) & (cpu_flags() if flags is None else flags))


def resolve_precision(requested: str, device: torch.device | str, flags: set[str] | None = None) -> Precision:
    """The precision to run: ``requested`` unless it is ``"auto"``; warns when bf16 or fp16 will be slow.

    >>> resolve_precision("fp32", "cpu").name
    'fp32'
    >>> resolve_precision("auto", "cpu", flags={"avx2"}).name
    'fp32'
    """
    if requested not in PRECISIONS:
        raise GanInvertError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    native = native_bf16(device, flags)
    if requested == "auto":
        if native:
            where = "this CUDA device" if device.type == "cuda" else "this CPU (" + "/".join(
                sorted(set(NATIVE_BF16_CPU_FLAGS) & (cpu_flags() if flags is None else flags))) + ")"
            return Precision("bf16", f"auto: {where} runs bfloat16 natively")
        if device.type == "cuda":
            return Precision("fp16", "auto: this CUDA device has no bfloat16, float16 instead")
        return Precision("fp32", "auto: this CPU has no native bfloat16 (no avx512_bf16 or amx_bf16 flag)")
    if requested == "bf16" and not native:
        warnings.warn(f"bf16 requested on {device.type} without native bfloat16: it is emulated and can be "
                      "many times slower than fp32", stacklevel=2)
    if requested == "fp16" and device.type == "cpu":
        warnings.warn("fp16 requested on the CPU: float16 convolutions are emulated there and slow", stacklevel=2)
    return Precision(requested, "requested")


def synthesis_generator(G: StyleGAN2Generator, dtype: torch.dtype) -> StyleGAN2Generator:
    """``G`` itself for float32, else a frozen copy cast to ``dtype`` (made once per G and dtype)."""
    if dtype == torch.float32:
        return G
    copies: dict[tuple[torch.dtype, torch.device], StyleGAN2Generator] = G.__dict__.setdefault(_COPY_ATTRIBUTE, {})
    key = (dtype, G.w_avg.device)
    if key not in copies:
        reduced = copy.deepcopy(G)
        reduced.__dict__.pop(_COPY_ATTRIBUTE, None)
        copies[key] = reduced.to(dtype).requires_grad_(False).eval()
    return copies[key]
