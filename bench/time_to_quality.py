#!/usr/bin/env python
"""Reduced precision and encoder starts: accuracy, steps to quality and wall-clock time to quality.

Usage::

    python bench/time_to_quality.py --accuracy   # bf16 vs fp32 (w+, w+sb, sphinx) + steps to quality (init encoder)
    python bench/time_to_quality.py --timing     # seconds to reach the rosinality projector's PSNR
    python bench/time_to_quality.py --report     # rebuild bench/results/{precision,time_to_quality}.{json,md}
    python bench/time_to_quality.py --quick --out /tmp/ttq   # smoke run: 2 images, 10 steps (seconds)

Every run is a *cell* (one JSON file under ``--out``, written atomically) and a cell that exists
with the same specification is not run again, so an interrupted measurement resumes where it
stopped. Reports are rebuilt from whatever cells exist after every run.

Images (64 px, the bundled default generator): 4 samples ``G(z)`` with ``z`` from
``torch.Generator().manual_seed(s)``, s = 0..3, clamped to [-1, 1], and the first 4 (sorted)
``../shared/data/images/celeba_hq`` faces through ``ganinvert.io.load_image(path, 64)``.

* ``--accuracy``: ``w+``, ``w+sb`` and ``sphinx`` (1000 steps) in float32 and in bfloat16, each one
  batched ``invert`` call over the 8 images (the engine is exact per image: own random stream,
  summed per-image losses, per-element Adam). Final PSNR / LPIPS (AlexNet,
  ``../shared/weights/lpips_alex.pth``) of ``result.render(G)`` (float32 rendering), clamped.
  The same cells record per-image PSNR curves (from the per-step callback's images, the engine's
  definition: the step's unclamped render against the target), and one more batched run,
  ``w+`` with ``init=encoder`` (bfloat16), gives the steps to quality: the first step at which the
  encoder start reaches the ``w_avg`` start's 1000-step PSNR of the same image, over 1000.
* ``--timing``: per image, interleaved (image i with every configuration before image i+1), batch
  1: the rosinality projector recipe (the reference, float32, 1000 steps; its last-step PSNR is
  the image's target and its wall time the denominator), then ganinvert ``w+`` fp32, ``w+`` bf16,
  ``w+`` init=encoder bf16 and ``fz+`` (bundled F/Z+ encoder) bf16, each stopped by its callback
  at the first step whose PSNR reaches the target (else run to its last step: "not reached", with
  its best PSNR). Seconds run from just before ``invert`` (so an encoder's forward pass counts) to
  that step's callback. Every configuration runs once untimed first (loading encoders, the
  bfloat16 copy of G).

The rosinality projector (rosinality/stylegan2-pytorch ``projector.py``) has no preset in
``ganinvert methods``; :class:`RosinalityProjector` below is ``w+b`` with the projector's
additions, built from the library's pieces (``pti.noise_autocorrelation``, the
``rampup-cosine`` schedule): lr 0.1 on one Adam group holding w+ and the noise maps, lr ramp-up
0.05 / cosine ramp-down 0.25, noise maps drawn from N(0, I), w+ starting at the mean of 10 000
mapped samples, Gaussian noise on w+ of ``latent_std * 0.05 * max(0, 1 - t / 0.75) ** 2``, noise
regularisation 1e5 and noise maps renormalised after every step, ``--mse 0`` (LPIPS alone),
1000 steps. Deviation: LPIPS AlexNet (the weights ../shared has) instead of VGG16.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without `pip install -e .`
    sys.path.insert(1, str(REPO))

from ganinvert.inversion import invert, make_method  # noqa: E402
from ganinvert.inversion.methods.base import (InversionContext, Method, ParamGroup, Params, Stage,  # noqa: E402
                                              SynthesisInputs, gather_noise, noise_names, randn)
from ganinvert.inversion.methods.latent import LatentMethod, LatentSettings  # noqa: E402
from ganinvert.inversion.methods.pti import noise_autocorrelation  # noqa: E402
from ganinvert.io import atomic_write_bytes, atomic_write_json, load_image  # noqa: E402
from ganinvert.metrics import LPIPS, score  # noqa: E402
from ganinvert.models import load_generator  # noqa: E402
from ganinvert.models.mapping_statistics import cached_statistic, mapped_latents  # noqa: E402
from ganinvert.models.ops import tune_cpu_allocator  # noqa: E402
from ganinvert.models.precision import NATIVE_BF16_CPU_FLAGS, cpu_flags  # noqa: E402
from ganinvert.models.stylegan2 import StyleGAN2Generator  # noqa: E402

SHARED = REPO / ".." / "shared"
LPIPS_WEIGHTS = SHARED / "weights" / "lpips_alex.pth"
CELEBA = SHARED / "data" / "images" / "celeba_hq"
RESULTS = REPO / "bench" / "results"
GENERATED_SEEDS = (0, 1, 2, 3)
CELEBA_COUNT = 4
SIZE = 64
ACCURACY_METHODS = ("w+", "w+sb", "sphinx")
#: Acceptance: bf16 within these of fp32 (median over the images).
PSNR_TOLERANCE_DB, LPIPS_TOLERANCE = 0.2, 0.005
#: Acceptance: steps to quality of the encoder start, as a fraction of the w_avg run's steps.
STEPS_FRACTION_LIMIT = {"generated": 0.3, "celeba_hq": 0.5}
#: Acceptance: the best ganinvert configuration's seconds to the reference PSNR / reference seconds.
TIME_RATIO_LIMIT = 0.2
#: The timed configurations, in the order they run on each image (the reference first).
CONFIGURATIONS = ("reference", "w+ fp32", "w+ bf16", "w+ encoder bf16", "fz+ bf16")
#: rosinality projector.py: ``n_mean_latent = 10000`` samples give the start and latent_std.
PROJECTOR_SAMPLES = 10_000


def log(message: str) -> None:
    print(f"[ttq] {message}", file=sys.stderr, flush=True)


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


# ----------------------------------------------------------------------------- the reference
@dataclass
class ProjectorSettings(LatentSettings):
    """rosinality projector.py defaults (``--lr 0.1 --step 1000 --noise 0.05 --noise_ramp 0.75
    --noise_regularize 1e5 --mse 0 --lr_rampup 0.05 --lr_rampdown 0.25``); see the module docstring."""

    steps: int = 1000
    lr: float = 0.1
    lambda_mse: float = 0.0
    lambda_lpips: float = 1.0
    noise_regularize_weight: float = 1e5
    w_noise_factor: float = 0.05
    w_noise_ramp: float = 0.75
    schedule: str = "rampup-cosine"


class RosinalityProjector(LatentMethod):
    """w+ and noise maps optimised as rosinality's projector.py does (``--w_plus``)."""

    name = "rosinality-projector"
    summary = "rosinality/stylegan2-pytorch projector.py (w+, noise maps, noise regularisation)"
    Settings = ProjectorSettings
    presets = {}
    space, with_noise, with_content = "w+", True, False

    def stages(self, G: StyleGAN2Generator) -> list[Stage]:
        s = self.settings  # projector.py: one Adam group [latent_in] + noises, lr from get_lr(t)
        return [Stage("main", s.steps, (ParamGroup(("latent", *noise_names(G)), s.lr, s.schedule),))]

    @staticmethod
    def _statistics(G: StyleGAN2Generator) -> tuple[torch.Tensor, float]:
        """latent_mean and latent_std of projector.py (10 000 mapped samples, seed 0)."""
        def build() -> tuple[torch.Tensor, float]:
            with torch.no_grad():
                w = mapped_latents(G, PROJECTOR_SAMPLES, seed=0, chunk=2000)
            mean = w.mean(0)
            return mean, float((w - mean).square().sum() / PROJECTOR_SAMPLES) ** 0.5
        return cached_statistic(G, "rosinality-projector", build)

    def init_params(self, ctx: InversionContext) -> Params:
        G, rngs, n = ctx.G, ctx.rngs, ctx.batch_size
        mean, _ = self._statistics(G)
        params: Params = {"latent": G.broadcast(mean.expand(n, -1)).clone()}
        # projector.py: ``noise.repeat(batch, 1, 1, 1).normal_()``.
        params.update((name, randn(rngs, shape[1:], ctx.device)) for name, shape in zip(noise_names(G), G.noise_shapes))
        return params

    def inputs(self, ctx: InversionContext, params: Params) -> SynthesisInputs:
        s = self.settings
        _, latent_std = self._statistics(ctx.G)
        t = ctx.step / s.steps
        strength = latent_std * s.w_noise_factor * max(0.0, 1 - t / s.w_noise_ramp) ** 2
        latent = params["latent"]
        ws = latent + randn(ctx.rngs, latent.shape[1:], latent.device) * strength
        return SynthesisInputs(ws=ws, noise=gather_noise(ctx.G, params))

    def regulariser(self, ctx: InversionContext, params: Params, inputs: SynthesisInputs) -> torch.Tensor | None:
        return self.settings.noise_regularize_weight * noise_autocorrelation(gather_noise(ctx.G, params))

    @torch.no_grad()
    def project(self, ctx: InversionContext, params: Params) -> None:
        for name in noise_names(ctx.G):  # projector.py noise_normalize_
            noise = params[name]
            noise -= noise.mean((1, 2, 3), keepdim=True)
            noise *= noise.square().mean((1, 2, 3), keepdim=True).rsqrt()


# ----------------------------------------------------------------------------- images, curves
def problem_images(G: StyleGAN2Generator, count: int) -> list[tuple[str, str, torch.Tensor]]:
    """(name, group, (1, 3, 64, 64) image): generated samples and celeba_hq faces, alternating."""
    generated = []
    for s in GENERATED_SEEDS:
        z = torch.randn(1, G.style_dim, generator=torch.Generator().manual_seed(s))
        with torch.no_grad():
            generated.append((f"gen{s}", "generated", G(z).clamp(-1, 1)))
    faces = [(f"celeba_{p.stem}", "celeba_hq", load_image(p, SIZE))
             for p in sorted(CELEBA.glob("*.jpg"))[:CELEBA_COUNT]]
    if len(faces) < CELEBA_COUNT:
        raise SystemExit(f"need {CELEBA_COUNT} images in {CELEBA}, found {len(faces)}")
    alternating = [item for pair in zip(generated, faces) for item in pair]
    return alternating[:count]


def image_group(name: str) -> str:
    """``generated`` or ``celeba_hq``, from an image's name (``gen<seed>`` / ``celeba_<stem>``)."""
    return "generated" if name.startswith("gen") else "celeba_hq"


def psnr_per_image(x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """The engine's PSNR per image: [-1, 1] images mapped to [0, 1]."""
    mse = ((x.float() - y) / 2).square().reshape(x.shape[0], -1).mean(1).clamp_min(1e-12)
    return (-10 * torch.log10(mse)).tolist()


def first_reach(curve: list[float], target: float) -> int | None:
    """The 1-based step at which ``curve`` first reaches ``target`` (None if it never does).

    >>> first_reach([20.0, 25.0, 24.0, 26.0], 24.5)
    2
    >>> first_reach([20.0, 21.0], 24.5) is None
    True
    """
    return next((i + 1 for i, v in enumerate(curve) if v >= target), None)


# ----------------------------------------------------------------------------- cells
class Cells:
    """JSON cells under ``root``; a cell is reused when its stored spec equals the requested one."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, kind: str, name: str) -> Path:
        return self.root / kind / f"{name.replace('+', 'p')}.json"

    def get(self, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any] | None:
        path = self.path(kind, name)
        try:
            cell = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return cell if cell.get("spec") == spec else None

    def run(self, kind: str, name: str, spec: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        cell = self.get(kind, name, spec)
        if cell is not None:
            log(f"{kind}/{name}: done before, skipped")
            return cell
        load_start = load_average()
        started = time.perf_counter()
        cell = {"spec": spec, **compute(), "load_average_start": load_start, "load_average_end": load_average(),
                "cell_wall_seconds": time.perf_counter() - started}
        atomic_write_json(self.path(kind, name), cell)
        log(f"{kind}/{name}: written ({cell['cell_wall_seconds']:.0f}s, load {load_start} -> {cell['load_average_end']})")
        return cell

    def all(self, kind: str) -> list[dict[str, Any]]:
        cells = []
        for path in sorted((self.root / kind).glob("*.json")):
            try:
                cells.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return cells


# ----------------------------------------------------------------------------- accuracy
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.G = load_generator("default")
        self.lpips = LPIPS(weights=str(LPIPS_WEIGHTS))
        self.images = problem_images(self.G, args.images)
        self.cells = Cells(args.out)

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.images]

    @property
    def groups(self) -> dict[str, str]:
        return {name: group for name, group, _ in self.images}

    def batched_run(self, method: str, precision: str, settings: dict[str, Any]) -> dict[str, Any]:
        """One ``invert`` over every image: per-image PSNR curves and final PSNR / LPIPS."""
        target = torch.cat([image for _, _, image in self.images])
        curves: list[list[float]] = []

        def record(progress: Any) -> None:
            curves.append(psnr_per_image(progress.image, target))
            if progress.step % 100 == 0:
                log(f"  {method} {precision} step {progress.step}/{progress.total}: {time.perf_counter() - started:.0f}s, "
                    f"mean PSNR {progress.psnr:.2f}")

        started = time.perf_counter()
        result = invert(self.G, target, method, settings=settings, lpips=self.lpips, precision=precision,
                        seed=list(range(len(self.images))), progress=False, callback=record)
        seconds = time.perf_counter() - started
        with torch.no_grad():
            final = score(result.render(self.G).clamp(-1, 1), target, self.lpips)
        per_image = {name: {"psnr": float(final["psnr"][i]), "lpips": float(final["lpips"][i]),
                            "curve": [round(c[i], 4) for c in curves]} for i, name in enumerate(self.names)}
        return {"precision": result.extra["precision"], "seconds": seconds, "images": per_image}

    def accuracy(self) -> None:
        steps = self.args.steps
        methods = self.args.methods
        for method in methods:
            for precision in ("fp32", "bf16"):
                spec = {"method": method, "precision": precision, "steps": steps, "images": self.names}
                self.cells.run("accuracy", f"{method}-{precision}", spec,
                               lambda: self.batched_run(method, precision, {"steps": steps}))
        spec = {"method": "w+", "init": "encoder", "precision": "bf16", "steps": steps, "images": self.names}
        self.cells.run("accuracy", "w+-encoder-bf16", spec,
                       lambda: self.batched_run("w+", "bf16", {"steps": steps, "init": "encoder"}))

    # ------------------------------------------------------------------------- timing
    def configurations(self) -> dict[str, tuple[str | Method, str, dict[str, Any]]]:
        """name -> (method, precision, settings) of the timed runs; the reference first."""
        steps = self.args.steps
        fz_steps = {} if steps == 1000 else {"steps": steps}  # fz+ keeps its preset's 1200 steps in full runs
        return {
            "reference": (RosinalityProjector(ProjectorSettings(steps=steps, lambda_mse=self.args.reference_mse)),
                          "fp32", {}),
            "w+ fp32": ("w+", "fp32", {"steps": steps}),
            "w+ bf16": ("w+", "bf16", {"steps": steps}),
            "w+ encoder bf16": ("w+", "bf16", {"steps": steps, "init": "encoder"}),
            # One instance for every image: FeatureMethod caches its encoder on the instance.
            "fz+ bf16": (make_method("fz+", None, fz_steps), "bf16", {}),
        }

    def timed_run(self, method: str | Method, precision: str, settings: dict[str, Any], image: torch.Tensor,
                  target_psnr: float | None) -> dict[str, Any]:
        """Seconds from the call to each step's callback, stopping at ``target_psnr`` when given."""
        stamps: list[float] = []
        curve: list[float] = []

        def record(progress: Any) -> bool:
            stamps.append(time.perf_counter())
            curve.append(progress.psnr)
            return target_psnr is not None and progress.psnr >= target_psnr

        started = time.perf_counter()
        invert(self.G, image, method, settings=settings or None, lpips=self.lpips, precision=precision, seed=0,
               progress=False, callback=record)
        return {"seconds": [round(t - started, 4) for t in stamps], "curve": [round(c, 4) for c in curve]}

    def timing(self) -> None:
        configs = self.configurations()
        log("warm-up: one step of every configuration (encoders, the bfloat16 copy of G, the projector's statistics)")
        for method, precision, settings in configs.values():
            self.timed_run(method, precision, settings, self.images[0][2], target_psnr=-math.inf)
        for order, (name, _, image) in enumerate(self.images):
            reference = None
            for config, (method, precision, settings) in configs.items():
                spec = {"image": name, "order": order, "config": config, "precision": precision,
                        "steps": self.args.steps, "threads": torch.get_num_threads()}
                if self.args.reference_mse:  # a variant of the reference: its own cells
                    spec["reference_mse"] = self.args.reference_mse
                if config == "reference":
                    reference = self.cells.run("timing", f"{name}-{config}", spec,
                                               lambda: self.timed_run(method, precision, settings, image, None))
                    continue
                target = reference["curve"][-1]
                spec["target_psnr"] = target
                self.cells.run("timing", f"{name}-{config.replace(' ', '-')}", spec,
                               lambda: self.timed_run(method, precision, settings, image, target))


# ----------------------------------------------------------------------------- reports
def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def accuracy_report(cells: Cells, speed: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    by_key = {(c["spec"]["method"], c["spec"].get("init", "w_avg"), c["spec"]["precision"]): c
              for c in cells.all("accuracy")}
    methods, lines = {}, ["# Precision: bfloat16 against float32", ""]
    if speed is not None:
        env = speed.get("environment", {})
        loads = [[round(v, 2) for v in env.get(k) or []] for k in ("load_average_start", "load_average_end")]
        lines += [f"Speed: `python bench/speed.py --precision` (threads {env.get('threads')}, load "
                  f"{loads[0]} -> {loads[1]}); CPU flags: "
                  + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in env.get("cpu_flags", {}).items()), "",
                  "| generator | px | batch | synthesis fp32 s | bf16 s | speedup | engine w+ step fp32 s | bf16 s | "
                  "speedup | bf16 image max abs err | bf16 image PSNR dB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in speed.get("precision", []):
            lines.append(f"| {r['generator']} | {r['size']} | {r['batch']} | {r['synthesis_fp32_s']:.4f} | "
                         f"{r['synthesis_bf16_s']:.4f} | {r['synthesis_bf16_speedup']:.2f} | "
                         f"{r['engine_step_fp32_s']:.4f} | {r['engine_step_bf16_s']:.4f} | "
                         f"{r['engine_step_bf16_speedup']:.2f} | {r['bf16_max_abs_err']:.3g} | {r['bf16_psnr_db']:.1f} |")
        lines.append("")
    lines += ["Accuracy: final PSNR / LPIPS (AlexNet) of `result.render(G)` (float32 render of the optimised tensors, "
              "clamped) for each image; the median rows are medians of each column (the deltas: of the per-image "
              f"deltas). Acceptance: |median ΔPSNR| <= {PSNR_TOLERANCE_DB} dB and |median ΔLPIPS| <= {LPIPS_TOLERANCE}.",
              ""]
    for method in ACCURACY_METHODS:
        fp32, bf16 = by_key.get((method, "w_avg", "fp32")), by_key.get((method, "w_avg", "bf16"))
        if fp32 is None or bf16 is None:
            continue
        names = fp32["spec"]["images"]
        rows = {n: {"fp32_psnr": fp32["images"][n]["psnr"], "bf16_psnr": bf16["images"][n]["psnr"],
                    "fp32_lpips": fp32["images"][n]["lpips"], "bf16_lpips": bf16["images"][n]["lpips"]} for n in names}
        for r in rows.values():
            r["delta_psnr"], r["delta_lpips"] = r["bf16_psnr"] - r["fp32_psnr"], r["bf16_lpips"] - r["fp32_lpips"]
        columns = list(next(iter(rows.values())))
        summary = {k: median([r[k] for r in rows.values()]) for k in columns}
        by_group = {g: {k: median([r[k] for n, r in rows.items() if image_group(n) == g]) for k in columns}
                    for g in dict.fromkeys(image_group(n) for n in rows)}
        met = abs(summary["delta_psnr"]) <= PSNR_TOLERANCE_DB and abs(summary["delta_lpips"]) <= LPIPS_TOLERANCE
        methods[method] = {"steps": fp32["spec"]["steps"], "images": rows, "median": summary,
                           "median_by_group": by_group, "met": met,
                           "seconds": {"fp32": fp32["seconds"], "bf16": bf16["seconds"]},
                           "load_average": {"fp32": fp32["load_average_start"], "bf16": bf16["load_average_start"]}}
        lines += [f"## {method} ({fp32['spec']['steps']} steps, batch {len(names)}; wall fp32 {fp32['seconds']:.0f} s, "
                  f"bf16 {bf16['seconds']:.0f} s)", "",
                  "| image | fp32 PSNR | bf16 PSNR | ΔPSNR dB | fp32 LPIPS | bf16 LPIPS | ΔLPIPS |",
                  "|---|---|---|---|---|---|---|"]
        medians = [(f"median, {g}", r) for g, r in by_group.items()] + [("**median, all**", summary)]
        for n, r in [*rows.items(), *medians]:
            lines.append(f"| {n} | {r['fp32_psnr']:.2f} | {r['bf16_psnr']:.2f} | {r['delta_psnr']:+.3f} | "
                         f"{r['fp32_lpips']:.4f} | {r['bf16_lpips']:.4f} | {r['delta_lpips']:+.4f} |")
        lines += ["", f"Median of the per-image differences (bf16 - fp32): PSNR {summary['delta_psnr']:+.3f} dB, "
                  f"LPIPS {summary['delta_lpips']:+.4f}: acceptance {'met' if met else 'NOT met'}.", ""]
    return {"speed": speed, "accuracy": methods}, "\n".join(lines) + "\n"


def steps_report(cells: Cells) -> tuple[dict[str, Any], list[str]]:
    by_key = {(c["spec"]["method"], c["spec"].get("init", "w_avg"), c["spec"]["precision"]): c
              for c in cells.all("accuracy")}
    encoder = by_key.get(("w+", "encoder", "bf16"))
    if encoder is None:
        return {}, []
    steps = encoder["spec"]["steps"]
    out: dict[str, Any] = {"steps": steps, "baselines": {}}
    lines = ["## Steps to quality: `w+` init=encoder against init=w_avg", "",
             f"(batched accuracy cells; wall {encoder['seconds']:.0f} s, 1-min load average "
             f"{encoder['load_average_start'][0]:.1f} at the start of the encoder run)", "",
             f"First step at which the encoder-started `w+` (bf16) reaches the w_avg-started run's {steps}-step PSNR "
             f"of the same image, / {steps} (per-image curves of one batched run each; 'not reached' counts as 1). "
             f"Acceptance: median <= {STEPS_FRACTION_LIMIT['generated']} on generated, "
             f"<= {STEPS_FRACTION_LIMIT['celeba_hq']} on celeba_hq.", ""]
    for precision in ("bf16", "fp32"):
        base = by_key.get(("w+", "w_avg", precision))
        if base is None or base["spec"]["steps"] != steps:
            continue
        rows = {}
        for name in encoder["spec"]["images"]:
            target = base["images"][name]["curve"][-1]
            curve = encoder["images"][name]["curve"]
            step = first_reach(curve, target)
            group = image_group(name)
            rows[name] = {"group": group, "w_avg_final_psnr": target, "encoder_step1_psnr": curve[0],
                          "encoder_final_psnr": curve[-1], "step": step,
                          "fraction": 1.0 if step is None else step / steps}
        groups = {g: median([r["fraction"] for r in rows.values() if r["group"] == g]) for g in STEPS_FRACTION_LIMIT}
        met = all(groups[g] is not None and groups[g] <= limit for g, limit in STEPS_FRACTION_LIMIT.items())
        out["baselines"][precision] = {"images": rows, "median_fraction": groups, "met": met}
        lines += [f"### against the w_avg-started w+ in {precision}", "",
                  f"| image | w_avg {steps}-step PSNR | encoder step-1 PSNR | encoder final PSNR | step reached | fraction |",
                  "|---|---|---|---|---|---|"]
        for name, r in rows.items():
            lines.append(f"| {name} | {r['w_avg_final_psnr']:.2f} | {r['encoder_step1_psnr']:.2f} | "
                         f"{r['encoder_final_psnr']:.2f} | {r['step'] or 'not reached'} | {r['fraction']:.3f} |")
        lines += ["", "Median fraction: " + ", ".join(f"{g} {fmt(v, '.3f')}" for g, v in groups.items())
                  + f": acceptance {'met' if met else 'NOT met'}.", ""]
    return out, lines


def timing_report(cells: Cells) -> tuple[dict[str, Any], list[str]]:
    timing_cells = sorted(cells.all("timing"), key=lambda c: c["spec"]["order"])
    cells_by = {(c["spec"]["image"], c["spec"]["config"]): c for c in timing_cells}
    images = list(dict.fromkeys(c["spec"]["image"] for c in timing_cells))
    configs = [c for c in CONFIGURATIONS if any(key[1] == c for key in cells_by)]
    if not images:
        return {}, []
    table: dict[str, dict[str, Any]] = {}
    for image in images:
        reference = cells_by.get((image, "reference"))
        if reference is None:
            continue
        ref_seconds = reference["seconds"][-1]
        row = {"target_psnr": reference["curve"][-1], "reference_seconds": ref_seconds,
               "load_average": reference["load_average_start"]}
        for config in configs:
            cell = cells_by.get((image, config))
            if config == "reference" or cell is None:
                continue
            step = first_reach(cell["curve"], row["target_psnr"])
            row[config] = {"seconds": None if step is None else cell["seconds"][step - 1], "step": step,
                           "best_psnr": max(cell["curve"]), "steps_run": len(cell["curve"]),
                           "ratio": None if step is None else cell["seconds"][step - 1] / ref_seconds}
        table[image] = row
    others = [c for c in configs if c != "reference"]
    summary = {}
    for config in others:
        ratios = [r[config]["ratio"] if r[config]["ratio"] is not None else math.inf
                  for r in table.values() if config in r]
        reached = sum(r[config]["step"] is not None for r in table.values() if config in r)
        summary[config] = {"median_ratio": median(ratios) if ratios else None, "reached": reached, "of": len(ratios),
                           "median_seconds": median([r[config]["seconds"] for r in table.values() if config in r])}
    finite = {c: s["median_ratio"] for c, s in summary.items()
              if s["median_ratio"] is not None and math.isfinite(s["median_ratio"])}
    best = min(finite, key=finite.get) if finite else None
    met = best is not None and finite[best] <= TIME_RATIO_LIMIT
    loads = [v for c in timing_cells for v in (c["load_average_start"][:1] + c["load_average_end"][:1])]
    threads = sorted({c["spec"]["threads"] for c in timing_cells})
    reference_mse = timing_cells[0]["spec"].get("reference_mse", 0.0)
    lines = ["## Wall-clock time to the rosinality projector's PSNR", "",
             "Per image (batch 1, interleaved per image): seconds from the `invert` call to the first step whose PSNR "
             "reaches the reference's last-step PSNR, and that time / the reference's wall time (1000 steps). "
             f"Reference MSE weight {reference_mse:g} (projector.py `--mse`); torch threads {threads}; 1-min load "
             f"average {min(loads):.1f}–{max(loads):.1f} during these runs.", "",
             "| image | target PSNR | reference s | " + " | ".join(others) + " |",
             "|---|---|---|" + "---|" * len(others)]
    for image, r in table.items():
        cols = []
        for config in others:
            c = r.get(config)
            if c is None:
                cols.append("–")
            elif c["step"] is None:
                cols.append(f"not reached (best {c['best_psnr']:.2f} in {c['steps_run']} steps)")
            else:
                cols.append(f"{c['seconds']:.1f} s, step {c['step']} ({c['ratio']:.3f}x)")
        lines.append(f"| {image} | {r['target_psnr']:.2f} | {r['reference_seconds']:.1f} | " + " | ".join(cols) + " |")
    lines += ["", "| configuration | median seconds to target | median ratio to the reference | reached |",
              "|---|---|---|---|"]
    for config, s in summary.items():
        lines.append(f"| {config} | {fmt(s['median_seconds'], '.1f')} | {fmt(s['median_ratio'], '.3f')} | "
                     f"{s['reached']}/{s['of']} |")
    lines += ["", f"Best ganinvert configuration: {best} ({fmt(finite.get(best), '.3f')}x the reference's wall time); "
              f"acceptance (<= {TIME_RATIO_LIMIT}x) {'met' if met else 'NOT met'}.", ""]
    return {"images": table, "summary": summary, "best": best, "met": met, "reference_mse": reference_mse,
            "threads": threads, "load_average_range": [min(loads), max(loads)]}, lines


def write_reports(args: argparse.Namespace, env: dict[str, Any]) -> None:
    cells = Cells(args.out)
    speed = None
    if args.speed_json is not None:
        speed = json.loads(args.speed_json.read_text())
    elif (args.results / "precision.json").is_file():  # keep the speed table an earlier report included
        speed = json.loads((args.results / "precision.json").read_text()).get("speed")
    precision, precision_md = accuracy_report(cells, speed)
    steps, steps_lines = steps_report(cells)
    timing, timing_lines = timing_report(cells)
    results = args.results
    if precision["accuracy"] or speed is not None:
        atomic_write_json(results / "precision.json", {"environment": env, **precision})
        atomic_write_bytes(results / "precision.md", precision_md.encode())
    if steps or timing:
        header = ["# Steps and time to quality", "", "```", json.dumps(env, indent=1), "```", ""]
        atomic_write_json(results / "time_to_quality.json",
                          {"environment": env, "steps_to_quality": steps, "time_to_quality": timing})
        atomic_write_bytes(results / "time_to_quality.md", ("\n".join(header + steps_lines + timing_lines) + "\n").encode())
    log(f"reports under {results}")


def environment(args: argparse.Namespace) -> dict[str, Any]:
    flags = cpu_flags()
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "cpu_flags": {f: f in flags for f in (*NATIVE_BF16_CPU_FLAGS, "avx512f")},
            "load_average_now": load_average(), "steps": args.steps, "images": args.images,
            "reference_mse": args.reference_mse,
            "command": " ".join(["python", "bench/time_to_quality.py", *sys.argv[1:]])}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accuracy", action="store_true", help="bf16 vs fp32 runs and the init=encoder run")
    parser.add_argument("--timing", action="store_true", help="the wall-clock time-to-quality runs")
    parser.add_argument("--report", action="store_true", help="only rebuild the reports from existing cells")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 images, 10 steps, w+ only (figures meaningless)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "ganinvert-ttq-cells",
                        help="cell folder: rerunning with the same folder resumes (default: %(default)s)")
    parser.add_argument("--results", type=Path, default=None, help="report folder (default bench/results; "
                        "with --quick: the --out folder)")
    parser.add_argument("--images", type=int, default=8, help="images (alternating generated / celeba_hq), <= 8")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(ACCURACY_METHODS))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--speed-json", type=Path, default=None,
                        help="output of `bench/speed.py --precision --json` to include in precision.md "
                             "(default: the table the existing precision.json holds)")
    parser.add_argument("--reference-mse", type=float, default=0.0,
                        help="MSE weight of the reference (projector.py --mse; default 0, its default)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.steps, args.methods = min(args.images, 2), 10, ["w+"]
    if args.results is None:
        args.results = args.out if args.quick else RESULTS
    if not 1 <= args.images <= len(GENERATED_SEEDS) + CELEBA_COUNT:
        parser.error(f"--images must be 1..{len(GENERATED_SEEDS) + CELEBA_COUNT}")
    if not (args.accuracy or args.timing or args.report):
        args.accuracy = args.timing = True
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    env = environment(args)
    log(f"environment: {json.dumps(env)}")
    if not args.report:
        bench = Bench(args)
        if args.accuracy:
            bench.accuracy()
        if args.timing:
            bench.timing()
    env["load_average_end"] = load_average()
    write_reports(args, env)


if __name__ == "__main__":
    main()
