"""F/Z+'s base-code encoder: image -> the feature map ("base code") F at one generator block.

Katsumata et al. ("Revisiting Latent Space of GAN Inversion for Robust Real Image Editing", WACV
2024) initialise the base code of F/Z+ with the encoder of BDInvert (Kang et al., ICCV 2021,
``kkang831/BDInvert_Release``, ``train_basecode_encoder.py``): a CNN that reads the image at 8x the
base code's side and produces the feature map at that block from which the rest of the generator
reproduces the image, trained only on generated pictures. Here the network is a
:class:`~ganinvert.models.encoders.ConvBackbone` pyramid from the input side down to the feature
side followed by one residual block and a 1x1 projection to the block's channels; its training
(``ganinvert train-inverter fz-encoder``, :mod:`ganinvert.training.inverters.basecode`) renders
the prediction at the ``w_avg`` detail codes inversion starts from.

The input side is ``min(8 * feature side, G.resolution)`` (issue #8: the image downsampled to 8x
the feature side): 64 px for the default generator's 16x16 block 2, i.e. the image itself.

Example:
    >>> encoder = BaseCodeEncoder.for_generator(G, block=2)          # doctest: +SKIP
    >>> encoder(images).shape                                         # doctest: +SKIP
    torch.Size([4, 256, 16, 16])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import GanInvertError
from .encoders import ConvBackbone, ResidualBlock, load_network, save_network
from .stylegan2 import StyleGAN2Generator

KIND = "fz-encoder"
#: The encoder reads the image downsampled to 8x the base code's side (issue #8).
INPUT_FACTOR = 8


def encoder_input_side(G: StyleGAN2Generator, block: int) -> int:
    """Side of the image the encoder reads: 8x the block's side, at most the generator's."""
    return min(INPUT_FACTOR * G.feature_shape(block)[1], G.resolution)


class BaseCodeEncoder(torch.nn.Module):
    """Image (N, 3, R, R) in [-1, 1] at the generator's resolution -> base code (N, C, r, r).

    Args:
        input_side: side the image is resized to (area averaging) before the backbone.
        feature_side, feature_channels: the block's feature shape ``G.feature_shape(block)[1:]``.
        block: the generator block whose output the code replaces (kept for checks).
        base_width: channels at the input side; they double per halving, at most 256.
        image_side: the side of the images it is given (the generator's resolution).
    """

    def __init__(self, input_side: int, feature_side: int, feature_channels: int, block: int,
                 image_side: int, base_width: int = 32) -> None:
        super().__init__()
        if input_side < feature_side or input_side & (input_side - 1) or feature_side & (feature_side - 1):
            raise GanInvertError(f"encoder input side {input_side} must be a power of two >= the feature side "
                                 f"{feature_side}")
        self.config = {"input_side": input_side, "feature_side": feature_side, "feature_channels": feature_channels,
                       "block": block, "image_side": image_side, "base_width": base_width}
        widths, side, width = {}, input_side, base_width
        while side >= feature_side:
            widths[side] = width
            side, width = side // 2, min(2 * width, 256)
        self.backbone = ConvBackbone(input_side, widths)
        top = widths[feature_side]
        self.refine = ResidualBlock(top, top, down=False)
        self.project = torch.nn.Conv2d(top, feature_channels, 1)
        with torch.no_grad():  # StyleGAN activations are small (std ~0.1): start near zero, not at std ~1
            self.project.weight.mul_(0.1)

    @classmethod
    def for_generator(cls, G: StyleGAN2Generator, block: int, base_width: int = 32) -> "BaseCodeEncoder":
        channels, side, _ = G.feature_shape(block)
        return cls(encoder_input_side(G, block), side, channels, block, G.resolution, base_width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c = self.config
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] != images.shape[-2] \
                or images.shape[-1] != c["image_side"]:
            raise GanInvertError(f"base-code encoder expects (N, 3, {c['image_side']}, {c['image_side']}) images, "
                                 f"got {tuple(images.shape)}")
        x = images
        if x.shape[-1] != c["input_side"]:
            x = F.interpolate(x, size=(c["input_side"],) * 2, mode="area")
        h = self.backbone(x)[c["feature_side"]]
        return self.project(self.refine(h))


def save_basecode_encoder(encoder: BaseCodeEncoder, path: str | Path, G: StyleGAN2Generator,
                          meta: dict[str, Any] | None = None) -> Path:
    """Write ``encoder`` as a ``fz-encoder`` network for ``G``."""
    return save_network(encoder, path, kind=KIND, config=encoder.config, generator=G, meta=meta)


def load_basecode_encoder(path: str | Path, G: StyleGAN2Generator, block: int | None = None) -> BaseCodeEncoder:
    """Load a ``fz-encoder`` file for ``G`` (CheckpointError when it is for another generator).

    Raises GanInvertError when ``block`` is given and the encoder predicts another block.
    """
    state, config, _ = load_network(path, KIND, G)
    if block is not None and config.get("block") != block:
        raise GanInvertError(f"{path} predicts the features of block {config.get('block')}, not of feature_block "
                             f"{block}")
    encoder = BaseCodeEncoder(**config)
    encoder.load_state_dict(state)
    return encoder.to(G.w_avg.device).eval().requires_grad_(False)
