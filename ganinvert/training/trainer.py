"""StyleGAN2 training (optionally distilled from a teacher generator), resumable and seeded.

Ingredients and where their settings come from:

* non-saturating logistic loss, lazy R1 on reals every ``d_reg_every=16`` steps, Adam
  (lr 0.002, betas (0, 0.99)) with the lazy-regularisation correction of lr and betas:
  Karras et al., "Analyzing and Improving the Image Quality of StyleGAN" (CVPR 2020), Sec. 3.1
  and Appendix B, as in rosinality/stylegan2-pytorch ``train.py``. Path-length regularisation
  is left out: at 64 px on a CPU it would cost a third more time for a smoothness prior the
  short runs here do not need;
* R1 weight ``gamma = 0.0002 * resolution**2 / batch``: the heuristic of StyleGAN2-ADA
  (Karras et al. 2020, ``train.py`` config "auto");
* generator EMA with half-life ``batch * 10 / 32`` kimg and a 5 % ramp-up: StyleGAN2-ADA
  ``training_loop.py`` (``ema_kimg``, ``ema_rampup=0.05``);
* style mixing with probability 0.9 at a random crossover layer: StyleGAN2 Sec. 2 /
  rosinality ``--mixing 0.9``; drawn per sample here so distillation can use the unmixed ones;
* DiffAugment (color, translation, cutout) before the discriminator: Zhao et al. 2020,
  see :mod:`ganinvert.training.augment`;
* distillation from a teacher (``--data teacher:NAME``): the student's z starts with the
  teacher's latent (the first ``teacher.latent_dim`` entries), and the student regresses onto the
  teacher's image with L1 (+ LPIPS when weights are given) for ``distill_steps`` steps, then trains
  adversarially against teacher samples with the L1 term kept as an anchor
  (``distill_weight``), in the spirit of Aguinaldo et al., "Compressing GANs using Knowledge
  Distillation" (2019).

Resuming restores G, D, G_ema, both optimisers, the RNG state and the step, so a run stopped at a
checkpoint and resumed computes the same tensors as an uninterrupted one (on the same device
and thread count).

Example:
    >>> cfg = TrainConfig(data="teacher:gan-face-generate", out="runs/faces64", steps=20000,
    ...                   distill_steps=12000)                       # doctest: +SKIP
    >>> checkpoint = train(cfg)                                      # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..errors import CheckpointError, GanInvertError
from ..io import atomic_torch_save, save_pil, tensor_to_pil
from ..models.discriminator import Discriminator
from ..models.stylegan2 import StyleGAN2Generator
from ..settings import typed_fields
from .augment import parse_policy, diff_augment
from .data import ImageFolder
from .teacher import is_teacher_spec, load_teacher

CHECKPOINT_NAME = "checkpoint.pt"
GENERATOR_NAME = "generator.pt"
SAMPLES_DIR = "samples"
LOG_NAME = "log.jsonl"

#: Default widths: small enough that inverting at 64 px is fast on a CPU (see the model card).
DEFAULT_CHANNELS = {4: 256, 8: 256, 16: 256, 32: 128, 64: 64}

# Fields that may change when resuming (extending a run, moving the distillation/adversarial
# boundary or re-weighting the teacher anchor for the steps still to come); every other field
# must match the checkpoint.
_RESUMABLE_FIELDS = {"out", "steps", "distill_steps", "distill_weight", "resume", "checkpoint_every",
                     "sample_every", "log_every", "device"}


@dataclass
class TrainConfig:
    """Everything a training run depends on (stored in each checkpoint).

    Attributes:
        data: an image folder, or ``teacher:gan-face-generate`` to distil that generator.
        out: run directory (checkpoint, exported generator, sample grids, log).
        resolution: image side in pixels (a power of two).
        steps: total optimisation steps, distillation included.
        batch: images per step.
        seed: seeds every random draw of the run.
        style_dim, n_mlp, channels: generator architecture (the discriminator mirrors ``channels``).
        lr: Adam learning rate of both networks (rosinality ``train.py``).
        r1_gamma: R1 weight; None uses the StyleGAN2-ADA heuristic ``0.0002 * R**2 / batch``.
        d_reg_every: lazy R1 interval (StyleGAN2 Sec. 3.1).
        mixing_prob: style-mixing probability per sample.
        augment: DiffAugment policy; None means ``"color,translation,cutout"`` for image folders
            and none for a teacher (its supply of images is unlimited).
        distill_steps: leading steps of pure distillation (teacher data only).
        distill_weight: weight of the L1 anchor to the teacher during adversarial steps.
        distill_mapping_lr_mul: learning-rate factor of the mapping network while distilling
            (100 undoes its 0.01 multiplier).
        distill_beta1: Adam beta1 while distilling (StyleGAN2's 0 suits the adversarial game,
            regression converges faster with momentum).
        lpips_weights: LPIPS AlexNet weights; when given, LPIPS is added to the distillation loss.
        ema_kimg, ema_rampup: generator EMA half-life (None: ``batch * 10 / 32``) and ramp-up.
        checkpoint_every, sample_every, log_every: intervals in steps.
        resume: continue from ``out/checkpoint.pt``.
        device: ``"cpu"``, ``"cuda"``, ...; None picks CUDA when available.
    """

    data: str
    out: str | Path
    resolution: int = 64
    steps: int = 10000
    batch: int = 16
    seed: int = 0
    style_dim: int = 256
    n_mlp: int = 8
    channels: dict[int, int] = field(default_factory=lambda: dict(DEFAULT_CHANNELS))
    lr: float = 0.002
    r1_gamma: float | None = None
    d_reg_every: int = 16
    mixing_prob: float = 0.9
    augment: str | None = None
    distill_steps: int = 0
    distill_weight: float = 10.0
    distill_mapping_lr_mul: float = 100.0
    distill_beta1: float = 0.9
    lpips_weights: str | None = None
    ema_kimg: float | None = None
    ema_rampup: float = 0.05
    checkpoint_every: int = 500
    sample_every: int = 500
    log_every: int = 50
    resume: bool = False
    device: str | None = None

    def validate(self) -> None:
        """Raise :class:`GanInvertError` for values no run could use (converting each field to its
        type first, see :mod:`ganinvert.settings`: numbers are finite, lr > 0, distill_weight >= 0)."""
        typed_fields(self)
        if self.resolution < 8 or 2 ** int(math.log2(self.resolution)) != self.resolution:
            raise GanInvertError(f"resolution must be a power of two >= 8, got {self.resolution}")
        for name in ("steps", "batch", "style_dim", "n_mlp", "d_reg_every", "checkpoint_every",
                     "sample_every", "log_every"):
            if getattr(self, name) < 1:
                raise GanInvertError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.mixing_prob <= 1.0:
            raise GanInvertError(f"mixing_prob must be in [0, 1], got {self.mixing_prob}")
        for name in ("distill_mapping_lr_mul", "ema_rampup"):
            if getattr(self, name) < 0:
                raise GanInvertError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.distill_beta1 < 1.0:
            raise GanInvertError(f"distill_beta1 must be in [0, 1), got {self.distill_beta1}")
        if self.r1_gamma is not None and self.r1_gamma < 0:
            raise GanInvertError(f"r1_gamma must be >= 0, got {self.r1_gamma}")
        if self.distill_steps < 0:
            raise GanInvertError(f"distill_steps must be >= 0, got {self.distill_steps}")
        if self.distill_steps and not is_teacher_spec(self.data):
            raise GanInvertError("distill_steps needs a teacher (--data teacher:NAME)")
        missing = [2 ** i for i in range(2, int(math.log2(self.resolution)) + 1) if 2 ** i not in self.channels]
        if missing:
            raise GanInvertError(f"channels lacks widths for resolutions {missing}")
        if self.augment is not None:
            parse_policy(self.augment)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        d["channels"] = {int(k): int(v) for k, v in self.channels.items()}
        return d


# ---------------------------------------------------------------------------- file helpers
def save_image_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> Path:
    """Write (N, 3, H, W) images in [-1, 1] as one PNG grid, ``nrow`` images per row, atomically."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise GanInvertError(f"expected (N, 3, H, W) images, got {tuple(images.shape)}")
    n, _, h, w = images.shape
    rows = math.ceil(n / nrow)
    canvas = torch.full((3, rows * h, nrow * w), -1.0)
    for i, img in enumerate(images.detach().float().cpu()):
        r, c = divmod(i, nrow)
        canvas[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    save_pil(tensor_to_pil(canvas), path)
    return Path(path)


# ---------------------------------------------------------------------------- building blocks
def build_networks(config: TrainConfig) -> tuple[StyleGAN2Generator, Discriminator]:
    """A freshly initialised generator and its mirror-width discriminator."""
    # Parameter initialisation is the only draw outside the run's generator: fork the global RNG
    # so it is seeded by ``config.seed`` and leaves the caller's global state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        G = StyleGAN2Generator(config.resolution, config.style_dim, config.n_mlp, config.channels)
        D = Discriminator(config.resolution, config.channels)
    return G, D


def make_ws(G: StyleGAN2Generator, z1: torch.Tensor, z2: torch.Tensor, mixed: torch.Tensor,
            cutoff: torch.Tensor) -> torch.Tensor:
    """Per-sample style mixing: sample i reads ``w2`` from layer ``cutoff[i]`` on when ``mixed[i]``."""
    w1, w2 = G.mapping(z1), G.mapping(z2)
    layer = torch.arange(G.num_ws, device=z1.device)[None]
    use_w2 = mixed[:, None] & (layer >= cutoff[:, None])
    return torch.where(use_w2[..., None], w2[:, None], w1[:, None])


def random_noise(G: StyleGAN2Generator, batch: int, generator: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    """Fresh per-sample noise maps for every noise layer (training randomises noise)."""
    return [torch.randn(batch, 1, s[2], s[3], generator=generator).to(device) for s in G.noise_shapes]


@torch.no_grad()
def ema_update(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """``G_ema <- beta * G_ema + (1 - beta) * G`` for parameters; buffers are copied."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.lerp_(p, 1.0 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


@torch.no_grad()
def sample_grid(G: StyleGAN2Generator, path: Path, seed: int, n: int = 64) -> Path:
    """Render ``n`` images from seeded z with the stored noise and write them as a grid."""
    was_training = G.training
    G.eval()
    z = torch.randn(n, G.style_dim, generator=torch.Generator().manual_seed(seed))
    device = next(G.parameters()).device
    images = torch.cat([G(chunk.to(device)) for chunk in z.split(16)])
    G.train(was_training)
    return save_image_grid(images, path, nrow=int(math.ceil(math.sqrt(n))))


def _distill_loss_fn(config: TrainConfig, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-sample distillation distance: L1 (+ LPIPS when ``lpips_weights`` is set), shape (N,)."""
    lpips = None
    if config.lpips_weights:
        try:
            from ..metrics import LPIPS  # written alongside; imported lazily so training works without it
        except ImportError as exc:
            raise GanInvertError("LPIPS distillation needs ganinvert.metrics.LPIPS, which is not available") from exc
        lpips = LPIPS(weights=config.lpips_weights).to(device).eval().requires_grad_(False)

    def loss(fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = (fake - target).abs().flatten(1).mean(1)
        if lpips is not None:
            d = d + lpips(fake, target).view(-1)
        return d

    return loss


# ---------------------------------------------------------------------------- the run
class _Run:
    """State of one training run: networks, optimisers, data source, RNG and counters."""

    def __init__(self, config: TrainConfig) -> None:
        config.validate()
        self.config = config
        self.out = Path(config.out)
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.teacher = None
        self.folder = None
        if is_teacher_spec(config.data):
            self.teacher = load_teacher(config.data).to(self.device)
            if self.teacher.resolution != config.resolution:
                raise GanInvertError(f"teacher renders {self.teacher.resolution} px, but --resolution is {config.resolution}")
            if config.style_dim < self.teacher.latent_dim:
                raise GanInvertError(f"style_dim must be >= the teacher's latent size {self.teacher.latent_dim}")
        else:
            self.folder = ImageFolder(config.data, config.resolution)
        self.augment = parse_policy(config.augment if config.augment is not None
                                    else ("" if self.teacher is not None else "color,translation,cutout"))
        self.r1_gamma = config.r1_gamma if config.r1_gamma is not None else 0.0002 * config.resolution ** 2 / config.batch
        self.ema_kimg = config.ema_kimg if config.ema_kimg is not None else config.batch * 10 / 32

        self.G, self.D = build_networks(config)
        self.G.to(self.device).train()
        self.D.to(self.device).train()
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        betas = (0.0, 0.99)
        d_ratio = config.d_reg_every / (config.d_reg_every + 1)
        # Two groups so distillation can speed up the mapping network (see _set_phase).
        mapping = [p for name, p in self.G.named_parameters() if name.startswith("style.")]
        synthesis = [p for name, p in self.G.named_parameters() if not name.startswith("style.")]
        self.g_optim = torch.optim.Adam([{"params": synthesis}, {"params": mapping}], lr=config.lr, betas=betas)
        self.d_optim = torch.optim.Adam(self.D.parameters(), lr=config.lr * d_ratio,
                                        betas=(betas[0] ** d_ratio, betas[1] ** d_ratio))
        self.rng = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.wall_time = 0.0
        self.distill_loss = _distill_loss_fn(config, self.device) if self.teacher is not None else None

    # -------------------------------------------------------------- random draws
    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.rng).to(self.device)

    def _latents(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """z for the generator and the (N,) mask of samples left unmixed, plus their ws."""
        z1, z2 = self._randn(n, self.config.style_dim), self._randn(n, self.config.style_dim)
        mixed = (torch.rand(n, generator=self.rng) < self.config.mixing_prob).to(self.device)
        cutoff = torch.randint(1, self.G.num_ws, (n,), generator=self.rng).to(self.device)
        return z1, make_ws(self.G, z1, z2, mixed, cutoff), ~mixed

    def _reals(self, n: int) -> torch.Tensor:
        if self.teacher is not None:
            return self.teacher(self._randn(n, self.teacher.latent_dim))
        return self.folder.sample(n, self.rng).to(self.device)

    def _teacher_target(self, z: torch.Tensor) -> torch.Tensor:
        return self.teacher(z[:, :self.teacher.latent_dim])

    # -------------------------------------------------------------- steps
    def _set_phase(self, distilling: bool) -> None:
        """Generator optimiser settings of the current phase.

        Adversarial steps use StyleGAN2's (lr, betas (0, 0.99), mapping at ``lr_mlp`` = 0.01).
        Distillation is plain regression: momentum (beta1 ``distill_beta1``) and a mapping
        network that learns ``distill_mapping_lr_mul`` times faster let the student tie its z to
        the teacher's content instead of settling on the mean face.
        """
        cfg = self.config
        betas = (cfg.distill_beta1, 0.99) if distilling else (0.0, 0.99)
        for group, lr_mul in zip(self.g_optim.param_groups, (1.0, cfg.distill_mapping_lr_mul if distilling else 1.0)):
            group["lr"], group["betas"] = cfg.lr * lr_mul, betas

    def distill_step(self) -> dict[str, float]:
        """Regress G(z) onto the teacher's image for the paired latent."""
        n = self.config.batch
        z = self._randn(n, self.config.style_dim)
        noise = random_noise(self.G, n, self.rng, self.device)
        fake = self.G.synthesis(self.G.broadcast(self.G.mapping(z)), noise)
        loss = self.distill_loss(fake, self._teacher_target(z)).mean()
        self.g_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.g_optim.step()
        return {"distill": loss.item()}

    def adversarial_step(self) -> dict[str, float]:
        """One discriminator update (+ lazy R1) and one generator update."""
        cfg, n = self.config, self.config.batch
        stats: dict[str, float] = {}
        # Discriminator.
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        _, ws, _ = self._latents(n)
        with torch.no_grad():
            fake = self.G.synthesis(ws, random_noise(self.G, n, self.rng, self.device))
        real = self._reals(n)
        fake_logits = self.D(diff_augment(fake, self.augment, self.rng))
        real_logits = self.D(diff_augment(real, self.augment, self.rng))
        d_loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        self.d_optim.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_optim.step()
        stats.update(d=d_loss.item(), real=real_logits.mean().item(), fake=fake_logits.mean().item())
        if self.step % cfg.d_reg_every == 0 and self.r1_gamma > 0:
            real = self._reals(n).requires_grad_(True)
            logits = self.D(diff_augment(real, self.augment, self.rng))
            (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
            r1 = grad.square().flatten(1).sum(1).mean()
            self.d_optim.zero_grad(set_to_none=True)
            # Lazy regularisation: weight by the interval (StyleGAN2 Sec. 3.1).
            (self.r1_gamma / 2 * r1 * cfg.d_reg_every).backward()
            self.d_optim.step()
            stats["r1"] = r1.item()
        # Generator.
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        z, ws, unmixed = self._latents(n)
        fake = self.G.synthesis(ws, random_noise(self.G, n, self.rng, self.device))
        g_loss = F.softplus(-self.D(diff_augment(fake, self.augment, self.rng))).mean()
        stats["g"] = g_loss.item()
        if self.teacher is not None and cfg.distill_weight > 0 and bool(unmixed.any()):
            anchor = self.distill_loss(fake[unmixed], self._teacher_target(z[unmixed])).mean()
            g_loss = g_loss + cfg.distill_weight * anchor
            stats["distill"] = anchor.item()
        self.g_optim.zero_grad(set_to_none=True)
        g_loss.backward()
        self.g_optim.step()
        self.D.requires_grad_(True)
        return stats

    def update_ema(self) -> None:
        """StyleGAN2-ADA's EMA schedule: half-life ``ema_kimg``, ramped up over the first images."""
        cur_nimg = self.step * self.config.batch
        ema_nimg = self.ema_kimg * 1000
        if self.config.ema_rampup > 0:
            ema_nimg = min(ema_nimg, cur_nimg * self.config.ema_rampup)
        beta = 0.5 ** (self.config.batch / max(ema_nimg, 1e-8))
        ema_update(self.G_ema, self.G, beta)

    # -------------------------------------------------------------- checkpoints
    def latent_avg(self) -> torch.Tensor:
        """Mean w of G_ema over 4096 seeded samples (the ``latent_avg`` of rosinality checkpoints)."""
        return self.G_ema.estimate_w_avg(4096, seed=self.config.seed).cpu()

    def state(self) -> dict[str, Any]:
        return {
            "g_ema": self.G_ema.state_dict(),
            "latent_avg": self.latent_avg(),
            "g": self.G.state_dict(),
            "d": self.D.state_dict(),
            "g_optim": self.g_optim.state_dict(),
            "d_optim": self.d_optim.state_dict(),
            "step": self.step,
            "rng": self.rng.get_state(),
            "config": {"train": self.config.to_dict(), "generator": self.G.config(), "discriminator": self.D.config()},
            "meta": {"wall_time_s": self.wall_time, "images_seen": self.step * self.config.batch,
                     "torch": str(torch.__version__)},
        }

    def save(self) -> Path:
        path = self.out / CHECKPOINT_NAME
        atomic_torch_save(self.state(), path)
        return path

    def load(self, path: Path) -> None:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for corrupt files
            raise CheckpointError(f"cannot read training checkpoint {path}: {exc}") from exc
        needed = {"g", "d", "g_ema", "g_optim", "d_optim", "step", "rng", "config"}
        if not isinstance(ckpt, dict) or not needed <= set(ckpt):
            raise CheckpointError(f"{path} is not a ganinvert training checkpoint (needs {', '.join(sorted(needed))})")
        saved = ckpt["config"]["train"]
        current = self.config.to_dict()
        changed = sorted(k for k in current if k not in _RESUMABLE_FIELDS and saved.get(k) != current[k])
        if changed:
            raise GanInvertError(f"cannot resume {path}: settings differ from the checkpoint's ({', '.join(changed)})")
        self.G.load_state_dict(ckpt["g"])
        self.D.load_state_dict(ckpt["d"])
        self.G_ema.load_state_dict(ckpt["g_ema"])
        self.g_optim.load_state_dict(ckpt["g_optim"])
        self.d_optim.load_state_dict(ckpt["d_optim"])
        self.rng.set_state(ckpt["rng"])
        self.step = int(ckpt["step"])
        self.wall_time = float(ckpt.get("meta", {}).get("wall_time_s", 0.0))

    # -------------------------------------------------------------- loop
    def run(self) -> Path:
        cfg = self.config
        checkpoint = self.out / CHECKPOINT_NAME
        if cfg.resume:
            if not checkpoint.is_file():
                raise GanInvertError(f"nothing to resume: {checkpoint} does not exist")
            self.load(checkpoint)
        elif checkpoint.exists():
            raise GanInvertError(f"{checkpoint} already exists; pass --resume or choose another --out")
        self.out.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=cfg.steps, initial=min(self.step, cfg.steps), desc="train", unit="step", dynamic_ncols=True)
        tick = time.perf_counter()
        try:
            while self.step < cfg.steps:
                distilling = self.teacher is not None and self.step < cfg.distill_steps
                self._set_phase(distilling)
                stats = self.distill_step() if distilling else self.adversarial_step()
                if not all(math.isfinite(v) for v in stats.values()):
                    raise GanInvertError(f"training diverged at step {self.step} (non-finite loss: {stats})")
                self.step += 1
                self.update_ema()
                now = time.perf_counter()
                self.wall_time += now - tick
                tick = now
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items()})
                    self._log({"step": self.step, "phase": "distill" if distilling else "adversarial",
                               "wall_time_s": round(self.wall_time, 1), **stats})
                if self.step % cfg.sample_every == 0 or self.step == cfg.steps:
                    sample_grid(self.G_ema, self.out / SAMPLES_DIR / f"step_{self.step:07d}.png", cfg.seed)
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save()
                tick = time.perf_counter()  # sampling and saving are not training time
        finally:
            bar.close()
        if not checkpoint.is_file():  # resumed a run that had already reached ``steps``
            self.save()
        return checkpoint

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.out / LOG_NAME, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def train(config: TrainConfig) -> Path:
    """Train (or resume) a run; returns the path of its final full checkpoint.

    The checkpoint is ``config.out / "checkpoint.pt"`` in rosinality's format (``g_ema``,
    ``latent_avg``, ``g``, ``d``, ``g_optim``, ``d_optim``, ``step``, ``config``) plus ``rng`` and
    ``meta``; :func:`export_generator` strips it down to what inference needs.
    """
    return _Run(config).run()


def export_generator(checkpoint: str | Path, out_path: str | Path, half: bool = False,
                     extra_meta: dict[str, Any] | None = None) -> Path:
    """Write only ``{"g_ema", "latent_avg", "config", "meta"}`` of a training checkpoint.

    Args:
        checkpoint: a checkpoint written by :func:`train`.
        out_path: destination ``.pt`` file (written atomically).
        half: store floating-point tensors as float16 (half the size; loaders upcast).
        extra_meta: merged into the stored ``meta``.
    """
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read training checkpoint {checkpoint}: {exc}") from exc
    if not isinstance(ckpt, dict) or "g_ema" not in ckpt or "latent_avg" not in ckpt:
        raise CheckpointError(f"{checkpoint} holds no g_ema/latent_avg")
    cast = (lambda t: t.half() if t.is_floating_point() else t) if half else (lambda t: t)
    meta = dict(ckpt.get("meta", {}), step=ckpt.get("step"), dtype="float16" if half else "float32")
    meta.update(extra_meta or {})
    exported = {
        "g_ema": {k: cast(v) for k, v in ckpt["g_ema"].items()},
        "latent_avg": cast(ckpt["latent_avg"]),
        "config": ckpt.get("config", {}),
        "meta": meta,
    }
    out_path = Path(out_path)
    atomic_torch_save(exported, out_path)
    return out_path
