"""SAM's invertibility predictor (Parmar et al., "Spatially-Adaptive Multilayer Selection for GAN
Inversion and Editing", CVPR 2022; ``adobe-research/sam_inversion``, ``train_invertibility.py`` and
``mask_utils.refine``).

For each latent space of ``sam-opt`` (W+ and a feature residual at each of its blocks, see
:func:`ganinvert.inversion.methods.sam.sam_feature_blocks`) the predictor regresses the spatial
LPIPS error map an inversion in that space leaves. SAM uses a DeepLab network with one output
channel per space; here a shared :class:`~ganinvert.models.encoders.ConvBackbone` pyramid feeds one
small head per space, each reading the backbone's features at the map side and its coarser level
(upsampled), and predicts ``log(error + log_eps)`` at ``map_side`` x ``map_side`` (16 x 16 for the
default 64 px generator: LPIPS-AlexNet maps are smooth at that scale, and SAM averages them inside
segments anyway). The log scale matters: the feature spaces' errors are ~20x smaller than W+'s
and vary over orders of magnitude, and a non-negative output (softplus) regressed in linear scale
saturates at zero for them. :meth:`InvertibilityPredictor.maps` returns the errors themselves;
:meth:`InvertibilityPredictor.predict_maps` upsamples them bilinearly to the image.

For the default 64 px generator ``sam-opt`` has the spaces W+, block 2 (16 px, SAM's F4: the
output of the 16 px block) and block 3 (32 px, SAM's F6); SAM's F8 and F10 (64 and 128 px) are the
output block or beyond it, so they have no counterpart.

:func:`predict_label_map` turns the maps into ``sam-opt``'s label map as ``mask_utils.refine``
does: the maps are averaged inside each segment and each segment takes the earliest space whose
mean error is at most tau (:func:`select_spaces`). SAM's segments
come from a semantic segmentation network; the default here is :func:`superpixels`, a SLIC-like
k-means on (CIELAB colour, position) (Achanta et al., "SLIC Superpixels", TPAMI 2012) without
SLIC's local search window or connectivity post-processing (a 64 px image is small enough to
compare every pixel with every centre).

Example:
    >>> predictor = load_predictor("default", G)                       # doctest: +SKIP
    >>> labels = predict_label_map(predictor, images, tau=0.225)        # doctest: +SKIP
    >>> labels.shape                                                     # doctest: +SKIP
    torch.Size([4, 1, 64, 64])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..checks import check_images, check_shape
from ..errors import GanInvertError
from .encoders import ConvBackbone, load_network, resolve_network_path, save_network
from .stylegan2 import StyleGAN2Generator

KIND = "sam-predictor"


class InvertibilityPredictor(torch.nn.Module):
    """Image (N, 3, R, R) in [-1, 1] -> predicted error maps (N, S, m, m), one channel per space.

    Args:
        resolution: image side R.
        spaces: the latent spaces in ``sam-opt``'s order ("w+", then feature blocks as strings).
        map_side: side m of the predicted maps (a power of two, at most R / 2).
        base_width: backbone channels at full resolution; they double per halving, at most 128.
        head_width: channels of each space's head.
        log_eps: offset of the log-error the heads regress.
    """

    def __init__(self, resolution: int, spaces: Sequence[str], map_side: int = 16, base_width: int = 16,
                 head_width: int = 32, log_eps: float = 1e-3) -> None:
        super().__init__()
        #: Region threshold calibrated on the training maps (set by :func:`load_predictor`).
        self.calibrated_tau: float | None = None
        if map_side < 2 or map_side & (map_side - 1) or 2 * map_side > resolution:
            raise GanInvertError(f"map_side must be a power of two in [2, {resolution // 2}], got {map_side}")
        if not spaces or len(set(spaces)) != len(spaces):
            raise GanInvertError(f"spaces must be distinct and non-empty, got {list(spaces)}")
        if not log_eps > 0:
            raise GanInvertError(f"log_eps must be > 0, got {log_eps}")
        self.config = {"resolution": resolution, "spaces": list(spaces), "map_side": map_side,
                       "base_width": base_width, "head_width": head_width, "log_eps": log_eps}
        widths, side, width = {}, resolution, base_width
        while side >= map_side // 2:
            widths[side] = width
            side, width = side // 2, min(2 * width, 128)
        self.backbone = ConvBackbone(resolution, widths)
        fine, coarse = widths[map_side], widths[map_side // 2]
        self.heads = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Conv2d(fine + coarse, head_width, 3, 1, 1), torch.nn.LeakyReLU(0.2),
                                torch.nn.Conv2d(head_width, 1, 1))
            for _ in spaces)

    @property
    def spaces(self) -> list[str]:
        return list(self.config["spaces"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted ``log(error + log_eps)``, (N, S, m, m)."""
        check_unit_images(images, self.config["resolution"])
        m = self.config["map_side"]
        features = self.backbone(images)
        joint = torch.cat([features[m], F.interpolate(features[m // 2], scale_factor=2.0, mode="nearest")], 1)
        return torch.cat([head(joint) for head in self.heads], 1)

    def log_target(self, errors: torch.Tensor) -> torch.Tensor:
        """What the heads regress for error maps ``errors``."""
        return torch.log(errors.clamp_min(0) + self.config["log_eps"])

    @torch.no_grad()
    def maps(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted error maps (N, S, m, m), >= 0."""
        return (self(images).exp() - self.config["log_eps"]).clamp_min(0)

    @torch.no_grad()
    def predict_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted error maps bilinearly upsampled to the image, (N, S, R, R)."""
        return F.interpolate(self.maps(images), size=images.shape[-2:], mode="bilinear", align_corners=False)


def check_unit_images(images: torch.Tensor, resolution: int) -> None:
    """Raise a one-line GanInvertError unless ``images`` is a finite (N, 3, R, R) batch in [-1, 1]."""
    check_images(images, resolution)
    if images.min() < -1.001 or images.max() > 1.001:
        raise GanInvertError(f"images must lie in [-1, 1], got [{float(images.min()):.3f}, {float(images.max()):.3f}]")


# ----------------------------------------------------------------------------- segmentation
def rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    """sRGB images in [-1, 1] (N, 3, H, W) -> CIELAB (D65), L in [0, 100]."""
    rgb = ((images.clamp(-1, 1) + 1) / 2)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = torch.tensor([[0.412453, 0.357580, 0.180423],
                           [0.212671, 0.715160, 0.072169],
                           [0.019334, 0.119193, 0.950227]], dtype=images.dtype, device=images.device)
    xyz = torch.einsum("ij,njhw->nihw", matrix, linear)
    xyz = xyz / torch.tensor([0.950456, 1.0, 1.088754], dtype=images.dtype, device=images.device)[:, None, None]
    eps = 216 / 24389
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1 / 3), (24389 / 27 * xyz + 16) / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def superpixels(images: torch.Tensor, segments: int = 64, compactness: float = 10.0,
                iterations: int = 10) -> torch.Tensor:
    """SLIC-like superpixels: k-means on (CIELAB, xy) from a regular grid of ``segments`` centres.

    The distance is ``d_lab^2 + (compactness / S)^2 d_xy^2`` with S the grid step (SLIC's
    normalisation). Returns (N, H, W) integer labels in ``[0, segments')`` with ``segments'`` the
    nearest square number of segments; segments may be empty or (rarely) split.

    >>> superpixels(torch.zeros(1, 3, 16, 16), segments=4).unique().numel() <= 4
    True
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise GanInvertError(f"superpixels expects (N, 3, H, W) images, got {tuple(images.shape)}")
    if segments < 1 or compactness < 0 or iterations < 1:
        raise GanInvertError("superpixels needs segments >= 1, compactness >= 0 and iterations >= 1")
    n, _, h, w = images.shape
    grid = max(1, round(segments ** 0.5))
    step = max(h, w) / grid
    lab = rgb_to_lab(images.float()).flatten(2).transpose(1, 2)                        # (N, HW, 3)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    xy = torch.stack([ys.flatten(), xs.flatten()], 1).to(images.device) * (compactness / step)  # (HW, 2)
    points = torch.cat([lab, xy.expand(n, -1, -1)], 2)                                  # (N, HW, 5)
    cy = ((torch.arange(grid, dtype=torch.float32) + 0.5) * h / grid).long()
    cx = ((torch.arange(grid, dtype=torch.float32) + 0.5) * w / grid).long()
    start = (cy[:, None] * w + cx[None, :]).flatten().to(images.device)
    centres = points[:, start]                                                          # (N, K, 5)
    for _ in range(iterations):
        labels = torch.cdist(points, centres).argmin(2)                                 # (N, HW)
        onehot = F.one_hot(labels, centres.shape[1]).to(points.dtype)                   # (N, HW, K)
        counts = onehot.sum(1)[..., None]
        # An empty cluster keeps its centre.
        centres = torch.where(counts > 0, onehot.transpose(1, 2) @ points / counts.clamp_min(1), centres)
    return torch.cdist(points, centres).argmin(2).reshape(n, h, w)


def segment_mean(values: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Replace every value of (N, C, H, W) ``values`` by its mean inside the pixel's segment."""
    n, c, h, w = values.shape
    check_shape(segments, f"{n}, {h}, {w}", "segments")
    labels = segments.reshape(n, -1).long()
    if labels.min() < 0:
        raise GanInvertError("segment labels must be >= 0")
    k = int(labels.max()) + 1
    flat = values.reshape(n, c, -1)
    sums = flat.new_zeros(n, c, k).scatter_add_(2, labels[:, None].expand(-1, c, -1), flat)
    counts = flat.new_zeros(n, 1, k).scatter_add_(2, labels[:, None], torch.ones_like(flat[:, :1]))
    means = sums / counts.clamp_min(1)
    return means.gather(2, labels[:, None].expand(-1, c, -1)).reshape(n, c, h, w)


def select_spaces(errors: Sequence[torch.Tensor], tau: float) -> torch.Tensor:
    """Labels per cell from per-space error maps ordered earliest (W+) to latest: the earliest space
    whose error is <= tau, else the latest (``mask_utils.refine``)."""
    labels = torch.full_like(errors[0], float(len(errors) - 1))
    for k in reversed(range(len(errors))):
        labels = torch.where(errors[k] <= tau, torch.full_like(labels, float(k)), labels)
    return labels


@torch.no_grad()
def predict_label_map(predictor: InvertibilityPredictor, images: torch.Tensor, tau: float,
                      segments: torch.Tensor | None = None) -> torch.Tensor:
    """``sam-opt``'s label map (N, 1, R, R): 0 = W+, k = the k-th feature block of ``predictor.spaces``.

    The predicted maps are averaged inside each segment (``segments`` (N, R, R) integer labels;
    :func:`superpixels` of the images when None) and each segment takes the earliest space whose
    mean predicted error is at most ``tau`` (the latest when none is).
    """
    if not tau >= 0:
        raise GanInvertError(f"tau must be >= 0, got {tau}")
    maps = predictor.predict_maps(images)
    if segments is None:
        segments = superpixels(images)
    maps = segment_mean(maps, segments.to(maps.device))
    return select_spaces([maps[:, k:k + 1] for k in range(maps.shape[1])], tau)


# ----------------------------------------------------------------------------- files
def save_predictor(predictor: InvertibilityPredictor, path: str | Path, G: StyleGAN2Generator,
                   meta: dict[str, Any] | None = None) -> Path:
    """Write ``predictor`` as a ``sam-predictor`` network for ``G``."""
    return save_network(predictor, path, kind=KIND, config=predictor.config, generator=G, meta=meta)


def load_predictor(path: str | Path, G: StyleGAN2Generator) -> InvertibilityPredictor:
    """Load a ``sam-predictor`` file (``"default"``: the bundled one) for ``G``, frozen, on G's device."""
    state, config, meta = load_network(resolve_network_path(path, KIND, G), KIND, G)
    predictor = InvertibilityPredictor(**config)
    predictor.load_state_dict(state)
    # The threshold calibrated on the training maps (see the trainer's export); None for older files.
    predictor.calibrated_tau = meta.get("calibrated_tau")
    return predictor.to(G.w_avg.device).eval().requires_grad_(False)
