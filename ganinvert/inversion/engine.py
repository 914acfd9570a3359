"""The one optimisation loop every inversion method runs in.

    inputs = method.inputs(ctx, params)           # fresh draws where the method is stochastic
    x_hat  = G.synthesis(**inputs)
    loss   = sum_i [lambda_mse * MSE(A(x_hat_i), y_i) + lambda_lpips * LPIPS(A(x_hat_i), y_i) + R_i]
    Adam step (betas 0.9/0.999, per-group LR schedule); method.project(ctx, params)

Every hook gets the same :class:`~ganinvert.inversion.methods.base.InversionContext` (generator,
random streams, image or measurement, operator, LPIPS, stage and step), updated as the loop runs.
The loop stops at the first non-finite loss, naming the step.

Each image has its own ``torch.Generator`` and its own slice of every tensor, and the loss is a
sum of per-image terms, so a batch equals the same images inverted one by one.

Long runs write a checkpoint every ``checkpoint_every`` steps (tensors, Adam state, generator
states, history); ``resume=True`` continues from it and ends with the same tensors as an
uninterrupted run.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..errors import GanInvertError
from ..checks import check_finite, check_images, check_seed
from ..io import atomic_torch_save
from ..models.precision import resolve_precision, synthesis_generator
from ..models.stylegan2 import StyleGAN2Generator
from .losses import ReconstructionLoss
from .methods import Method, make_method
from .methods.base import InversionContext, Stage
from .result import InversionResult
from .schedules import get_schedule


@dataclass
class Progress:
    """What the callback sees after each step.

    Attributes:
        stage: the running stage's name; step: steps done in all stages; total: steps of the run.
        loss: mean loss of the step; psnr: mean PSNR to the target (None without one).
        image: this step's rendering (N, 3, H, W), detached: for a live view, nothing to keep.
    """

    stage: str
    step: int
    total: int
    loss: float
    psnr: float | None
    image: torch.Tensor


@dataclass
class _State:
    params: dict[str, torch.Tensor]
    stage_index: int = 0
    step: int = 0
    global_step: int = 0
    history: dict[str, list[float]] = field(default_factory=lambda: {"loss": [], "psnr": []})
    seconds: float = 0.0
    optimizer_state: dict | None = None


def _fingerprint(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if torch.is_tensor(part):
            digest.update(part.detach().cpu().contiguous().numpy().tobytes())
        else:
            digest.update(repr(part).encode())
    return digest.hexdigest()[:16]


def _psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR per image of [-1, 1] images mapped to [0, 1] (data range 1)."""
    mse = ((x - y) / 2).square().reshape(x.shape[0], -1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-12))


def invert(G: StyleGAN2Generator, target: torch.Tensor | None, method: str | Method = "w+", *,
           preset: str | None = None, settings: dict[str, Any] | None = None,
           operator: Callable[[torch.Tensor], torch.Tensor] | None = None,
           measurement: torch.Tensor | None = None,
           seed: int | Sequence[int] = 0, lpips: torch.nn.Module | None = None,
           checkpoint_path: str | Path | None = None, checkpoint_every: int = 100, resume: bool = False,
           progress: bool = True, callback: Callable[[Progress], bool | None] | None = None,
           precision: str = "fp32") -> InversionResult:
    """Invert a batch of images (or measurements of them) into ``G``.

    Args:
        G: the generator; it is not modified.
        target: (N, 3, H, W) clean images in [-1, 1] at G's resolution, used for the loss when no
            ``measurement`` is given and for the PSNR shown during optimisation; may be None when a
            measurement is given and the clean image is unknown.
        method: a registered method name (``ganinvert.inversion.methods.list_methods()``) or instance.
        preset: a preset of that method; ``settings``: overrides of individual settings.
        operator: forward operator A (``y = A(x)``); identity when None.
        measurement: y, (N, ...) what A(x_hat) is compared with; ``A(target)`` when None.
        seed: one seed for every image, or one per image.
        lpips: an LPIPS module, required when the method's ``lambda_lpips`` > 0 and y is an image.
        checkpoint_path, checkpoint_every, resume: see the module docstring.
        progress: show a tqdm bar with loss and PSNR.
        precision: the synthesis network's precision, ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"auto"``
            (:func:`~ganinvert.models.precision.resolve_precision`); the optimised tensors, the loss
            and Adam's state stay float32. Recorded in the result (``extra["precision"]``).
        callback: called with a :class:`Progress` after every step; when it returns True the run
            stops there and the result holds the tensors of that step (``extra["stopped_at"]``).

    Returns:
        An :class:`InversionResult` holding every tensor of the method.

    Example:
        >>> result = invert(G, images, "w+", settings={"steps": 200}, lpips=LPIPS(weights))  # doctest: +SKIP
        >>> result.render(G).shape  # doctest: +SKIP
        torch.Size([4, 3, 64, 64])
    """
    m = method if isinstance(method, Method) else make_method(method, preset, settings)
    target, y, seeds = _checked_problem(G, target, measurement, operator, seed)
    s = m.settings
    if s.lambda_lpips and lpips is None and y.ndim == 4 and y.shape[1] == 3:
        raise GanInvertError(f"method {m.name} uses LPIPS (lambda_lpips={s.lambda_lpips}); pass LPIPS weights "
                             "(--lpips-weights / GANINVERT_LPIPS_WEIGHTS) or set lambda_lpips=0 (--no-lpips)")
    chosen = resolve_precision(precision, G.w_avg.device)
    rngs = [torch.Generator().manual_seed(sd) for sd in seeds]
    source = getattr(G, "source", None)
    run_id = _fingerprint(m.name, s.to_dict(), seeds, y, getattr(source, "sha256", None), G.config(), chosen.name)
    # With a forward operator the method sees only the measurement, never the clean image; without
    # one, a measured image (a noisy photo given as the target-less measurement) is the picture itself.
    ctx = InversionContext(G=G, rngs=rngs, measurement=y, operator=operator, lpips=lpips,
                           image=(target if target is not None else y) if operator is None else None)
    init_started = time.perf_counter()
    state = _State(params=m.init_params(ctx))
    # Initialisation is part of the cost (an encoder method's whole forward pass, sam-opt's probes).
    init_seconds = time.perf_counter() - init_started
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    if resume and ckpt is not None and ckpt.exists():
        state = _load_checkpoint(ckpt, run_id, rngs, G.w_avg.device)

    stages = m.stages(G)
    loop = _Loop(m, ctx, ReconstructionLoss(s.lambda_mse, s.lambda_lpips, lpips), target, state,
                 sum(st.steps for st in stages), callback, synthesis_generator(G, chosen.dtype))
    bar = tqdm(total=loop.total, initial=state.global_step, disable=not progress, desc=m.name, leave=False,
               dynamic_ncols=True)
    try:
        while state.stage_index < len(stages) and not loop.stopped:
            loop.run_stage(stages[state.stage_index], bar,
                           (lambda opt: _save_checkpoint(ckpt, run_id, state, opt, rngs)) if ckpt else None,
                           checkpoint_every)
            if not loop.stopped:
                state.stage_index += 1
                state.step = 0
    finally:
        bar.close()
    for tensor in state.params.values():
        tensor.requires_grad_(False)
    if loop.stopped:  # give a stopped run the tensors of a finished one, so it renders like one
        with torch.no_grad():
            for ctx.stage_index in range(state.stage_index + 1, len(stages)):
                ctx.step = 0
                m.begin_stage(ctx, state.params)
    if ckpt is not None and ckpt.exists():
        ckpt.unlink()
    return InversionResult(
        method=m.name, preset=preset if preset is not None else m.default_preset, settings=s.to_dict(),
        params={k: v.detach() for k, v in state.params.items()}, seeds=seeds,
        generator=_generator_record(G), history=state.history, seconds=state.seconds + init_seconds,
        extra={"precision": chosen.name, **({"stopped_at": state.global_step} if loop.stopped else {})})


def _checked_problem(G: StyleGAN2Generator, target: torch.Tensor | None, measurement: torch.Tensor | None,
                     operator: Callable[[torch.Tensor], torch.Tensor] | None, seed: int | Sequence[int]
                     ) -> tuple[torch.Tensor | None, torch.Tensor, list[int]]:
    """The target on G's device, the measurement y and one seed per image, each checked."""
    if target is None and measurement is None:
        raise GanInvertError("invert needs a target image or a measurement")
    n = (target if target is not None else measurement).shape[0]
    if target is not None and measurement is not None and measurement.shape[0] != n:
        raise GanInvertError(f"got {measurement.shape[0]} measurements for {n} target images")
    check_finite(G.w_avg, "the generator's w_avg")
    device = G.w_avg.device
    if target is not None:
        target = check_images(target, G.resolution, "target").to(device)
    with torch.no_grad():
        y = measurement if measurement is not None else (target if operator is None else operator(target))
    y = check_finite(y.to(device), "measurement")
    seeds = [check_seed(int(seed))] * n if isinstance(seed, int) else [check_seed(int(sd)) for sd in seed]
    if len(seeds) != n:
        raise GanInvertError(f"got {len(seeds)} seeds for {n} images")
    return target, y, seeds


@dataclass
class _Loop:
    """The optimisation of one run, stage by stage; ``state`` is what a checkpoint holds."""

    method: Method
    ctx: InversionContext
    loss_fn: ReconstructionLoss
    target: torch.Tensor | None
    state: _State
    total: int
    callback: Callable[[Progress], bool | None] | None
    renderer: StyleGAN2Generator  # ctx.G, or its reduced-precision copy
    stopped: bool = False

    def optimizer(self, stage: Stage) -> torch.optim.Adam:
        """Adam over the stage's groups (resumed from the checkpoint's state when there is one)."""
        params = self.state.params
        for name in stage.names:
            if name not in params:
                raise RuntimeError(f"method {self.method.name} stage {stage.name} optimises unknown tensor {name}")
        for name, tensor in params.items():
            tensor.requires_grad_(name in stage.names)
        optimizer = torch.optim.Adam([{"params": [params[nm] for nm in g.names], "lr": g.lr} for g in stage.groups],
                                     betas=(0.9, 0.999))
        if self.state.optimizer_state is not None:
            optimizer.load_state_dict(self.state.optimizer_state)
            self.state.optimizer_state = None
        return optimizer

    def run_stage(self, stage: Stage, bar: tqdm, save: Callable[[torch.optim.Optimizer], None] | None,
                  checkpoint_every: int) -> None:
        m, ctx, state = self.method, self.ctx, self.state
        y = ctx.measurement
        A = ctx.operator if ctx.operator is not None else (lambda x: x)
        ctx.stage_index, ctx.step = state.stage_index, state.step
        if state.step == 0 and state.optimizer_state is None:
            m.begin_stage(ctx, state.params)
        optimizer = self.optimizer(stage)
        schedules = [get_schedule(g.schedule) for g in stage.groups]
        started = time.perf_counter() - state.seconds
        while state.step < stage.steps:
            t = state.step / stage.steps
            for group, spec, sched in zip(optimizer.param_groups, stage.groups, schedules):
                group["lr"] = spec.lr * sched(t)
            ctx.step = state.step
            inputs = m.inputs(ctx, state.params)
            x_hat = inputs.render(self.renderer)
            per_image = self.loss_fn(A(x_hat), y)
            reg = m.regulariser(ctx, state.params, inputs)
            if reg is not None:
                per_image = per_image + reg
            if not bool(torch.isfinite(per_image).all()):
                raise GanInvertError(f"method {m.name}: the loss became non-finite at step {state.global_step + 1} "
                                     f"(stage {stage.name}); lower the learning rate or check the settings")
            optimizer.zero_grad(set_to_none=True)
            per_image.sum().backward()
            optimizer.step()
            m.project(ctx, state.params)
            state.step += 1
            state.global_step += 1
            self.record(stage, float(per_image.detach().mean()), x_hat, bar)
            state.seconds = time.perf_counter() - started
            if save is not None and state.global_step % checkpoint_every == 0:
                save(optimizer)
            if self.stopped:
                return

    def record(self, stage: Stage, loss_value: float, x_hat: torch.Tensor, bar: tqdm) -> None:
        """History, progress bar and callback after a step."""
        state = self.state
        psnr = float(_psnr(x_hat.detach(), self.target).mean()) if self.target is not None else None
        state.history["loss"].append(loss_value)
        state.history["psnr"].append(psnr if psnr is not None else float("nan"))
        bar.update(1)
        if state.global_step % 10 == 0 or state.step == stage.steps:
            bar.set_postfix(loss=f"{loss_value:.4f}", psnr="-" if psnr is None else f"{psnr:.2f}", refresh=False)
        if self.callback is not None:
            image = x_hat.detach()
            self.stopped = bool(self.callback(Progress(stage.name, state.global_step, self.total, loss_value, psnr,
                                                       image)))


def _generator_record(G: StyleGAN2Generator) -> dict[str, Any]:
    source = getattr(G, "source", None)
    return {"sha256": getattr(source, "sha256", None), "path": getattr(source, "path", None),
            "config": G.config()}


def _save_checkpoint(path: Path, run_id: str, state: _State, optimizer: torch.optim.Optimizer,
                     rngs: Sequence[torch.Generator]) -> None:
    atomic_torch_save({
        "run_id": run_id, "params": {k: v.detach().clone() for k, v in state.params.items()},
        "stage_index": state.stage_index, "step": state.step, "global_step": state.global_step,
        "history": state.history, "seconds": state.seconds, "optimizer": optimizer.state_dict(),
        "rng_states": [g.get_state() for g in rngs],
    }, path)


def _load_checkpoint(path: Path, run_id: str, rngs: Sequence[torch.Generator], device: torch.device) -> _State:
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a checkpoint cut short by a kill mid-write cannot exist (atomic), but a foreign file can
        raise GanInvertError(f"cannot read checkpoint {path}: {type(exc).__name__}") from None
    if ck.get("run_id") != run_id:
        raise GanInvertError(f"checkpoint {path} belongs to a different run (method, settings, seed, image or "
                             "generator differ); delete it or drop --resume")
    for g, st in zip(rngs, ck["rng_states"]):
        g.set_state(st.cpu())  # CPU generators; map_location may have moved their states
    return _State(params=ck["params"], stage_index=ck["stage_index"], step=ck["step"],
                  global_step=ck["global_step"], history=ck["history"], seconds=ck["seconds"],
                  optimizer_state=ck["optimizer"])
