"""Teacher generators for distillation: images paired with latents the student also sees.

The only teacher shipped is the DCGAN of the PyPI package ``gan-face-generate`` (MIT licence;
trained on the research-only DigiFace-1M synthetic faces): z (N, 100) -> (N, 3, 64, 64) in
[-1, 1] (tanh output). Only ``gan_face_generate.models`` is imported, because the package's other
modules import torchvision and matplotlib. Install it with
``pip install --no-deps gan-face-generate``.

Example:
    >>> teacher = load_teacher("teacher:gan-face-generate")    # doctest: +SKIP
    >>> teacher(torch.randn(4, teacher.latent_dim)).shape      # doctest: +SKIP
    torch.Size([4, 3, 64, 64])
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from ..checks import check_shape
from ..errors import GanInvertError

TEACHER_PREFIX = "teacher:"
TEACHERS = ("gan-face-generate",)


def is_teacher_spec(data: str) -> bool:
    """Whether a ``--data`` value names a teacher (``teacher:NAME``) rather than a folder."""
    return str(data).startswith(TEACHER_PREFIX)


class GanFaceGenerateTeacher(nn.Module):
    """The ``gan-face-generate`` DCGAN (nz=100, ngf=64, 64 px) in eval mode, frozen."""

    latent_dim = 100
    resolution = 64

    def __init__(self) -> None:
        super().__init__()
        spec = importlib.util.find_spec("gan_face_generate")
        if spec is None or spec.submodule_search_locations is None:
            raise GanInvertError("teacher gan-face-generate is not installed; run: pip install --no-deps gan-face-generate")
        from gan_face_generate.models import Generator  # torch-only module of the package

        weights = Path(next(iter(spec.submodule_search_locations))) / "weights.tar"
        if not weights.is_file():
            raise GanInvertError(f"teacher weights not found at {weights}; reinstall gan-face-generate")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        # Argument values of the package's own inference script (nc=3, nz=100, ngf=64).
        self.net = Generator(ngpu=0, nc=3, nz=self.latent_dim, ngf=64)
        self.net.load_state_dict(state["netG_state_dict"])
        self.net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "GanFaceGenerateTeacher":
        # Its BatchNorm layers must keep their running statistics: the teacher never trains.
        return super().train(False)

    @torch.no_grad()
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, 100) -> images (N, 3, 64, 64) in [-1, 1]."""
        check_shape(z, f"N, {self.latent_dim}", "teacher latents")
        return self.net(z[:, :, None, None])


def load_teacher(data: str) -> GanFaceGenerateTeacher:
    """Build the teacher named by ``teacher:NAME``."""
    name = str(data)[len(TEACHER_PREFIX):]
    if name != "gan-face-generate":
        raise GanInvertError(f"unknown teacher {name!r}; available: {', '.join(TEACHERS)}")
    return GanFaceGenerateTeacher()
