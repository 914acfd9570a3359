"""SPHInX: inversion through style and content projection heads (Subramanyam et al., ICML 2022).

Instead of latent codes, the method optimises

* a style projection head Ps: a shared MLP bottleneck applied to each of the ``num_ws`` rows of
  z+ ~ N(0, I), then one MLP decoder per row, whose output is used directly as w+ (the
  authors' ``StyleProjection``; no mapping network is involved);
* optionally a content projection head Pc: 1x1 convolutions on a Gaussian 4x4 input whose output
  replaces the generator's constant input (``ContentProjection``);
* optionally the per-layer noise maps B.

A fresh z+ (and Pc input) is drawn every iteration, so every draw must reconstruct the image: the
vicinal regulariser. A finished result renders with a stored fixed draw (``render_z``) and can
render any number of fresh draws.

Heads are kept as batched tensors (first dim = image) and applied with batched matrix products,
so N images are inverted in one pass and each equals its single run.

Widths are written for style_dim 512 ("D" = style_dim, "C" = the constant input's channels) and
scale with the generator; the bottleneck widths that the authors derive from their fixed 32-d code
stay fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...errors import GanInvertError
from ...models.ops import fused_leaky_relu
from ...models.stylegan2 import StyleGAN2Generator
from ..schedules import get_schedule
from .base import (InversionContext, Method, MethodSettings, ParamGroup, Params, Preset, Stage, SynthesisInputs,
                   check_init, encoder_start, gather_noise, noise_names, rand, randn, register)


@dataclass
class SphinxSettings(MethodSettings):
    """Attributes:
        schedule: LR schedule of the Ps group.
        content: use the content head Pc; noise: optimise the noise maps B.
        content_lr, noise_lr: constant learning rates of Pc and B.
        encoder_widths: output widths of the shared bottleneck layers.
        decoder_widths: output widths of each per-layer decoder (the last must be "D").
        activation: "first" (ReLU after the first layer of encoder and decoders only, as the
            authors' code) or "all" (ReLU after every hidden layer).
        content_input: channels of the Gaussian Pc input; content_widths: Pc conv widths (last "C").
        init: "w_avg" (the authors' randomly initialised heads) or "encoder": Ps's output bias is
            shifted so the stored draw maps to the w that ``init_encoder`` (a ``hyperinverter-e1``
            network, "default" = the bundled one) predicts for the image.
    """

    steps: int = 5000
    lr: float = 1e-3
    lambda_mse: float = 1.0
    lambda_lpips: float = 1.5
    schedule: str = "rampup-cosine"
    content: bool = True
    noise: bool = True
    content_lr: float = 1e-3
    noise_lr: float = 1e-3
    encoder_widths: tuple[str, ...] = ("D/2", "D/4", "32")
    decoder_widths: tuple[str, ...] = ("64", "128", "D")
    activation: str = "first"
    content_input: str = "8"
    content_widths: tuple[str, ...] = ("32", "128", "C")
    init: str = "w_avg"
    init_encoder: str = "default"

    def validate(self) -> None:
        super().validate()
        check_init(self.init)
        get_schedule(self.schedule)  # raises GanInvertError naming the known schedules
        if self.activation not in ("first", "all"):
            raise GanInvertError(f"activation must be 'first' or 'all', got {self.activation!r}")
        if self.decoder_widths[-1:] != ("D",) or self.content_widths[-1:] != ("C",):
            raise GanInvertError("the last decoder width must be 'D' and the last content width 'C'")
        for spec in (*self.encoder_widths, *self.decoder_widths, *self.content_widths, self.content_input):
            try:
                ok = _width(spec, 1, 1) >= 1
            except (ValueError, ZeroDivisionError):
                ok = False
            if not ok:
                raise GanInvertError(f"widths must be integers >= 1, 'D', 'C', 'D/k' or 'C/k', got {spec!r}")


def _width(spec: str | int, style_dim: int, const_channels: int) -> int:
    spec = str(spec).replace(" ", "")
    base, _, div = spec.partition("/")
    value = {"D": style_dim, "C": const_channels}.get(base)
    if value is None:
        return int(spec)
    return max(1, value // int(div)) if div else value


@register
class Sphinx(Method):
    name = "sphinx"
    summary = "SPHInX: style (+ content) projection heads fed a fresh z+ every step, and noise maps"
    Settings = SphinxSettings
    presets = {
        "sphinx-official": Preset(
            {"steps": 5000, "lr": 1e-3, "lambda_mse": 1.0, "lambda_lpips": 1.5, "schedule": "rampup-cosine",
             "content": True, "noise": True, "content_lr": 1e-3, "noise_lr": 1e-3,
             "encoder_widths": ("D/2", "D/4", "32"), "decoder_widths": ("64", "128", "D"), "activation": "first",
             "content_input": "8", "content_widths": ("32", "128", "C")},
            "authors' code, Rakshith-2905/SPHInX main.py (--step 5000, --lr 0.001, --mse 1.0, --lpips_weight 1.5, "
            "get_lr on param group 0 only) and model.py (StyleProjection, ContentProjection)"),
        "sphinx-paper": Preset(
            {"steps": 10000, "lr": 1e-3, "lambda_mse": 1.0, "lambda_lpips": 1.0, "schedule": "trapezoid",
             "content": True, "noise": True, "content_lr": 1e-3, "noise_lr": 1e-3,
             "encoder_widths": ("D", "D/2", "16"), "decoder_widths": ("32", "64", "D"), "activation": "all",
             "content_input": "C", "content_widths": ("32", "128", "C")},
            "SPHInX paper (Subramanyam et al., ICML 2022) §4.1: Ps FC [512, 256, 16], decoders FC [32, 64, 512], "
            "Pc convs 32/128/512 on a 4x4x512 Gaussian, 10 000 iterations, trapezoid LR peaking at 1e-3, MSE + LPIPS"),
    }
    default_preset = "sphinx-official"

    # -- structure --------------------------------------------------------------------------
    def _dims(self, G: StyleGAN2Generator) -> tuple[list[int], list[int], list[int]]:
        s, c4 = self.settings, G.channels[4]
        enc = [G.style_dim] + [_width(w, G.style_dim, c4) for w in s.encoder_widths]
        dec = [enc[-1]] + [_width(w, G.style_dim, c4) for w in s.decoder_widths]
        con = [_width(s.content_input, G.style_dim, c4)] + [_width(w, G.style_dim, c4) for w in s.content_widths]
        return enc, dec, con

    def head_names(self, G: StyleGAN2Generator, which: str) -> tuple[str, ...]:
        enc, dec, con = self._dims(G)
        if which == "ps":
            return tuple(f"ps.{part}.{i}.{k}" for part, dims in (("enc", enc), ("dec", dec))
                         for i in range(len(dims) - 1) for k in ("weight", "bias"))
        # The last Pc conv has no bias and no activation (authors' ContentProjection.conv3).
        layers = len(con) - 1
        return tuple(f"pc.{i}.{k}" for i in range(layers)
                     for k in (("weight", "bias") if i < layers - 1 else ("weight",)))

    def stages(self, G: StyleGAN2Generator) -> list[Stage]:
        s = self.settings
        groups = [ParamGroup(self.head_names(G, "ps"), s.lr, s.schedule)]
        if s.content:
            groups.append(ParamGroup(self.head_names(G, "pc"), s.content_lr))
        if s.noise:
            groups.append(ParamGroup(noise_names(G), s.noise_lr))
        return [Stage("main", s.steps, tuple(groups))]

    def init_params(self, ctx: InversionContext) -> Params:
        G, rngs, device = ctx.G, ctx.rngs, ctx.device
        enc, dec, con = self._dims(G)
        params: Params = {}

        def uniform(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
            # torch.nn.Linear's default initialisation, drawn from the per-image generators.
            return (rand(rngs, shape, device) * 2 - 1) / math.sqrt(fan_in)

        for i in range(len(enc) - 1):
            params[f"ps.enc.{i}.weight"] = uniform((enc[i + 1], enc[i]), enc[i])
            params[f"ps.enc.{i}.bias"] = uniform((enc[i + 1],), enc[i])
        for i in range(len(dec) - 1):
            params[f"ps.dec.{i}.weight"] = uniform((G.num_ws, dec[i + 1], dec[i]), dec[i])
            params[f"ps.dec.{i}.bias"] = uniform((G.num_ws, dec[i + 1]), dec[i])
        if self.settings.content:
            for i in range(len(con) - 1):
                # EqualConv2d (1x1, unit-normal weights scaled at run time) + FusedLeakyReLU bias
                # on the hidden layers; the last conv has neither (ContentProjection.conv3).
                params[f"pc.{i}.weight"] = randn(rngs, (con[i + 1], con[i]), device)
                if i < len(con) - 2:
                    params[f"pc.{i}.bias"] = torch.zeros(len(rngs), con[i + 1], device=device)
        if self.settings.noise:
            for name, shape in zip(noise_names(G), G.noise_shapes):
                params[name] = randn(rngs, shape[1:], device)
        params["render_z"] = randn(rngs, (G.num_ws, G.style_dim), device)
        if self.settings.content:
            params["render_content_z"] = randn(rngs, (con[0], 4, 4), device)
        if self.settings.init == "encoder":
            # Shift Ps's output bias so the head maps the stored draw to the encoder's w at every layer.
            w = encoder_start(ctx, self.settings.init_encoder, self.name)
            with torch.no_grad():
                params[f"ps.dec.{len(dec) - 2}.bias"] += G.broadcast(w) - self.style_head(params, params["render_z"])
        return params

    # -- heads --------------------------------------------------------------------------------
    def style_head(self, params: Params, z: torch.Tensor) -> torch.Tensor:
        """Ps: z+ (N, num_ws, D) -> w+ (N, num_ws, D)."""
        h, i = z, 0
        while f"ps.enc.{i}.weight" in params:
            h = torch.baddbmm(params[f"ps.enc.{i}.bias"][:, None], h, params[f"ps.enc.{i}.weight"].transpose(1, 2))
            h = self._activate(h, i, f"ps.enc.{i + 1}.weight" in params)
            i += 1
        i = 0
        while f"ps.dec.{i}.weight" in params:
            h = torch.einsum("nli,nloi->nlo", h, params[f"ps.dec.{i}.weight"]) + params[f"ps.dec.{i}.bias"]
            h = self._activate(h, i, f"ps.dec.{i + 1}.weight" in params)
            i += 1
        return h

    def _activate(self, h: torch.Tensor, index: int, hidden: bool) -> torch.Tensor:
        if hidden and (self.settings.activation == "all" or index == 0):
            return torch.relu(h)
        return h

    def content_head(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Pc: Gaussian (N, c_in, 4, 4) -> constant-input replacement (N, C4, 4, 4)."""
        i = 0
        while f"pc.{i}.weight" in params:
            weight = params[f"pc.{i}.weight"]
            x = torch.einsum("nchw,noc->nohw", x, weight / math.sqrt(weight.shape[-1]))
            if f"pc.{i + 1}.weight" in params:  # leaky ReLU after all but the last conv
                x = fused_leaky_relu(x + params[f"pc.{i}.bias"][:, :, None, None], None)
            i += 1
        return x

    def _inputs(self, G: StyleGAN2Generator, params: Params, z: torch.Tensor,
                content_z: torch.Tensor | None) -> SynthesisInputs:
        const = self.content_head(params, content_z) if content_z is not None else None
        return SynthesisInputs(ws=self.style_head(params, z), noise=gather_noise(G, params), const=const)

    def inputs(self, ctx: InversionContext, params: Params) -> SynthesisInputs:
        device = params["render_z"].device
        z = randn(ctx.rngs, params["render_z"].shape[1:], device)
        content_z = (randn(ctx.rngs, params["render_content_z"].shape[1:], device) if "render_content_z" in params
                     else None)
        return self._inputs(ctx.G, params, z, content_z)

    def render_inputs(self, G: StyleGAN2Generator, params: Params) -> SynthesisInputs:
        return self._inputs(G, params, params["render_z"], params.get("render_content_z"))

