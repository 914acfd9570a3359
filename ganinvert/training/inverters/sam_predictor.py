"""``train-inverter sam-predictor``: SAM's invertibility predictor, trained on inversions.

SAM (Parmar et al., CVPR 2022, ``adobe-research/sam_inversion``) trains its predictor on the LPIPS
error maps that single-space inversions (``single_latent_inv.py``) of a training set leave. Here:

1. **Training set, built once** (cached under ``OUT/targets``, one file per chunk, so a killed
   build continues where it stopped; the cache is tied to the settings, seed and generator):
   ``images`` pictures, of which ``teacher_images`` come from the ``gan-face-generate`` teacher
   (:mod:`ganinvert.training.teacher`) and the rest are samples of the generator; a fraction
   ``shifted_fraction`` of all is rotated, scaled and translated (:func:`ganinvert.evaluation.suites.affine_shift`)
   so that how well each space inverts varies over the image. Every draw comes from a generator
   seeded with the run's seed. Each picture is inverted by ``sam-opt``'s own invertibility probes
   (``error_steps`` steps per space: W+ alone, then W+ with an unmasked residual at each feature
   block; SAM's objective and schedule), and the spatial LPIPS map of each probe against the
   picture is the target (``error_metric="mse"``: per-pixel squared error, for runs without LPIPS).
2. **Regression**: the predictor's log-maps (``map_side``) against ``log(target + log_eps)`` of
   the targets area-averaged to that side, MSE divided per space by the variance of that space's
   log-targets over the training set, Adam; random horizontal flips of picture and maps together.

No image of ``../shared`` (or of ``--images``) is used.

Example:
    ganinvert train-inverter sam-predictor --out runs/sam --steps 1500 --batch 16 \\
        --lpips-weights lpips_alex.pth --threads 1     # the bundled predictor's settings
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...errors import CheckpointError, GanInvertError
from ...tasks.geometry import affine_shift
from ...io import atomic_torch_save, atomic_write_bytes
from ...inversion.methods.sam import ERROR_METRICS, WPLUS, SamOpt, sam_feature_blocks
from ...models.encoders import generator_sha256
from ...models.sam_predictor import InvertibilityPredictor, save_predictor
from ...models.stylegan2 import StyleGAN2Generator
from ...settings import typed_fields
from ..trainer import random_noise
from .loop import InverterTrainer, register_trainer
from .shifts import ShiftSettings

TARGETS_DIR = "targets"
#: Settings that define the cached training set (the others may change between runs that share it).
DATASET_FIELDS = ("images", "teacher_images", "shifted_fraction", "max_angle", "min_scale", "max_scale",
                  "max_translation", "error_steps", "error_metric", "chunk")


@dataclass
class SamPredictorSettings(ShiftSettings):
    """Attributes (and the shift ranges of :class:`~.shifts.ShiftSettings`):
        images: size of the training set (inverted once).
        teacher_images: how many of them come from the gan-face-generate teacher (0: none).
        error_steps: steps of each probe inversion (SAM's ``single_latent_inv.py`` runs 1001 at
            256-1024 px; 50 keeps the 64 px training set within minutes of one CPU core).
        error_metric: "lpips" (SAM) or "mse".
        chunk: pictures inverted together (and cached together).
        map_side, base_width, head_width: predictor architecture (see ``InvertibilityPredictor``).
        lr: Adam learning rate.
    """

    images: int = 96
    teacher_images: int = 16
    error_steps: int = 50
    error_metric: str = "lpips"
    chunk: int = 16
    map_side: int = 16
    base_width: int = 16
    head_width: int = 32
    lr: float = 1e-3

    def __post_init__(self) -> None:
        typed_fields(self)  # field types, lr > 0 (see ganinvert.settings)
        if self.images < 1 or not 0 <= self.teacher_images <= self.images:
            raise GanInvertError(f"sam-predictor needs images >= 1 and 0 <= teacher_images <= images, "
                                 f"got {self.images} and {self.teacher_images}")
        self.shifts  # validates the shift ranges
        for name in ("error_steps", "chunk", "map_side", "base_width", "head_width"):
            if getattr(self, name) < 1:
                raise GanInvertError(f"sam-predictor needs {name} >= 1, got {getattr(self, name)}")
        if self.error_metric not in ERROR_METRICS:
            raise GanInvertError(f"error_metric must be one of {', '.join(ERROR_METRICS)}, got {self.error_metric!r}")


@torch.no_grad()
def draw_training_images(G: StyleGAN2Generator, s: SamPredictorSettings, seed: int) -> torch.Tensor:
    """The training pictures (N, 3, R, R) in [-1, 1], all drawn from ``seed``."""
    rng = torch.Generator().manual_seed(seed)
    device = G.w_avg.device
    n_gen = s.images - s.teacher_images
    images = []
    for start in range(0, n_gen, s.chunk):
        n = min(s.chunk, n_gen - start)
        z = torch.randn(n, G.style_dim, generator=rng).to(device)
        images.append(G.synthesis(G.broadcast(G.mapping(z)), random_noise(G, n, rng, device)).clamp(-1, 1))
    if s.teacher_images:
        from ..teacher import load_teacher
        teacher = load_teacher("teacher:gan-face-generate").to(device)
        z = torch.randn(s.teacher_images, teacher.latent_dim, generator=rng).to(device)
        faces = teacher(z).clamp(-1, 1)
        if faces.shape[-1] != G.resolution:
            faces = F.interpolate(faces, size=(G.resolution,) * 2, mode="area")
        images.append(faces)
    images = torch.cat(images)
    shifted = []
    for x in images:
        shift = s.shifts.draw(rng)
        if shift is not None:
            x = affine_shift(x[None], **shift)[0]
        shifted.append(x.clamp(-1, 1))
    return torch.stack(shifted)


def true_error_maps(G: StyleGAN2Generator, images: torch.Tensor, error_steps: int, error_metric: str,
                    lpips: torch.nn.Module | None, seeds: list[int]) -> torch.Tensor:
    """Per-space error maps (N, S, R, R) of ``sam-opt``'s probe inversions of ``images``.

    Runs ``sam-opt``'s automatic invertibility map (one probe inversion per space) with the
    region grid at full resolution, so the maps are the unpooled spatial errors.
    """
    from ...inversion import invert
    if error_metric == "lpips" and lpips is None:
        raise GanInvertError("sam-predictor's LPIPS error maps need --lpips-weights (or --set error_metric=mse)")
    settings = {"error_steps": error_steps, "steps": 1, "regions": G.resolution, "error_metric": error_metric,
                "predictor_path": None, "mask_path": None,
                "lambda_lpips": 1.0 if error_metric == "lpips" else 0.0}
    method = SamOpt(SamOpt.Settings().replace(**settings))
    result = invert(G, images, method, seed=seeds, lpips=lpips, progress=False)
    return torch.cat([result.params[f"error.{space}"] for space in method.spaces(G)], 1)


@register_trainer
class SamPredictorTrainer(InverterTrainer):
    """Builds the inversion targets once, then regresses them with an :class:`InvertibilityPredictor`."""

    kind = "sam-predictor"
    Settings = SamPredictorSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        s, G = self.settings, self.G
        blocks = sam_feature_blocks(G)
        if not blocks:
            raise GanInvertError(f"a {G.resolution} px generator has none of SAM's feature blocks")
        self.spaces = ["w+"] + [str(b) for b in blocks]
        with torch.random.fork_rng(devices=[]):  # default init, seeded from the run; global RNG untouched
            torch.manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=self.data.rng)))
            self.predictor = InvertibilityPredictor(G.resolution, self.spaces, s.map_side, s.base_width,
                                                    s.head_width).to(G.w_avg.device)
        self.modules = {"predictor": self.predictor}
        self.optimizers = {"predictor": torch.optim.Adam(self.predictor.parameters(), lr=s.lr)}
        self._dataset: tuple[torch.Tensor, torch.Tensor] | None = None
        self._space_variance: torch.Tensor | None = None

    # -- training set ----------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        settings = asdict(self.settings)
        record = {"settings": {k: settings[k] for k in DATASET_FIELDS}, "seed": self.config.seed,
                  "generator": self.G.config(),
                  "generator_sha256": generator_sha256(self.G), "spaces": self.spaces}
        return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def dataset(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(pictures (N, 3, R, R), target maps (N, S, m, m)), built on first use, cached in OUT/targets."""
        if self._dataset is not None:
            return self._dataset
        s, G = self.settings, self.G
        folder = Path(self.config.out) / TARGETS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        stamp = folder / "fingerprint.txt"
        fingerprint = self._fingerprint()
        if stamp.is_file() and stamp.read_text().strip() != fingerprint:
            raise GanInvertError(f"{folder} holds targets for other settings; choose another --out")
        atomic_write_bytes(stamp, fingerprint.encode())
        images = draw_training_images(G, s, self.config.seed)
        maps = []
        for index, start in enumerate(range(0, s.images, s.chunk)):
            path = folder / f"chunk_{index:03d}.pt"
            batch = images[start:start + s.chunk]
            if path.is_file():
                try:
                    cached = torch.load(path, map_location="cpu", weights_only=True)
                except Exception as exc:  # torch raises many types for a corrupt file
                    raise CheckpointError(f"cannot read cached targets {path}: {exc}") from exc
            else:
                seeds = list(range(start, start + batch.shape[0]))
                cached = true_error_maps(G, batch, s.error_steps, s.error_metric, self.lpips, seeds).cpu()
                atomic_torch_save(cached, path)
            maps.append(F.adaptive_avg_pool2d(cached, s.map_side))
        self._dataset = (images, torch.cat(maps).to(images.device))
        log_maps = self.predictor.log_target(self._dataset[1])
        self._space_variance = log_maps.var(dim=(0, 2, 3)).clamp_min(1e-12)[None, :, None, None]
        return self._dataset

    # -- training ---------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        images, maps = self.dataset()
        rng = self.data.rng
        index = torch.randint(0, images.shape[0], (self.config.batch,), generator=rng)
        flip = torch.rand(self.config.batch, generator=rng) < 0.5
        x, y = images[index], maps[index]
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None, None], y.flip(-1), y)
        log_predicted = self.predictor(x)
        loss = ((log_predicted - self.predictor.log_target(y)).square() / self._space_variance).mean()
        optimizer = self.optimizers["predictor"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # Pearson correlation of the error maps per image and space, averaged
            p = (log_predicted.exp() - self.predictor.config["log_eps"]).flatten(2)
            t = y.flatten(2)
            p, t = p - p.mean(2, keepdim=True), t - t.mean(2, keepdim=True)
            corr = float(((p * t).sum(2) / (p.norm(dim=2) * t.norm(dim=2)).clamp_min(1e-12)).mean())
        return {"loss": float(loss.detach()), "pearson": corr}

    def export(self, path: Path, meta: dict[str, Any]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        # SAM's threshold (0.225) is calibrated for its LPIPS-VGG maps at 1024 px; these maps have
        # another scale. The median W+ error of the training regions is the data's own split point:
        # on images like the training ones, about half of the regions count as invertible in W+.
        wplus_errors = self.dataset()[1][:, self.spaces.index(WPLUS)]
        meta = {**meta, "calibrated_tau": round(float(wplus_errors.median()), 4),
                "calibration": "median W+ error over the training maps' cells"}
        return save_predictor(self.predictor, path, self.G, meta)
