"""Evaluation suites: which inputs each experiment of the papers inverts, and what it is scored against.

A suite turns one image and one *shift* into a :class:`Problem` (what the method sees, what its
reconstruction is compared with) and scores a finished inversion. Shifts have short canonical
names, which ``--shifts`` accepts, so any severity can be asked for (``rot45``, ``sigma0.3``):

============== ================================================ ==================================
suite          shifts (default in bold)                         score: reconstruction vs
============== ================================================ ==================================
ood-geometric  ``rot{deg}`` counter-clockwise (**10, 20, 30**);  the shifted image (the input)
               ``scale{f}`` (**0.875, 0.75, 1.125, 1.25**);
               ``tx{px}`` right / ``ty{px}`` down, px at 1024
               (**tx0, tx50, tx100, tx150**)
ood-domain     one shift per image folder (its name)             the image (the input)
denoise        ``sigma{std}`` (**0.2, 0.4, 0.6, 0.8, 1.0**)      the clean image
cs             ``cs{percent}`` measurements (**1, 2, 3, 4, 5**)   the clean image
robustness     ``snr{dB}`` (**30, 20, 10, 5, 0**)                the unperturbed reconstruction
============== ================================================ ==================================

Protocols:

* ood-geometric follows the geometric out-of-distribution study of SPHInX (Subramanyam et al.,
  ICML 2022), which takes the transformations of BDInvert (Kang et al., ICCV 2021) applied to
  aligned 1024 px faces: rotations of 10/20/30 degrees, scalings 7/8, 3/4, 9/8, 5/4 and
  translations of 0-150 px. The transform is applied to the aligned image loaded (centre crop, Lanczos) at a *working
  resolution* ``max(G.resolution, 256)``, then the result is brought to the generator's
  resolution (bicubic, antialiased): shifting before the downsampling keeps the borders and
  the interpolation as in the full-resolution protocol. Translations are given in pixels of the
  1024 px protocol and scale with the image (50 px = 50/1024 of the width). Uncovered regions
  are filled by reflection by default (``border="reflect"``; ``"edge"`` repeats the border
  pixels, ``"black"`` fills with black), so that the shift is purely geometric rather than a
  new black frame the generator has never produced.
* denoise: the denoising study of SPHInX (AWGN of std 0.2-1.0 on the [-1, 1] scale, clipped;
  see :class:`ganinvert.tasks.Denoising`); cs: its compressed-sensing study (after ILO, Daras et
  al., ICML 2021), partial circulant compressed sensing with 1-5 % measurements
  (:class:`ganinvert.tasks.CompressedSensing`). The noise and the measurement matrix are
  seeded by (seed, image, shift) only, so every method sees the same measurement; the clean
  image never enters the optimisation.
* robustness: SPHInX Fig. 1: the clean image is inverted once, its w+ perturbed at each SNR
  (:func:`ganinvert.tasks.robustness.latent_robustness`, ``trials`` draws per level) and the
  renders compared with the unperturbed one. One inversion serves every level, so all levels of
  an image and method form one cell (``grouped``). The default levels are those of
  ``ganinvert robustness``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F

from ..errors import GanInvertError
from ..io import list_images, load_image
from ..outputs import output_names, safe_name
from ..settings import coerce_settings
from ..tasks.geometry import BORDERS, affine_shift

#: Working resolution floor of the geometric shifts (see the module docstring).
GEOMETRIC_WORKING_RESOLUTION = 256
#: The protocol's image size: translations are given in its pixels (BDInvert, SPHInX: aligned 1024 px faces).
PROTOCOL_RESOLUTION = 1024


@dataclass(frozen=True)
class Shift:
    """One condition of a suite.

    Attributes:
        name: canonical, filename-safe name (``rot10``, ``scale0.875``, ``sigma0.2``, ``afhq``).
        family: what is varied (``rotation``, ``scaling``, ``translation``, ``domain``, ``noise``,
            ``measurements``, ``latent-snr``); plots have one panel per family.
        severity: x-axis value in the plots (None: categorical, e.g. a dataset).
        unit: axis label of ``severity``.
    """

    name: str
    family: str
    severity: float | None = None
    unit: str = ""


@dataclass(frozen=True)
class ImageRef:
    """An image of the evaluation: a unique, filename-safe ``name`` and its file."""

    name: str
    path: Path


@dataclass
class Problem:
    """What one (image, shift) gives the inverter, and what its reconstruction is scored against.

    ``target`` is the image inverted directly (None when only a measurement is observed); with an
    ``operator``, the engine fits ``operator.A(G(.))`` to ``measurement``. ``shown`` is what the
    method sees as an image (None when the measurement is not an image, e.g. compressed sensing).
    """

    clean: torch.Tensor
    reference: torch.Tensor
    target: torch.Tensor | None = None
    operator: Any = None
    measurement: torch.Tensor | None = None
    shown: torch.Tensor | None = None


def format_number(value: float) -> str:
    """Shortest decimal spelling of a shift parameter (``10.0`` -> ``"10"``, ``0.875`` -> ``"0.875"``)."""
    text = f"{value:.6g}"
    return "0" if text == "-0" else text


def _parse_number(text: str, name: str, expected: str) -> float:
    try:
        value = float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise GanInvertError(f"bad shift {name!r}: expected {expected}") from None
    if not math.isfinite(value):
        raise GanInvertError(f"bad shift {name!r}: the value must be finite")
    return value


def unique_image_refs(paths: Sequence[Path]) -> list[ImageRef]:
    """Filename-safe names, unique by construction (``ganinvert.outputs.output_names``: the stem;
    ``stem_1``… on collisions, never another image's own name), in the given order."""
    return [ImageRef(name, path) for name, path in zip(output_names(paths), paths)]


def _images_in(paths: Sequence[Path]) -> list[Path]:
    for p in paths:
        if not p.exists():
            raise GanInvertError(f"--images path not found: {p}")
    return list_images(paths)


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic, antialiased resize of (N, C, H, W) images to ``size`` x ``size``, clamped to [-1, 1]."""
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    return F.interpolate(image, size=(size, size), mode="bicubic", antialias=True,
                         align_corners=False).clamp(-1, 1)


# ----------------------------------------------------------------------------- suites
class Suite:
    """Base class; see the module docstring. Subclasses set the class attributes and
    implement :meth:`parse_shift` and :meth:`problem`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    #: What reconstructions are scored against, for the report.
    scored_against: ClassVar[str]
    default_shift_names: ClassVar[tuple[str, ...]] = ()
    #: True when one inversion serves every shift of an image (robustness): one cell per image.
    grouped: ClassVar[bool] = False
    #: True when the suite shows a clean image distinct from the method's input in the grids.
    has_clean_column: ClassVar[bool] = True

    def options(self) -> dict[str, Any]:
        """Settings of the suite that change its results (part of every cell's fingerprint)."""
        return {}

    def parse_shift(self, name: str) -> Shift:
        raise NotImplementedError

    def problem(self, image: ImageRef, shift: Shift, resolution: int, seed: int) -> Problem:
        """The inputs for one image and shift at the generator's ``resolution``; ``seed`` seeds
        any measurement randomness (the same for every method)."""
        raise NotImplementedError

    def plan(self, image_paths: Sequence[Path], shift_names: Sequence[str] | None,
             max_images: int | None) -> list[tuple[Shift, list[ImageRef]]]:
        """(shift, images) pairs of the evaluation, in report order.

        Every shift uses the same images here (all files of ``image_paths``, sorted per folder,
        the first ``max_images``); :class:`DomainSuite` maps folders to shifts instead.
        """
        names = list(shift_names) if shift_names else list(self.default_shift_names)
        shifts = [self.parse_shift(n) for n in names]
        duplicates = sorted({s.name for s in shifts if [t.name for t in shifts].count(s.name) > 1})
        if duplicates:
            raise GanInvertError(f"shift(s) given twice: {', '.join(duplicates)}")
        refs = unique_image_refs(_images_in(image_paths))
        if not refs:
            raise GanInvertError("no images found in the --images paths")
        refs = refs[:max_images] if max_images else refs
        return [(shift, refs) for shift in shifts]

    def score(self, G: Any, result: Any, problem: Problem, shifts: Sequence[Shift],
              lpips: torch.nn.Module | None, seed: int) -> list[dict[str, float]]:
        """Metrics of ``result`` for each of ``shifts`` (one entry unless ``grouped``)."""
        from ..metrics import psnr, ssim
        with torch.no_grad():
            recon = result.render(G)
            metrics = {"psnr": float(psnr(recon, problem.reference)[0]),
                       "ssim": float(ssim(recon, problem.reference)[0])}
            if lpips is not None:
                metrics["lpips"] = float(lpips(recon.clamp(-1, 1), problem.reference.clamp(-1, 1))[0])
        return [metrics]


class GeometricSuite(Suite):
    name = "ood-geometric"
    summary = "rotations, scalings and translations of aligned faces (BDInvert / SPHInX protocol)"
    scored_against = "the shifted image (the input of the inversion)"
    default_shift_names = ("rot10", "rot20", "rot30", "scale0.875", "scale0.75", "scale1.125", "scale1.25",
                           "tx0", "tx50", "tx100", "tx150")
    _pattern = re.compile(r"^(rot|scale|tx|ty)(-?[0-9.]+(?:/[0-9.]+)?)$")

    def __init__(self, border: str = "reflect") -> None:
        if border not in BORDERS:
            raise GanInvertError(f"unknown border fill {border!r}; choose one of {', '.join(BORDERS)}")
        self.border = border

    def options(self) -> dict[str, Any]:
        return {"border": self.border, "working_resolution_floor": GEOMETRIC_WORKING_RESOLUTION}

    def parse_shift(self, name: str) -> Shift:
        expected = "rot<degrees>, scale<factor> (e.g. scale7/8), tx<px> or ty<px> (px at 1024)"
        match = self._pattern.match(name.strip())
        if not match:
            raise GanInvertError(f"unknown shift {name!r} for suite {self.name}; expected {expected}")
        kind, value = match.group(1), _parse_number(match.group(2), name, expected)
        if kind == "scale" and value <= 0:
            raise GanInvertError(f"bad shift {name!r}: the scale must be > 0")
        family, unit = {"rot": ("rotation", "degrees counter-clockwise"), "scale": ("scaling", "scale factor"),
                        "tx": ("translation", "px right at 1024 px"),
                        "ty": ("translation-y", "px down at 1024 px")}[kind]
        return Shift(f"{kind}{format_number(value)}", family, value, unit)

    def warp(self, image: torch.Tensor, shift: Shift) -> torch.Tensor:
        """Apply ``shift`` to images at any resolution (translations scale with the size)."""
        value = float(shift.severity)
        kwargs = {"rotation": {"angle": value}, "scaling": {"scale": value},
                  "translation": {"tx": value / PROTOCOL_RESOLUTION},
                  "translation-y": {"ty": value / PROTOCOL_RESOLUTION}}[shift.family]
        return affine_shift(image, border=self.border, **kwargs)

    def problem(self, image: ImageRef, shift: Shift, resolution: int, seed: int) -> Problem:
        working = max(resolution, GEOMETRIC_WORKING_RESOLUTION)
        aligned = load_image(image.path, working, fit="crop")
        shifted = resize_image(self.warp(aligned, shift), resolution)
        return Problem(clean=resize_image(aligned, resolution), reference=shifted, target=shifted, shown=shifted)


class DomainSuite(Suite):
    name = "ood-domain"
    summary = "images from other domains (animals, X-rays, skin lesions, retinas, cartoons), one folder per shift"
    scored_against = "the image itself (the input of the inversion)"
    has_clean_column = False

    def parse_shift(self, name: str) -> Shift:
        return Shift(safe_name(name), "domain", None, "dataset")

    def plan(self, image_paths: Sequence[Path], shift_names: Sequence[str] | None,
             max_images: int | None) -> list[tuple[Shift, list[ImageRef]]]:
        """Each folder is a shift named after it; a folder holding no images but sub-folders
        that do contributes each sub-folder. Image files given directly form the shift ``files``."""
        groups: dict[str, list[Path]] = {}
        loose: list[Path] = []
        for p in map(Path, image_paths):
            if not p.exists():
                raise GanInvertError(f"--images path not found: {p}")
            if p.is_file():
                loose.append(p)
                continue
            own = list_images([p])
            folders = [p] if own else sorted(d for d in p.iterdir() if d.is_dir() and list_images([d]))
            for folder in folders:
                name = safe_name(folder.name)
                while name in groups:
                    name += "_"
                groups[name] = list_images([folder])
        if loose:
            groups.setdefault("files", []).extend(loose)
        if not groups:
            raise GanInvertError("no images found in the --images paths")
        if shift_names:
            unknown = [n for n in shift_names if safe_name(n) not in groups]
            if unknown:
                raise GanInvertError(f"--shifts {', '.join(unknown)} match no image folder; "
                                     f"folders: {', '.join(groups)}")
            groups = {safe_name(n): groups[safe_name(n)] for n in shift_names}
        plan = []
        for name, paths in groups.items():
            refs = unique_image_refs(paths)
            plan.append((self.parse_shift(name), refs[:max_images] if max_images else refs))
        return plan

    def problem(self, image: ImageRef, shift: Shift, resolution: int, seed: int) -> Problem:
        x = load_image(image.path, resolution, fit="crop")
        return Problem(clean=x, reference=x, target=x, shown=x)


class DenoiseSuite(Suite):
    name = "denoise"
    summary = "Gaussian denoising, noise std 0.2-1.0 on the [-1, 1] scale (SPHInX denoising study)"
    scored_against = "the clean image"
    default_shift_names = ("sigma0.2", "sigma0.4", "sigma0.6", "sigma0.8", "sigma1")

    def parse_shift(self, name: str) -> Shift:
        expected = "sigma<std> (noise std on the [-1, 1] scale, e.g. sigma0.4)"
        match = re.match(r"^sigma([0-9.]+)$", name.strip())
        if not match:
            raise GanInvertError(f"unknown shift {name!r} for suite {self.name}; expected {expected}")
        value = _parse_number(match.group(1), name, expected)
        if value <= 0:
            raise GanInvertError(f"bad shift {name!r}: the noise std must be > 0")
        return Shift(f"sigma{format_number(value)}", "noise", value, "noise std ([-1, 1] scale)")

    def problem(self, image: ImageRef, shift: Shift, resolution: int, seed: int) -> Problem:
        from ..tasks import make_operator
        clean = load_image(image.path, resolution, fit="crop")
        op = make_operator("denoise", sigma=float(shift.severity), seed=seed)
        y = op(clean)
        return Problem(clean=clean, reference=clean, operator=op.A, measurement=y, shown=y)


class CompressedSensingSuite(Suite):
    name = "cs"
    summary = "compressed sensing with 1-5 % partial-circulant measurements (SPHInX, after ILO)"
    scored_against = "the clean image"
    default_shift_names = ("cs1", "cs2", "cs3", "cs4", "cs5")

    def parse_shift(self, name: str) -> Shift:
        expected = "cs<percent of measurements> (e.g. cs2)"
        match = re.match(r"^cs([0-9.]+)%?$", name.strip())
        if not match:
            raise GanInvertError(f"unknown shift {name!r} for suite {self.name}; expected {expected}")
        value = _parse_number(match.group(1), name, expected)
        if not 0 < value <= 100:
            raise GanInvertError(f"bad shift {name!r}: the percentage must be in (0, 100]")
        return Shift(f"cs{format_number(value)}", "measurements", value, "% measurements")

    def problem(self, image: ImageRef, shift: Shift, resolution: int, seed: int) -> Problem:
        from ..tasks import make_operator
        clean = load_image(image.path, resolution, fit="crop")
        op = make_operator("cs", fraction=float(shift.severity) / 100, image_size=resolution, seed=seed)
        return Problem(clean=clean, reference=clean, operator=op.A, measurement=op(clean))


class RobustnessSuite(Suite):
    name = "robustness"
    summary = "w+ perturbation at several SNRs after inverting the clean image (SPHInX Fig. 1)"
    scored_against = "the unperturbed reconstruction (mean over the trials)"
    default_shift_names = ("snr30", "snr20", "snr10", "snr5", "snr0")
    grouped = True
    has_clean_column = False

    def __init__(self, trials: int = 8) -> None:
        if trials <= 0:
            raise GanInvertError(f"--trials must be > 0, got {trials}")
        self.trials = trials

    def options(self) -> dict[str, Any]:
        return {"trials": self.trials}

    def parse_shift(self, name: str) -> Shift:
        expected = "snr<dB> (e.g. snr10)"
        match = re.match(r"^snr(-?[0-9.]+)$", name.strip())
        if not match:
            raise GanInvertError(f"unknown shift {name!r} for suite {self.name}; expected {expected}")
        value = _parse_number(match.group(1), name, expected)
        return Shift(f"snr{format_number(value)}", "latent-snr", value, "SNR of the w+ perturbation (dB)")

    def problem(self, image: ImageRef, shift: Shift, resolution: int, seed: int) -> Problem:
        x = load_image(image.path, resolution, fit="crop")
        return Problem(clean=x, reference=x, target=x, shown=x)

    def score(self, G: Any, result: Any, problem: Problem, shifts: Sequence[Shift],
              lpips: torch.nn.Module | None, seed: int) -> list[dict[str, float]]:
        from ..tasks.robustness import latent_robustness
        rows = latent_robustness(G, result, [float(s.severity) for s in shifts], trials=self.trials,
                                 seed=seed, lpips=lpips)
        out = []
        for shift in shifts:
            mine = [r for r in rows if r["snr_db"] == float(shift.severity)]
            metrics = [k for k in ("psnr", "ssim", "lpips") if k in mine[0]]
            out.append({k: sum(r[k] for r in mine) / len(mine) for k in metrics})
        return out


SUITES: dict[str, type[Suite]] = {cls.name: cls for cls in (
    GeometricSuite, DomainSuite, DenoiseSuite, CompressedSensingSuite, RobustnessSuite)}


def make_suite(name: str, **options: Any) -> Suite:
    """Build suite ``name`` with its options (``border`` for ood-geometric, ``trials`` for robustness).

    Each option is converted to the type its ``__init__`` declares; an option the suite does not
    take, or of the wrong type, raises GanInvertError (see :mod:`ganinvert.settings`).

    >>> make_suite("denoise").parse_shift("sigma0.50").name
    'sigma0.5'
    """
    cls = SUITES.get(name)
    if cls is None:
        raise GanInvertError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    return cls(**coerce_settings(cls, options, owner=f"suite {name}", what="option"))
