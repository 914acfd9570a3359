"""rosinality/stylegan2-pytorch ``projector.py`` (W, or W+ with ``--w_plus``) vs ganinvert.

Official side: the script runs as ``__main__`` (``runpy``-style ``exec`` of its own file) with
its own argument parser, on one image per run, in a scratch folder. The harness changes only:

* ``device = "cuda"`` -> ``"cpu"`` and the two hard-coded ``512`` of ``style_dim`` / ``8`` of
  ``n_mlp`` -> the checkpoint's values (exact text substitutions, each required to match once);
* the stand-ins of :mod:`bench.parity.standins` (``op``, ``torchvision.transforms``, ``lpips``)
  and the Generator width table of the checkpoint;
* instrumentation: ``torch.optim.Adam`` is a subclass that, at each ``zero_grad`` (once per
  iteration, after the previous iteration's ``noise_normalize_``), renders the clean latent with
  the official ``g_ema`` every ``every`` steps under ``no_grad`` (no random draw) and times steps.

ganinvert side: the closest configuration (ganinvert has no projector preset; see README):
``pti`` stage 1 (its StyleGAN2-ADA w projector) with ``pivot_steps = steps``, ``pivot_lr 0.1``
(projector ``--lr``), ``lambda_mse 0`` / ``lambda_lpips 1`` (projector ``--mse 0``, perceptual only),
noise regularisation 1e5, w-noise 0.05 decaying over 75 %, and rampup-cosine. Stage 2 is not run:
the callback stops the run at the end of stage 1, with the optimised noise maps still in place.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ganinvert.inversion.engine import invert
from ganinvert.inversion.methods import make_method
from ganinvert.models.stylegan2 import StyleGAN2Generator

from . import standins

SCRIPT = "projector.py"
#: ganinvert's closest match of projector.py's defaults (W mode); pti stage 2 is cut off.
GANINVERT_SETTINGS = {"pivot_lr": 0.1, "pivot_schedule": "rampup-cosine", "pivot_noise": True,
                      "noise_regularize_weight": 1e5, "w_noise_factor": 0.05, "w_noise_ramp": 0.75,
                      "lambda_mse": 0.0, "lambda_lpips": 1.0, "locality": False, "steps": 1}


def source_patches(config: dict) -> list[tuple[str, str, str]]:
    """(old, new, why) exact substitutions applied to the script text."""
    d, n = config["style_dim"], config["n_mlp"]
    return [('device = "cuda"', 'device = "cpu"', "CPU: device"),
            ("Generator(args.size, 512, 8)", f"Generator(args.size, {d}, {n})",
             f"generator config: style_dim {d}, n_mlp {n} (script hard-codes 512, 8)"),
            ("torch.randn(n_mean_latent, 512,", f"torch.randn(n_mean_latent, {d},",
             f"generator config: z of style_dim {d} for latent_mean/latent_std")]


def patched_source(text: str, patches: list[tuple[str, str, str]]) -> str:
    for old, new, _ in patches:
        count = text.count(old)
        if count != 1:
            raise RuntimeError(f"{SCRIPT}: expected exactly one {old!r}, found {count}; the official file changed")
        text = text.replace(old, new)
    return text


class _Recorder:
    """Per-step state of the official run, seen through its optimiser."""

    def __init__(self, every: int, measure: Callable[[torch.Tensor], dict[str, float]]) -> None:
        self.every, self.measure = every, measure
        self.generators: list[torch.nn.Module] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.calls = 0
        self.curve: list[dict[str, float]] = []
        self.step_seconds = 0.0
        self.last: float | None = None

    def render(self) -> torch.Tensor:
        params = self.optimizer.param_groups[0]["params"]
        with torch.no_grad():
            image, _ = self.generators[-1]([params[0]], input_is_latent=True, noise=params[1:])
        return image

    def on_zero_grad(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.step_seconds += now - self.last
        done = self.calls  # iterations completed before this one
        self.calls += 1
        if done and done % self.every == 0:
            self.curve.append({"step": done, **self.measure(self.render())})
        self.last = time.perf_counter()

    def finish(self, steps: int) -> None:
        if self.last is not None:
            self.step_seconds += time.perf_counter() - self.last
        if self.calls != steps:
            raise RuntimeError(f"official run made {self.calls} iterations, expected {steps}")
        self.curve.append({"step": steps, **self.measure(self.render())})


def run_official(official: Path, ckpt: Path, image: Path, config: dict, steps: int, every: int, seed: int,
                 lpips: torch.nn.Module, measure: Callable[[torch.Tensor], dict[str, float]],
                 w_plus: bool = False) -> dict[str, Any]:
    official = Path(official).resolve()
    patches = standins.install_rosinality_ops(official)
    patches += standins.install_torchvision_transforms()
    patches += standins.install_lpips(lpips)
    model = standins.import_official_model(official)
    recorder = _Recorder(every, measure)
    base_generator = standins.with_channels(model.Generator, config["channels"])

    class Generator(base_generator):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            recorder.generators.append(self)

    class Adam(torch.optim.Adam):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            recorder.optimizer = self

        def zero_grad(self, set_to_none: bool = True) -> None:
            recorder.on_zero_grad()
            super().zero_grad(set_to_none)

    model.Generator = Generator
    patches.append(f"model.Generator width table -> checkpoint channels {config['channels']}")
    source_path = official / SCRIPT
    text = patched_source(source_path.read_text(), source_patches(config))
    patches += [why for _, _, why in source_patches(config)]
    argv = [str(source_path), "--ckpt", str(ckpt), "--size", str(config["resolution"]), "--step", str(steps)]
    argv += (["--w_plus"] if w_plus else []) + [str(image)]
    saved_argv, saved_adam, saved_cwd = list(os.sys.argv), torch.optim.Adam, os.getcwd()
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            os.sys.argv = argv
            torch.optim.Adam = Adam
            os.chdir(scratch)
            started = time.perf_counter()
            exec(compile(text, str(source_path), "exec"), {"__name__": "__main__", "__file__": str(source_path)})
            wall = time.perf_counter() - started
            recorder.finish(steps)
        finally:
            os.chdir(saved_cwd)
            torch.optim.Adam = saved_adam
            os.sys.argv = saved_argv
            standins.uninstall()
    return {"curve": recorder.curve, "seconds_per_step": recorder.step_seconds / steps, "wall_seconds": wall,
            "patches": patches, "argv": argv[1:], "seed": seed}


def run_ganinvert(G: StyleGAN2Generator, target: torch.Tensor, steps: int, every: int, seed: int,
                  lpips: torch.nn.Module, measure: Callable[[torch.Tensor], dict[str, float]]) -> dict[str, Any]:
    settings = {**GANINVERT_SETTINGS, "pivot_steps": steps}
    method = make_method("pti", None, settings)
    latest: dict[str, Any] = {}
    original_project = method.project

    def project(ctx, params) -> None:  # keep a handle on the live tensors after each step
        original_project(ctx, params)
        latest["params"] = params

    method.project = project
    curve: list[dict[str, float]] = []
    timing = {"seconds": 0.0, "last": None}

    def callback(progress) -> bool:
        now = time.perf_counter()
        timing["seconds"] += now - (timing["last"] if timing["last"] is not None else started)
        if progress.step % every == 0 or progress.step == steps:
            with torch.no_grad():
                image = method.render_inputs(G, latest["params"]).render(G)
            curve.append({"step": progress.step, **measure(image)})
        timing["last"] = time.perf_counter()
        return progress.step >= steps

    started = time.perf_counter()
    invert(G, target, method, seed=seed, lpips=lpips, progress=False, callback=callback)
    wall = time.perf_counter() - started
    return {"curve": curve, "seconds_per_step": timing["seconds"] / steps, "wall_seconds": wall,
            "method": "pti (stage 1 only)", "settings": settings, "seed": seed}
