#!/usr/bin/env python
"""Speed of the generator's fast path against the reference formulation, and of a SPHInX step.

Usage::

    python bench/speed.py --quick --json   # the acceptance run: < 5 min on 2 CPU cores, JSON on stdout
    python bench/speed.py                  # full tables (64/256/1024 px, batch 1/4/8) in markdown
    python bench/speed.py --device cuda    # the same on a GPU (synchronised timings, CUDA peak memory)
    python bench/speed.py --precision      # the fp32 / bf16 table alone (~5 min on 2 CPU cores)

Everything is timed as the median of interleaved repetitions (variants take turns, so a change
of machine load hits all of them alike) after one untimed warm-up call each; progress goes to
stderr. What is measured:

* generator forward+backward with respect to the latents: w+ (``G.synthesis(ws)``), and the
  SPHInX parameterisation (heads + a fresh z+ draw + noise maps), for ``impl="fast"`` and
  ``impl="reference"`` (per-sample weights, grouped convolution, the reference code's
  zero-insertion ``upfirdn2d``), whose images must agree within 1e-4 (float32);
* LPIPS (AlexNet) forward+backward at 64 and 256 px;
* the engine's SPHInX step end to end (``ganinvert.inversion.invert``: heads, fresh draw,
  synthesis, MSE + LPIPS, backward, Adam), timed between its per-step callbacks, with LPIPS on
  64 px area-downsampled images (the overhead criterion) and, in the full run, at the engine's
  own resolution policy;
* peak memory of each call (CUDA: ``max_memory_allocated``; CPU: glibc's live heap, sampled);
* the ``precision`` table (``--precision``, and in the full run): float32 against bfloat16
  synthesis through the engine's path (``SynthesisInputs(ws).render(synthesis_generator(G,
  dtype))``: a cast copy of G, float32 latents and gradients), the engine's w+ step end to end
  (``invert(..., precision=...)``) and the bfloat16 image's error against float32, for the
  bundled default generator and the 64 / 256 px configs; the CPU's bfloat16 flags are reported;
* in the full run, the fast path's design choices one by one (bench/README.md).

Generators have random weights of the real config-f shapes from
``../shared/reference/rosinality_state_dict_shapes.json`` (256 px: ``size256_cm2``, 1024 px:
``size1024_cm2``); the 64 px one uses rosinality's default channels for size 64 (channel
multiplier 2, style_dim 512, 8 mapping layers), as do all sizes when that file is absent.
LPIPS uses ``../shared/weights/lpips_alex.pth`` when present, else random AlexNet weights of
the right shapes (timings do not depend on the values).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without `pip install -e .`
    sys.path.insert(1, str(REPO))

from ganinvert.inversion import invert, make_method  # noqa: E402
from ganinvert.inversion.methods.base import InversionContext  # noqa: E402
from ganinvert.inversion.methods.base import SynthesisInputs  # noqa: E402
from ganinvert.metrics import LPIPS  # noqa: E402
from ganinvert.models import load_generator, stylegan2  # noqa: E402
from ganinvert.models.loading import infer_config  # noqa: E402
from ganinvert.models.ops import make_kernel, tune_cpu_allocator  # noqa: E402
from ganinvert.models.precision import NATIVE_BF16_CPU_FLAGS, cpu_flags, native_bf16, synthesis_generator  # noqa: E402
from ganinvert.models.stylegan2 import StyleGAN2Generator, default_channels  # noqa: E402

SHARED = REPO / ".." / "shared"
SHAPES_JSON = SHARED / "reference" / "rosinality_state_dict_shapes.json"
LPIPS_WEIGHTS = SHARED / "weights" / "lpips_alex.pth"
#: Which entry of the shapes file each benchmarked resolution uses (config-f: channel multiplier 2).
SHAPE_KEYS = {256: "size256_cm2", 512: "size512_cm2", 1024: "size1024_cm2"}
#: Largest max-abs difference allowed between the fast and reference images (float32).
TOLERANCE = 1e-4
#: LPIPS resolution of the SPHInX overhead criterion (issue 7).
OVERHEAD_LPIPS_SIZE = 64
#: CPU flags the precision table reports: the native-bf16 ones and the vector units under them.
REPORTED_CPU_FLAGS = (*NATIVE_BF16_CPU_FLAGS, "avx512f", "avx512_vnni", "amx_tile", "avx2")


def log(message: str) -> None:
    print(f"[speed] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- models
def randomise(G: StyleGAN2Generator, seed: int) -> StyleGAN2Generator:
    """Draw every parameter and buffer of ``G`` from ``seed`` and freeze it.

    Noise strengths and biases are non-zero (as in trained networks) so that every term of the
    layers is exercised by the agreement check; mapping weights are stored divided by lr_mul as
    rosinality initialises them.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise.weight"):
                value = 0.1 + 0.2 * torch.rand(p.shape, generator=g)
            elif name.endswith("modulation.bias"):
                value = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            elif name.endswith("bias"):
                value = 0.1 * torch.randn(p.shape, generator=g)
            elif name.startswith("style."):
                value = torch.randn(p.shape, generator=g) / G.style[1].lr_mul
            else:
                value = torch.randn(p.shape, generator=g)
            p.copy_(value)
        for name, b in G.named_buffers():
            if name.startswith("noises."):
                b.copy_(torch.randn(b.shape, generator=g))
        G.w_avg.copy_(G.estimate_w_avg(n=1024, seed=seed))
    return G.requires_grad_(False).eval()


def build_generator(size: int, device: torch.device, seed: int = 0, tiny: bool = False
                    ) -> tuple[StyleGAN2Generator, str]:
    """A random generator of the real shapes for ``size`` and a sentence saying where they come from."""
    if tiny:  # smoke tests of this script: seconds, timings meaningless
        G = StyleGAN2Generator(size, style_dim=32, n_mlp=2, channels={r: 16 for r in (2 ** i for i in range(2, 11))})
        return randomise(G, seed).to(device), f"{size} px tiny test generator (16 channels, style_dim 32)"
    shapes = None
    if size in SHAPE_KEYS and SHAPES_JSON.is_file():
        shapes = json.loads(SHAPES_JSON.read_text())[SHAPE_KEYS[size]]["state_dict"]
    if shapes is None:
        G = StyleGAN2Generator(size, style_dim=512, n_mlp=8, channels=default_channels(2))
        where = (f"{size} px: rosinality's default channels for size {size} (channel multiplier 2, "
                 "style_dim 512, n_mlp 8)" + ("" if size not in SHAPE_KEYS else f"; {SHAPES_JSON} is absent"))
    else:
        config = infer_config({k: torch.empty(v, device="meta") for k, v in shapes.items()})
        G = StyleGAN2Generator(config["resolution"], config["style_dim"], config["n_mlp"], config["channels"])
        mismatched = [k for k, t in G.state_dict().items() if list(t.shape) != shapes.get(k, list(t.shape))]
        missing = set(shapes) - set(G.state_dict())
        if mismatched or missing:
            wrong = sorted(mismatched + list(missing))[:3]
            raise RuntimeError(f"generator shapes differ from {SHAPE_KEYS[size]}: {wrong}")
        where = f"{size} px: config-f shapes of {SHAPE_KEYS[size]} in rosinality_state_dict_shapes.json"
    return randomise(G, seed).to(device), where


def build_lpips(device: torch.device) -> tuple[LPIPS, str]:
    """LPIPS (AlexNet) from ../shared, or with random weights of the right shapes."""
    if LPIPS_WEIGHTS.is_file():
        return LPIPS(weights=str(LPIPS_WEIGHTS)).to(device), f"LPIPS AlexNet weights {LPIPS_WEIGHTS.name}"
    g = torch.Generator().manual_seed(0)
    trunk = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
    state = {}
    for index, (out_ch, in_ch, k) in trunk.items():
        state[f"features.{index}.weight"] = torch.randn(out_ch, in_ch, k, k, generator=g) / math.sqrt(in_ch * k * k)
        state[f"features.{index}.bias"] = torch.zeros(out_ch)
    for i, (out_ch, *_rest) in enumerate(trunk.values()):
        state[f"lin{i}.model.1.weight"] = torch.rand(1, out_ch, 1, 1, generator=g)
    with tempfile.TemporaryDirectory(prefix="ganinvert-bench-") as workdir:
        path = Path(workdir) / "lpips_alex_random.pth"
        torch.save(state, path)
        lpips = LPIPS(weights=str(path)).to(device)  # reads the file now
    return lpips, ("LPIPS with random AlexNet weights of the real shapes "
                   f"({LPIPS_WEIGHTS} is absent; timings do not depend on values)")


class LPIPSAt(nn.Module):
    """LPIPS on images area-downsampled to ``size`` px (the overhead criterion's 64 px LPIPS)."""

    def __init__(self, lpips: LPIPS, size: int) -> None:
        super().__init__()
        self.lpips, self.size = lpips, size

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > self.size:
            x, y = (F.interpolate(t, size=(self.size, self.size), mode="area") for t in (x, y))
        return self.lpips(x, y)


def latents(G: StyleGAN2Generator, batch: int, seed: int) -> torch.Tensor:
    """Seeded w+ latents (N, num_ws, style_dim) that require grad."""
    z = torch.randn(batch, G.style_dim, generator=torch.Generator().manual_seed(seed)).to(G.w_avg.device)
    with torch.no_grad():
        ws = G.broadcast(G.mapping(z)).clone()
    return ws.requires_grad_(True)


def agreement(G: StyleGAN2Generator, ws: torch.Tensor) -> float:
    """Max abs difference between the fast and reference images of ``ws`` (no grad)."""
    with torch.no_grad():
        return float((G.synthesis(ws, impl="fast") - G.synthesis(ws, impl="reference")).abs().max())


# ----------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _glibc_live_bytes() -> Callable[[], int] | None:
    """A function returning the bytes glibc malloc has handed out (heap + mmap), or None."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    return lambda: (lambda info: info.uordblks + info.hblkhd)(mallinfo2())


_LIVE_BYTES = _glibc_live_bytes()


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float | None]]:
    """Yields a dict whose ``"mb"`` holds, on exit, the peak memory above the level at entry.

    CUDA: the allocator's exact peak. CPU: glibc's live heap sampled every 2 ms by a thread
    (None where the C library is not glibc).
    """
    result: dict[str, float | None] = {"mb": None}
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        synchronize(device)
        result["mb"] = (torch.cuda.max_memory_allocated(device) - start) / 2 ** 20
        return
    if _LIVE_BYTES is None:
        yield result
        return
    start = _LIVE_BYTES()
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.002):
            peak[0] = max(peak[0], _LIVE_BYTES())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], _LIVE_BYTES())
        result["mb"] = (peak[0] - start) / 2 ** 20


@dataclass
class Timing:
    """Seconds of every timed repetition of one variant (and its peak memory in MiB)."""

    name: str
    seconds: list[float] = field(default_factory=list)
    peak_mb: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def interleaved(variants: dict[str, Callable[[], Any]], reps: int, device: torch.device) -> dict[str, Timing]:
    """Time each variant ``reps`` times, taking turns; one untimed warm-up call each measures memory."""
    timings = {name: Timing(name) for name in variants}
    for name, fn in variants.items():
        with peak_memory(device) as mem:
            fn()
        timings[name].peak_mb = mem["mb"]
    for rep in range(reps):
        for name, fn in variants.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            timings[name].seconds.append(time.perf_counter() - start)
        log(f"  rep {rep + 1}/{reps}: " + ", ".join(f"{n} {t.seconds[-1]:.3f}s" for n, t in timings.items()))
    return timings


# ----------------------------------------------------------------------------- steps
def wplus_step(G: StyleGAN2Generator, ws: torch.Tensor, impl: str) -> Callable[[], torch.Tensor]:
    """One forward+backward of ``G.synthesis`` with respect to w+."""
    def step() -> torch.Tensor:
        ws.grad = None
        image = G.synthesis(ws, impl=impl)
        image.square().mean().backward()
        return image.detach()
    return step


def precision_step(G: StyleGAN2Generator, ws: torch.Tensor, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    """One forward+backward with respect to float32 w+ through the engine's reduced-precision path:
    ``SynthesisInputs(ws).render`` on ``synthesis_generator(G, dtype)`` (inputs cast in, image cast out)."""
    renderer, inputs = synthesis_generator(G, dtype), SynthesisInputs(ws)

    def step() -> torch.Tensor:
        ws.grad = None
        image = inputs.render(renderer)
        image.square().mean().backward()
        return image.detach()
    return step


def precision_error(G: StyleGAN2Generator, ws: torch.Tensor, dtype: torch.dtype) -> tuple[float, float]:
    """Max abs difference (unclamped) and PSNR (clamped to [-1, 1], data range 2) of the ``dtype``
    render of ``ws`` against the float32 one."""
    with torch.no_grad():
        reference = SynthesisInputs(ws.detach()).render(G)
        reduced = SynthesisInputs(ws.detach()).render(synthesis_generator(G, dtype))
    max_abs = float((reduced - reference).abs().max())
    mse = float(((reduced.clamp(-1, 1) - reference.clamp(-1, 1)) / 2).square().mean())
    return max_abs, (-10 * math.log10(mse) if mse > 0 else float("inf"))


def engine_precision_step_seconds(G: StyleGAN2Generator, batch: int, lpips: nn.Module, precision: str,
                                  steps: int = 3) -> list[float]:
    """Seconds of steps 2..``steps`` of the engine's w+ (MSE + LPIPS) at ``precision``: callback gaps."""
    g = torch.Generator().manual_seed(batch)
    target = (torch.rand(batch, 3, G.resolution, G.resolution, generator=g) * 2 - 1).to(G.w_avg.device)
    stamps: list[float] = []

    def record(_progress: Any) -> None:
        synchronize(G.w_avg.device)
        stamps.append(time.perf_counter())

    invert(G, target, "w+", settings={"steps": steps}, lpips=lpips, seed=0, progress=False, callback=record,
           precision=precision)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def sphinx_synthesis_step(G: StyleGAN2Generator, batch: int, impl: str, seed: int) -> Callable[[], None]:
    """One forward+backward through SPHInX's inputs (heads, fresh z+ draw, noise) and the generator."""
    method = make_method("sphinx")
    rngs = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
    target = torch.zeros(batch, 3, G.resolution, G.resolution, device=G.w_avg.device)
    ctx = InversionContext(G=G, rngs=rngs, measurement=target, image=target)
    params = method.init_params(ctx)
    trained = set(method.stages(G)[0].names)
    for name, tensor in params.items():
        tensor.requires_grad_(name in trained)

    def step() -> None:
        for tensor in params.values():
            tensor.grad = None
        method.inputs(ctx, params).render(G, impl=impl).square().mean().backward()
    return step


def lpips_step(lpips: LPIPS, batch: int, size: int, device: torch.device) -> Callable[[], None]:
    """LPIPS forward+backward with respect to the first image."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device).requires_grad_(True)
    y = (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device)

    def step() -> None:
        x.grad = None
        lpips(x, y).sum().backward()
    return step


def engine_step_seconds(G: StyleGAN2Generator, batch: int, lpips: nn.Module, seed: int) -> float:
    """Seconds of one engine SPHInX step: the gap between the callbacks of steps 1 and 2 of ``invert``."""
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(batch, 3, G.resolution, G.resolution, generator=g) * 2 - 1).to(G.w_avg.device)
    stamps: list[float] = []

    def record(_progress: Any) -> None:
        synchronize(G.w_avg.device)
        stamps.append(time.perf_counter())

    invert(G, target, "sphinx", settings={"steps": 2}, lpips=lpips, seed=seed, progress=False, callback=record)
    return stamps[1] - stamps[0]


def upsampling_variants(c_in: int, c_out: int, size_in: int, device: torch.device) -> dict[str, Callable[[], None]]:
    """Forward+backward (w.r.t. the input) of three ways to write StyleGAN2's upsampling conv.

    All compute blur(conv_transpose(x, W, stride 2)): the fast path's transposed conv + 4x4
    depthwise blur, the same with a separable (4x1 then 1x4) blur, and one transposed conv whose
    6x6 kernel has the blur folded in.
    """
    g = torch.Generator().manual_seed(0)
    memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    x = torch.randn(1, c_in, size_in, size_in, generator=g).to(device).contiguous(memory_format=memory_format)
    weight = (torch.randn(c_in, c_out, 3, 3, generator=g) / math.sqrt(c_in * 9)).to(device)
    taps = (torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8 * 2).to(device)  # 1-D factor of make_kernel((1,3,3,1)) * 4
    kernel = (make_kernel([1, 3, 3, 1]) * 4).to(device)
    depthwise = kernel.expand(c_out, 1, 4, 4).contiguous()
    rows, cols = taps.view(1, 1, 4, 1).expand(c_out, 1, 4, 1), taps.view(1, 1, 1, 4).expand(c_out, 1, 1, 4)
    # (in, out, 6, 6): each 3x3 tap spread by the 4x4 blur (full 2-D convolution of the two kernels).
    fused = F.conv_transpose2d(weight.reshape(c_in * c_out, 1, 3, 3), kernel.flip(0, 1)[None, None])
    fused = fused.reshape(c_in, c_out, 6, 6)
    weight, fused = (w.contiguous(memory_format=memory_format) for w in (weight, fused))

    def blurred(h: torch.Tensor) -> torch.Tensor:
        return F.conv2d(h, depthwise, padding=1, groups=c_out)

    def separable(h: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(h, rows, padding=(1, 0), groups=c_out), cols, padding=(0, 1), groups=c_out)

    forms = {
        "transposed conv + 4x4 blur": lambda h: blurred(F.conv_transpose2d(h, weight, stride=2)),
        "transposed conv + separable blur": lambda h: separable(F.conv_transpose2d(h, weight, stride=2)),
        "blur folded into a 6x6 transposed conv": lambda h: F.conv_transpose2d(h, fused, stride=2, padding=2),
    }
    reference = forms["transposed conv + 4x4 blur"](x)
    for name, form in forms.items():
        err = float((form(x) - reference).abs().max() / reference.abs().max())
        if err > 1e-4:
            raise RuntimeError(f"upsampling variant '{name}' disagrees ({err:.1e})")

    def timed(form: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            h = x.detach().requires_grad_(True)
            form(h).square().mean().backward()
        return step
    return {name: timed(form) for name, form in forms.items()}


# ----------------------------------------------------------------------------- the benchmark
@dataclass
class Row:
    """One line of the results table."""

    what: str
    size: int
    batch: int
    impl: str
    seconds: float
    per_image: float
    peak_mb: float | None
    reps: int


class Bench:
    """Runs measurements and collects rows, headline figures, design-choice results and notes."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.rows: list[Row] = []
        self.figures: dict[str, Any] = {}
        self.choices: dict[str, Any] = {}
        self.notes: list[str] = []
        self.generators: dict[int | str, StyleGAN2Generator] = {}
        self.precision: list[dict[str, Any]] = []
        self.lpips, lpips_note = build_lpips(self.device)
        self.notes.append(lpips_note)

    def generator(self, size: int | str) -> StyleGAN2Generator:
        """The random generator of ``size`` px, or with ``"default"`` the bundled (trained) one."""
        if size not in self.generators:
            if size == "default":
                G, where = load_generator("default", self.device), "default: the bundled 64 px face generator"
            else:
                G, where = build_generator(size, self.device, seed=size, tiny=self.args.tiny)
            self.generators[size] = G
            self.notes.append(f"generator {where}")
        return self.generators[size]

    def add(self, what: str, size: int, batch: int, impl: str, timing: Timing) -> Row:
        row = Row(what, size, batch, impl, timing.median, timing.median / batch, timing.peak_mb, len(timing.seconds))
        self.rows.append(row)
        mem = "" if row.peak_mb is None else f", peak {row.peak_mb:.0f} MiB"
        log(f"{what} {size}px b{batch} {impl}: {row.seconds:.3f}s ({row.per_image:.3f}s/image{mem})")
        return row

    def find(self, what: str, size: int, batch: int, impl: str) -> Row | None:
        return next((r for r in self.rows if r.what == what and r.size == size and r.batch == batch
                     and r.impl == impl), None)

    def synthesis(self, size: int, cases: list[tuple[int, str]], reps: int, sphinx_batches: tuple[int, ...] = ()
                  ) -> None:
        """w+ forward+backward for each (batch, impl), and SPHInX's for ``sphinx_batches``, interleaved.

        Where a batch is timed with both impls, their images are compared first (TOLERANCE). A
        group with a larger fast batch also times batch 1 (fast), so that the per-image cost of
        the batch is a ratio measured under the same load.
        """
        G = self.generator(size)
        variants: dict[str, Callable[[], Any]] = {}
        anchored = any(b > 1 and impl == "fast" for b, impl in cases) and (1, "fast") not in cases
        if anchored:
            cases = [(1, "fast"), *cases]
        for batch in sorted({b for b, _ in cases}):
            ws = latents(G, batch, seed=batch)
            impls = [impl for b, impl in cases if b == batch]
            for impl in impls:
                variants[f"w+ {batch} {impl}"] = wplus_step(G, ws, impl)
            if len(impls) == 2:
                err = agreement(G, ws)
                self.figures[f"max_abs_err_{size}_b{batch}"] = err
                log(f"agreement {size}px b{batch}: max |fast - reference| = {err:.2e}")
        for batch in sphinx_batches:
            variants[f"sphinx {batch} fast"] = sphinx_synthesis_step(G, batch, "fast", seed=batch)
        log(f"{size}px forward+backward, interleaved: {', '.join(variants)}")
        timings = interleaved(variants, reps, self.device)
        for name, timing in timings.items():
            target, batch, impl = name.split()
            what = f"synthesis fwd+bwd wrt {'w+' if target == 'w+' else 'SPHInX heads+noise'}"
            self.add(what + (" (batch-1 anchor)" if anchored and name == "w+ 1 fast" else ""),
                     size, int(batch), impl, timing)
        for name, timing in timings.items():
            target, batch, impl = name.split()
            if target == "w+" and impl == "fast" and int(batch) > 1:
                ratio = timing.median / int(batch) / timings["w+ 1 fast"].median
                self.figures[f"per_image_cost_{size}_b{batch}_vs_b1"] = ratio
            if target == "w+" and impl == "fast" and f"w+ {batch} reference" in timings:
                ratio = timings[f"w+ {batch} reference"].median / timing.median
                self.figures[f"speedup_{size}_b{batch}"] = ratio

    def sphinx_overhead(self, size: int, reps: int, lpips_size: int | None) -> float:
        """(engine SPHInX step - w+ fwd+bwd) / w+ fwd+bwd at batch 1, the two interleaved."""
        G = self.generator(size)
        lpips = self.lpips if lpips_size is None else LPIPSAt(self.lpips, lpips_size)
        label = "at the engine's resolution" if lpips_size is None else f"at {lpips_size} px"
        plain = wplus_step(G, latents(G, 1, seed=1), "fast")
        plain()
        engine_step_seconds(G, 1, lpips, seed=0)  # warm-up
        step_t, plain_t = Timing("step"), Timing("plain")
        for rep in range(reps):
            step_t.seconds.append(engine_step_seconds(G, 1, lpips, seed=rep))
            synchronize(self.device)
            start = time.perf_counter()
            plain()
            synchronize(self.device)
            plain_t.seconds.append(time.perf_counter() - start)
            log(f"  rep {rep + 1}/{reps}: SPHInX step {step_t.seconds[-1]:.3f}s, w+ fwd+bwd {plain_t.seconds[-1]:.3f}s")
        self.add(f"engine SPHInX step, LPIPS {label}", size, 1, "fast", step_t)
        self.add("synthesis fwd+bwd wrt w+ (interleaved with the step)", size, 1, "fast", plain_t)
        overhead = (step_t.median - plain_t.median) / plain_t.median
        log(f"SPHInX step overhead at {size}px (LPIPS {label}): {overhead:+.1%}")
        return overhead

    def precision_row(self, which: int | str, batch: int, reps: int) -> dict[str, Any]:
        """float32 vs bfloat16 for one generator and batch: synthesis fwd+bwd and the engine's w+ step,
        each interleaved, and the bfloat16 image's error."""
        G = self.generator(which)
        label = "default" if which == "default" else f"{which} px {'tiny' if self.args.tiny else 'config'}"
        ws = latents(G, batch, seed=batch)
        max_abs, psnr = precision_error(G, ws, torch.bfloat16)
        log(f"precision {label} b{batch}: bf16 vs fp32 image max abs {max_abs:.3g}, PSNR {psnr:.1f} dB")
        synthesis = interleaved({name: precision_step(G, ws, dtype) for name, dtype in
                                 (("fp32", torch.float32), ("bf16", torch.bfloat16))}, reps, self.device)
        engine = {name: Timing(name) for name in ("fp32", "bf16")}
        for name in engine:  # warm-up (and the one-off cast copy of G)
            engine_precision_step_seconds(G, batch, self.lpips, name, steps=2)
        for rep in range(reps):
            for name, timing in engine.items():
                timing.seconds += engine_precision_step_seconds(G, batch, self.lpips, name)
            log(f"  engine rep {rep + 1}/{reps}: " + ", ".join(f"{n} {t.seconds[-1]:.3f}s" for n, t in engine.items()))
        row = {"generator": label, "size": G.resolution, "batch": batch,
               "synthesis_fp32_s": synthesis["fp32"].median, "synthesis_bf16_s": synthesis["bf16"].median,
               "synthesis_bf16_speedup": synthesis["fp32"].median / synthesis["bf16"].median,
               "engine_step_fp32_s": engine["fp32"].median, "engine_step_bf16_s": engine["bf16"].median,
               "engine_step_bf16_speedup": engine["fp32"].median / engine["bf16"].median,
               "bf16_max_abs_err": max_abs, "bf16_psnr_db": psnr,
               "reps": reps, "engine_steps_timed": len(engine["fp32"].seconds)}
        log(f"precision {label} b{batch}: synthesis fp32 {row['synthesis_fp32_s']:.4f}s bf16 "
            f"{row['synthesis_bf16_s']:.4f}s ({row['synthesis_bf16_speedup']:.2f}x); engine step fp32 "
            f"{row['engine_step_fp32_s']:.4f}s bf16 {row['engine_step_bf16_s']:.4f}s "
            f"({row['engine_step_bf16_speedup']:.2f}x)")
        self.precision.append(row)
        return row

    def lpips_cost(self, sizes: list[int], batch: int, reps: int) -> None:
        variants = {f"lpips {s}": lpips_step(self.lpips, batch, s, self.device) for s in sizes}
        log(f"LPIPS forward+backward at {sizes} px, batch {batch}")
        for name, timing in interleaved(variants, reps, self.device).items():
            self.add("LPIPS fwd+bwd wrt x", int(name.split()[1]), batch, "alex", timing)


def run_quick(bench: Bench) -> None:
    """The acceptance figures (< 5 min on 2 CPU cores)."""
    reps = bench.args.reps or 3
    small, big = (16, 64) if bench.args.tiny else (64, 256)
    bench.synthesis(small, [(1, "fast"), (1, "reference"), (8, "fast")], reps)
    bench.synthesis(big, [(1, "fast"), (1, "reference"), (8, "fast")], reps, sphinx_batches=(1,))
    bench.lpips_cost([OVERHEAD_LPIPS_SIZE, big], 1, reps)
    bench.figures[f"sphinx_overhead_{big}"] = bench.sphinx_overhead(big, reps, OVERHEAD_LPIPS_SIZE)
    headline(bench, big)


def run_precision(bench: Bench) -> None:
    """The fp32 / bf16 table: the bundled generator and the 64 px config at batch 1 and 8, 256 px at batch 1."""
    reps = bench.args.reps or 3
    small, big = (32, 64) if bench.args.tiny else (64, 256)  # LPIPS (engine step) needs >= 31 px
    if bench.device.type == "cpu" and not native_bf16(bench.device):
        bench.notes.append("this CPU has no native bfloat16 (no avx512_bf16 / amx_bf16 flag): bf16 is emulated")
    for which, batch in (("default", 1), ("default", 8), (small, 1), (small, 8), (big, 1)):
        row = bench.precision_row(which, batch, reps)
        key = f"{'default' if which == 'default' else which}_b{batch}"
        bench.figures[f"bf16_synthesis_speedup_{key}"] = row["synthesis_bf16_speedup"]
        bench.figures[f"bf16_engine_speedup_{key}"] = row["engine_step_bf16_speedup"]
        bench.figures[f"bf16_psnr_{key}"] = row["bf16_psnr_db"]


def run_full(bench: Bench) -> None:
    """Every size and batch, both impls, the SPHInX figures and the design choices."""
    args = bench.args
    sizes = args.sizes or ([16, 32, 64] if args.tiny else [64, 256, 1024])
    batches = args.batches or [1, 4, 8]
    for size in sizes:
        reps = args.reps or (1 if size >= 1024 and bench.device.type == "cpu" else 3)
        for batch in batches:
            cases = [(batch, impl) for impl in ("fast", "reference") if fits_in_memory(bench, size, batch, impl)]
            if cases:
                bench.synthesis(size, cases, reps, sphinx_batches=(batch,) if (batch, "fast") in cases else ())
    big = 64 if args.tiny else 256
    if big in sizes:
        reps = args.reps or 3
        bench.lpips_cost([OVERHEAD_LPIPS_SIZE, big], 1, reps)
        bench.lpips_cost([OVERHEAD_LPIPS_SIZE, big], max(batches), reps)
        bench.figures[f"sphinx_overhead_{big}"] = bench.sphinx_overhead(big, reps, OVERHEAD_LPIPS_SIZE)
        bench.figures[f"sphinx_overhead_{big}_engine_lpips"] = bench.sphinx_overhead(big, reps, None)
        if not args.no_choices:
            design_choices(bench, big, reps)
    run_precision(bench)
    headline(bench, big)


def fits_in_memory(bench: Bench, size: int, batch: int, impl: str) -> bool:
    """Skip (with a note) a run whose memory, extrapolated from batch 1, exceeds 80 % of what is free."""
    one = bench.find("synthesis fwd+bwd wrt w+", size, 1, impl)
    if batch == 1 or one is None or one.peak_mb is None:
        return True
    if bench.device.type == "cuda":
        free = torch.cuda.mem_get_info(bench.device)[0] / 2 ** 20
    else:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines()) \
            if Path("/proc/meminfo").exists() else {}
        free = int(meminfo.get("MemAvailable", "0 kB").split()[0]) / 1024 or float("inf")
    needed = one.peak_mb * batch
    if needed > 0.8 * free:
        bench.notes.append(f"skipped {size} px batch {batch} {impl}: needs about {needed / 1024:.1f} GiB "
                           f"(batch 1 peak x {batch}), {free / 1024:.1f} GiB free")
        log(bench.notes[-1])
        return False
    return True


def headline(bench: Bench, big: int) -> None:
    """The acceptance's batch-scaling key and the worst image disagreement."""
    if f"per_image_cost_{big}_b8_vs_b1" in bench.figures:
        bench.figures["per_image_cost_b8_vs_b1"] = bench.figures[f"per_image_cost_{big}_b8_vs_b1"]
    errors = [v for k, v in bench.figures.items() if k.startswith("max_abs_err_")]
    bench.figures["max_abs_err"] = max(errors) if errors else None


@contextlib.contextmanager
def switched(module: Any, name: str, value: Any) -> Iterator[None]:
    """Temporarily set a module-level switch (``stylegan2.CPU_CHANNELS_LAST`` etc.)."""
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def with_switch(module: Any, name: str, value: Any, fn: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        with switched(module, name, value):
            return fn()
    return call


def with_threads(threads: int, fn: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)
    return call


def ratios(timings: dict[str, Timing], baseline: str) -> dict[str, dict[str, float]]:
    """Median seconds of each variant and its time relative to ``baseline``."""
    base = timings[baseline].median
    return {name: {"seconds": t.median, "relative_time": t.median / base, "peak_mb": t.peak_mb}
            for name, t in timings.items()}


def design_choices(bench: Bench, size: int, reps: int) -> None:
    """Each design choice of the fast path switched off (or an alternative switched on), interleaved."""
    G, device = bench.generator(size), bench.device
    ws1, ws8 = latents(G, 1, seed=1), latents(G, 8, seed=8)
    fused = wplus_step(G, ws1, "fast")

    def unfused() -> Any:
        # Noise strengths that require grad send every layer through the plain autograd fast path.
        noise_weights = [layer.noise.weight for layer in (G.conv1, *G.convs)]
        for p in noise_weights:
            p.requires_grad_(True)
        try:
            return fused()
        finally:
            for p in noise_weights:
                p.requires_grad_(False)
                p.grad = None

    log("design choices: fused op, activation modulation, channels_last")
    variants = {"fast path (all choices)": fused,
                "without the fused op (autograd through each op)": unfused,
                "reference formulation": wplus_step(G, ws1, "reference")}
    if device.type == "cpu":
        variants["without channels_last"] = with_switch(stylegan2, "CPU_CHANNELS_LAST", False, fused)
        if os.cpu_count() and os.cpu_count() > 1:
            other = 1 if torch.get_num_threads() > 1 else os.cpu_count()
            variants[f"with {other} thread(s) instead of {torch.get_num_threads()}"] = with_threads(other, fused)
    bench.choices[f"{size}px batch 1 fwd+bwd"] = ratios(interleaved(variants, reps, device), "fast path (all choices)")

    if device.type == "cpu":
        log("design choices: per-sample high-resolution blocks at batch 8")
        batched = wplus_step(G, ws8, "fast")
        variants = {"batch 8, split per sample from the fold block (default)": batched,
                    "batch 8, one batched pass": with_switch(stylegan2, "CPU_SPLIT_BATCH", False, batched)}
        bench.choices[f"{size}px batch 8 fwd+bwd"] = ratios(interleaved(variants, reps, device),
                                                            "batch 8, split per sample from the fold block (default)")

    log("design choices: rendering (forward only)")
    ws_render = ws1.detach()

    def render_grad() -> None:
        G.synthesis(ws1)

    def render_no_grad() -> None:
        with torch.no_grad():
            G.synthesis(ws_render)

    def render_inference() -> None:
        with torch.inference_mode():
            G.synthesis(ws_render)
    bench.choices[f"{size}px batch 1 render"] = ratios(interleaved(
        {"torch.inference_mode": render_inference, "torch.no_grad": render_no_grad,
         "grad enabled (latents require grad)": render_grad}, reps, device), "torch.inference_mode")

    log("design choices: upsampling conv forms")
    c_in, c_out = G.channels[size // 2], G.channels[size]
    bench.choices[f"upsampling conv {c_in}->{c_out} ch, {size // 2}->{size} px, fwd+bwd"] = ratios(
        interleaved(upsampling_variants(c_in, c_out, size // 2, device), reps, device), "transposed conv + 4x4 blur")

    bench.choices["bfloat16"] = bfloat16_choice(G, ws1, reps, device)
    if bench.args.compile:
        bench.choices["torch.compile"] = compile_choice(G, ws1, reps, device)
    if device.type == "cpu" and not bench.args.tiny:
        bench.choices["glibc allocator"] = allocator_choice(bench.args, size)


def bfloat16_choice(G: StyleGAN2Generator, ws: torch.Tensor, reps: int, device: torch.device) -> dict[str, Any]:
    """The fast path in bfloat16: time against float32 and the image error it costs."""
    import copy
    try:
        G16 = copy.deepcopy(G).to(torch.bfloat16)
        ws16 = ws.detach().to(torch.bfloat16).requires_grad_(True)
        with torch.no_grad():
            err = float((G16.synthesis(ws16).float() - G.synthesis(ws)).abs().max())
        timings = interleaved({"float32": wplus_step(G, ws, "fast"), "bfloat16": wplus_step(G16, ws16, "fast")},
                              reps, device)
    except RuntimeError as exc:  # a device without bfloat16 kernels
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    return {**ratios(timings, "float32"), "max_abs_image_error_vs_float32": err}


def compile_choice(G: StyleGAN2Generator, ws: torch.Tensor, reps: int, device: torch.device) -> dict[str, Any]:
    """torch.compile of the fast synthesis: compile time, step time, agreement, or the error."""
    compiled = torch.compile(G.synthesis)
    start = time.perf_counter()
    try:
        image = compiled(ws)
        image.square().mean().backward()
    except Exception as exc:  # inductor needs a C++ compiler and may not support every op: report it
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    compile_seconds = time.perf_counter() - start
    with torch.no_grad():
        err = float((image.detach() - G.synthesis(ws)).abs().max())

    def step() -> None:
        ws.grad = None
        compiled(ws).square().mean().backward()
    timings = interleaved({"eager": wplus_step(G, ws, "fast"), "torch.compile": step}, reps, device)
    return {**ratios(timings, "eager"), "compile_seconds": compile_seconds, "max_abs_image_error": err}


def allocator_choice(args: argparse.Namespace, size: int) -> dict[str, Any]:
    """256 px batch 1 in a child process with glibc's default allocator settings, and in this one."""
    import subprocess
    command = [sys.executable, str(Path(__file__).resolve()), "--quick-synthesis", str(size), "--json",
               "--allocator", "default", "--threads", str(torch.get_num_threads())]
    log(f"design choices: allocator (child process: {' '.join(command[2:])})")
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "child failed"}
    child = json.loads(done.stdout)
    return {"default glibc settings (child process)": child, "note": "compare with this process's rows (tuned)"}


def run_synthesis_only(bench: Bench, size: int) -> None:
    """Batch 1 fast and reference at one size (the allocator child process)."""
    bench.synthesis(size, [(1, "fast"), (1, "reference")], bench.args.reps or 3)
    headline(bench, size)


# ----------------------------------------------------------------------------- output
def environment(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    env = {"torch": torch.__version__, "device": str(device), "cpu": cpu, "cpu_count": os.cpu_count(),
           "threads": torch.get_num_threads(), "allocator": args.allocator, "quick": args.quick,
           "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    flags = cpu_flags()
    env["cpu_flags"] = {flag: flag in flags for flag in REPORTED_CPU_FLAGS}
    env["native_bf16"] = native_bf16(device)
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def markdown(result: dict[str, Any]) -> str:
    lines = ["## Environment", "", "```", json.dumps(result["environment"], indent=1), "```", "",
             "## Headline figures", ""]
    figures = {k: v for k, v in result.items() if k not in ("environment", "rows", "choices", "notes", "precision")}
    lines += [f"- `{k}`: {v:.4g}" if isinstance(v, float) else f"- `{k}`: {v}" for k, v in figures.items()]
    lines += ["", "## Timings (median seconds)", "", "| what | px | batch | impl | s | s/image | peak MiB | reps |",
              "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        mem = "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        lines.append(f"| {r['what']} | {r['size']} | {r['batch']} | {r['impl']} | {r['seconds']:.3f} | "
                     f"{r['per_image']:.3f} | {mem} | {r['reps']} |")
    if result.get("precision"):
        flags = result["environment"]["cpu_flags"]
        lines += ["", "## Precision: float32 vs bfloat16 (median seconds per step, interleaved)", "",
                  "CPU flags: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items())
                  + f"; native bf16: {'yes' if result['environment']['native_bf16'] else 'no'}", "",
                  "| generator | px | batch | synthesis fp32 s | bf16 s | bf16 speedup | engine w+ step fp32 s | "
                  "bf16 s | bf16 speedup | bf16 image max abs err | bf16 image PSNR dB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["precision"]:
            lines.append(f"| {r['generator']} | {r['size']} | {r['batch']} | {r['synthesis_fp32_s']:.4f} | "
                         f"{r['synthesis_bf16_s']:.4f} | {r['synthesis_bf16_speedup']:.2f} | "
                         f"{r['engine_step_fp32_s']:.4f} | {r['engine_step_bf16_s']:.4f} | "
                         f"{r['engine_step_bf16_speedup']:.2f} | {r['bf16_max_abs_err']:.3g} | {r['bf16_psnr_db']:.1f} |")
    if result["choices"]:
        lines += ["", "## Design choices (time relative to the first variant of each group)", ""]
        for group, entries in result["choices"].items():
            lines.append(f"### {group}")
            lines.append("")
            for name, value in entries.items():
                if isinstance(value, dict) and "relative_time" in value:
                    lines.append(f"- {name}: {value['seconds']:.3f} s ({value['relative_time']:.2f}x)")
                else:
                    lines.append(f"- {name}: {json.dumps(value) if isinstance(value, dict) else value}")
            lines.append("")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the acceptance figures only (< 5 min on 2 CPU cores)")
    parser.add_argument("--precision", action="store_true",
                        help="the float32 / bfloat16 table only (also part of the full run)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of markdown")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:index] (default: cpu)")
    parser.add_argument("--threads", default="auto",
                        help="torch intra-op threads, or auto (default): 1 when other processes keep the CPU busy "
                             "(1-min load average > 0.5), else torch's default")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed repetitions per variant (default 3; 1 at 1024 px on CPU)")
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=None,
                        help="full run: resolutions, e.g. 64,256 (default 64,256,1024)")
    parser.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=None,
                        help="full run: batch sizes, e.g. 1,8 (default 1,4,8)")
    parser.add_argument("--allocator", choices=("tuned", "default"), default="tuned",
                        help="tuned: ganinvert.models.ops.tune_cpu_allocator() first (default); default: glibc's")
    parser.add_argument("--compile", action="store_true", help="full run: also try torch.compile (slow to compile)")
    parser.add_argument("--no-choices", action="store_true", help="full run: skip the design-choice comparisons")
    parser.add_argument("--tiny", action="store_true", help="tiny generators (smoke tests; timings meaningless)")
    parser.add_argument("--quick-synthesis", type=int, default=None, metavar="SIZE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def choose_threads(setting: str) -> int:
    """``--threads``: a number, or ``auto``.

    On a CPU shared with other busy processes, every OpenMP parallel region of a multi-threaded
    torch waits for a descheduled thread, and one thread runs the generator about 3x faster than
    two (bench/README.md); on an idle machine torch's default (one thread per core) wins.
    """
    if setting != "auto":
        return int(setting)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    threads = 1 if load > 0.5 else torch.get_num_threads()
    log(f"--threads auto: 1-min load average {load:.2f} -> {threads} thread(s)")
    return threads


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.allocator == "tuned" and not tune_cpu_allocator():
        log("the C library is not glibc: allocator tuning unavailable")
    torch.set_num_threads(choose_threads(args.threads))
    started = time.perf_counter()
    bench = Bench(args)
    env = environment(args, bench.device)
    log(f"environment: {json.dumps(env)}")
    if args.quick_synthesis:
        run_synthesis_only(bench, args.quick_synthesis)
    elif args.quick:
        run_quick(bench)
    elif args.precision:
        run_precision(bench)
    else:
        run_full(bench)
    env["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    env["wall_seconds"] = time.perf_counter() - started
    result = {**bench.figures, "environment": env, "rows": [asdict(r) for r in bench.rows],
              "choices": bench.choices, "precision": bench.precision, "notes": bench.notes}
    print(json.dumps(result, indent=1) if args.json else markdown(result), flush=True)
    worst = bench.figures.get("max_abs_err")
    if worst is not None and not worst <= TOLERANCE:
        log(f"FAIL: fast and reference images differ by {worst:.2e} > {TOLERANCE:.0e}")
        raise SystemExit(1)
    log(f"done in {env['wall_seconds']:.0f}s")
    return result


if __name__ == "__main__":
    main()
