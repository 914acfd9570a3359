"""One resumable training loop for every learned inverter (HyperInverter, SAM's predictor, F/Z+'s encoder).

An inverter is an :class:`InverterTrainer`: its networks and optimisers, one training step and
how the trained network is exported. :func:`train_inverter` owns everything else: the step loop
with progress, the JSONL log, periodic checkpoints (networks, optimisers, RNG state, step) written
atomically, resuming, and the final export. Training data come from :class:`TrainingData`: the
generator's own samples (every draw from the run's ``torch.Generator``) and, optionally, real
images from a folder.

Example:
    >>> G = load_generator("default")                                        # doctest: +SKIP
    >>> config = InverterTrainConfig(kind="hyperinverter", out="runs/hyper", steps=4000)  # doctest: +SKIP
    >>> train_inverter(G, config)                                            # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm import tqdm

from ...errors import CheckpointError, GanInvertError
from ...io import atomic_torch_save
from ...models.stylegan2 import StyleGAN2Generator
from ...settings import coerce_settings, typed_fields
from ..data import ImageFolder
from ..trainer import random_noise

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
NETWORK_NAME = "network.safetensors"

# Fields that may change when resuming (extending a run, moving the output); every other field
# (and every trainer setting) must match the checkpoint.
_RESUMABLE_FIELDS = {"out", "steps", "resume", "checkpoint_every", "log_every", "device", "export"}


@dataclass
class GeneratedBatch:
    """Samples of the generator with everything that made them."""

    z: torch.Tensor       # (N, style_dim)
    w: torch.Tensor       # (N, style_dim), before truncation
    ws: torch.Tensor      # (N, num_ws, style_dim), after truncation, as rendered
    noise: list[torch.Tensor]
    image: torch.Tensor   # (N, 3, R, R) in [-1, 1]


class TrainingData:
    """Images to train an inverter on: generator samples, plus real images when a folder is given.

    Args:
        G: the frozen generator.
        rng: the run's generator; every draw comes from it, so a resumed run draws what an
            uninterrupted one would.
        folder: optional image folder (any size; resized to ``G.resolution``).
        truncation: psi of the sampled ws; 1.0 samples the full distribution.
    """

    def __init__(self, G: StyleGAN2Generator, rng: torch.Generator, folder: str | Path | None = None,
                 truncation: float = 1.0) -> None:
        self.G = G
        self.rng = rng
        self.truncation = truncation
        self.folder = ImageFolder(folder, G.resolution) if folder else None
        self.device = G.w_avg.device

    @torch.no_grad()
    def generated(self, n: int) -> GeneratedBatch:
        G = self.G
        z = torch.randn(n, G.style_dim, generator=self.rng).to(self.device)
        w = G.mapping(z)
        w_t = G.w_avg + self.truncation * (w - G.w_avg)
        ws = G.broadcast(w_t).contiguous()
        noise = random_noise(G, n, self.rng, self.device)
        image = G.synthesis(ws, noise).clamp(-1, 1)
        return GeneratedBatch(z=z, w=w, ws=ws, noise=noise, image=image)

    def real(self, n: int) -> torch.Tensor | None:
        """``n`` random images of the folder (None without a folder)."""
        return None if self.folder is None else self.folder.sample(n, self.rng).to(self.device)


@dataclass
class InverterTrainConfig:
    """What every inverter training run has; ``settings`` holds the trainer's own fields.

    Attributes:
        kind: registered trainer name (``ganinvert train-inverter --help`` lists them).
        out: run directory (checkpoint, log, exported network).
        steps: total optimisation steps.
        batch: images per step.
        seed: seed of the run's ``torch.Generator`` (data, noise, initialisation).
        images: optional folder of real images mixed into training (see the trainer).
        lpips_weights: LPIPS AlexNet weights for the perceptual terms (None: MSE only).
        settings: trainer-specific settings (see its ``Settings`` dataclass).
    """

    kind: str
    out: str | Path
    steps: int = 2000
    batch: int = 8
    seed: int = 0
    images: str | None = None
    lpips_weights: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 250
    log_every: int = 25
    resume: bool = False
    device: str | None = None
    export: str | None = None

    def validate(self) -> None:
        typed_fields(self)
        if self.steps <= 0 or self.batch <= 0:
            raise GanInvertError(f"steps and batch must be > 0, got {self.steps} and {self.batch}")
        if self.checkpoint_every <= 0 or self.log_every <= 0:
            raise GanInvertError("checkpoint_every and log_every must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


class InverterTrainer:
    """Base class: subclasses build their networks in ``__init__`` and define ``train_step``.

    Subclasses set ``kind``, ``Settings`` (a dataclass whose fields ``--set`` fills, converted to
    their types by :func:`ganinvert.settings.coerce_settings`; presets cite their source) and implement
    :meth:`train_step` and :meth:`export`; ``modules`` and ``optimizers`` list what a checkpoint
    saves.
    """

    kind: ClassVar[str]
    Settings: ClassVar[type]

    def __init__(self, G: StyleGAN2Generator, config: InverterTrainConfig, data: TrainingData,
                 lpips: torch.nn.Module | None) -> None:
        self.G = G
        self.config = config
        self.data = data
        self.lpips = lpips
        self.settings = self.Settings(**coerce_settings(self.Settings, config.settings, owner=f"inverter {self.kind}"))
        self.modules: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def train_step(self, step: int) -> dict[str, float]:
        """One optimisation step; returns scalar losses for the log."""
        raise NotImplementedError

    def export(self, path: Path, meta: dict[str, Any]) -> Path:
        """Write the trained network (via :func:`ganinvert.models.encoders.save_network`)."""
        raise NotImplementedError


#: kind -> trainer class; each inverter module registers itself with :func:`register_trainer`.
TRAINERS: dict[str, type[InverterTrainer]] = {}


def register_trainer(cls: type[InverterTrainer]) -> type[InverterTrainer]:
    TRAINERS[cls.kind] = cls
    return cls


def _state(trainer: InverterTrainer, rng: torch.Generator, step: int, wall: float) -> dict[str, Any]:
    return {
        "modules": {k: m.state_dict() for k, m in trainer.modules.items()},
        "optimizers": {k: o.state_dict() for k, o in trainer.optimizers.items()},
        "rng": rng.get_state(),
        "step": step,
        "config": trainer.config.to_dict(),
        "wall_time_s": wall,
    }


def _load(path: Path, trainer: InverterTrainer, rng: torch.Generator) -> tuple[int, float]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(f"cannot read inverter checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or not {"modules", "optimizers", "rng", "step", "config"} <= set(ckpt):
        raise CheckpointError(f"{path} is not a ganinvert inverter training checkpoint")
    saved, current = ckpt["config"], trainer.config.to_dict()
    changed = sorted(k for k in current if k not in _RESUMABLE_FIELDS and saved.get(k) != current[k])
    if changed:
        raise GanInvertError(f"cannot resume {path}: settings differ from the checkpoint's ({', '.join(changed)})")
    for k, module in trainer.modules.items():
        module.load_state_dict(ckpt["modules"][k])
    for k, optimizer in trainer.optimizers.items():
        optimizer.load_state_dict(ckpt["optimizers"][k])
    rng.set_state(ckpt["rng"])
    return int(ckpt["step"]), float(ckpt.get("wall_time_s", 0.0))


def train_inverter(G: StyleGAN2Generator, config: InverterTrainConfig,
                   lpips: torch.nn.Module | None = None) -> Path:
    """Train (or resume, with ``config.resume``) the inverter ``config.kind`` for ``G``.

    Returns the exported network (``config.export`` or ``OUT/network.safetensors``). ``G`` is
    frozen; the checkpoint ``OUT/checkpoint.pt`` lets a killed run continue where its last
    checkpoint left off and compute the same tensors as an uninterrupted run (same device and
    thread count).
    """
    config.validate()
    if config.kind not in TRAINERS:
        raise GanInvertError(f"unknown inverter {config.kind!r}; known: {', '.join(sorted(TRAINERS))}")
    G.requires_grad_(False).eval()
    out = Path(config.out)
    checkpoint = out / CHECKPOINT_NAME
    rng = torch.Generator().manual_seed(config.seed)
    data = TrainingData(G, rng, config.images)
    trainer = TRAINERS[config.kind](G, config, data, lpips)
    step, wall = 0, 0.0
    if config.resume:
        if not checkpoint.is_file():
            raise GanInvertError(f"nothing to resume: {checkpoint} does not exist")
        step, wall = _load(checkpoint, trainer, rng)
    elif checkpoint.exists():
        raise GanInvertError(f"{checkpoint} already exists; pass --resume or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for module in trainer.modules.values():
        module.train()
    bar = tqdm(total=config.steps, initial=min(step, config.steps), desc=f"train {config.kind}", unit="step",
               dynamic_ncols=True)
    tick = time.perf_counter()
    try:
        while step < config.steps:
            stats = trainer.train_step(step)
            if not all(math.isfinite(v) for v in stats.values()):
                raise GanInvertError(f"training diverged at step {step} (non-finite loss: {stats})")
            step += 1
            wall += time.perf_counter() - tick
            bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                bar.set_postfix({k: f"{v:.4f}" for k, v in stats.items()})
                with open(out / LOG_NAME, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": step, "wall_time_s": round(wall, 1), **stats}) + "\n")
            if step % config.checkpoint_every == 0 or step == config.steps:
                atomic_torch_save(_state(trainer, rng, step, wall), checkpoint)
            tick = time.perf_counter()
    finally:
        bar.close()
    for module in trainer.modules.values():
        module.eval()
    meta = {"steps": step, "batch": config.batch, "seed": config.seed, "wall_time_s": round(wall, 1),
            "images": config.images, "lpips": config.lpips_weights is not None, "settings": config.settings}
    return trainer.export(Path(config.export) if config.export else out / NETWORK_NAME, meta)
