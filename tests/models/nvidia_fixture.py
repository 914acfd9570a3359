"""Test helper: write small pickles with the structure of NVIDIA stylegan2-ada-pytorch network pickles.

NVIDIA's training loop pickles ``dict(training_set_kwargs=EasyDict, G=..., D=..., G_ema=...,
augment_pipe=...)`` with plain ``pickle.dump``. Every network module is a
``torch_utils.persistence`` object, pickled as the call
``torch_utils.persistence._reconstruct_persistent_obj(dict(type='class', version=6,
module_src=<module source text>, class_name=..., state=<the module's __dict__>))``; the state
holds ``nn.Module``'s bookkeeping (``_parameters``, ``_buffers``, ``_modules`` OrderedDicts, hook
dicts, ``_non_persistent_buffers_set``), the constructor's attributes (numpy float64 gains among
them) and ``_init_args``/``_init_kwargs``; tensors pickle as torch pickles them
(``torch._utils._rebuild_parameter`` / ``_rebuild_tensor_v2`` over
``torch.storage._load_from_bytes``).

The writers here reproduce that byte structure without NVIDIA's code: a pickler subclass writes
the global references ``torch_utils.persistence._reconstruct_persistent_obj`` and
``dnnlib.util.EasyDict`` (modules that do not exist here), and numpy scalars under numpy 1's
``numpy.core.multiarray`` name as 2021-era pickles have them. ``module_src`` is a stand-in text
(tests put code in it to prove the reader never executes it).

The generator record is built from a rosinality-layout :class:`StyleGAN2Generator` by the inverse
of the reader's name mapping, written out layer by layer here (not imported from the reader), so
that ``test_nvidia_pkl`` can check it against an independent NVIDIA-formulation forward pass.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import tempfile
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ganinvert.models.stylegan2 import StyledConv, StyleGAN2Generator, ToRGB

STAND_IN_MODULE_SRC = "# Stand-in for the source text of training/networks.py; a reader must never execute it.\n"
PERSISTENCE_VERSION = 6  # torch_utils/persistence.py: _version


def _reconstruct_persistent_obj(meta: dict) -> Any:
    """Referenced by name only: the pickle names ``torch_utils.persistence._reconstruct_persistent_obj``."""
    raise RuntimeError("placeholder; never called")


class EasyDict(dict):
    """Pickled under the name ``dnnlib.util.EasyDict``."""


def _numpy_scalar_reconstructor() -> Any:
    return np.float64(1.0).__reduce__()[0]


#: Objects the pickle must name differently from where they live here.
_RENAMED_GLOBALS = {
    _reconstruct_persistent_obj: ("torch_utils.persistence", "_reconstruct_persistent_obj"),
    EasyDict: ("dnnlib.util", "EasyDict"),
    _numpy_scalar_reconstructor(): ("numpy.core.multiarray", "scalar"),
}


class PersistentObject:
    """Pickles as NVIDIA's persistent objects do; ``state`` stays editable for tests."""

    def __init__(self, class_name: str, state: dict, module_src: str = STAND_IN_MODULE_SRC) -> None:
        self.class_name, self.state, self.module_src = class_name, state, module_src

    @property
    def modules(self) -> "OrderedDict[str, PersistentObject]":
        return self.state["_modules"]

    @property
    def params(self) -> "OrderedDict[str, nn.Parameter]":
        return self.state["_parameters"]

    def __reduce__(self) -> tuple:
        meta = dict(type="class", version=PERSISTENCE_VERSION, module_src=self.module_src,
                    class_name=self.class_name, state=self.state)
        return _reconstruct_persistent_obj, (meta,)


class _NvidiaPickler(pickle._Pickler):
    """Pure-Python pickler that writes the foreign global names of :data:`_RENAMED_GLOBALS`."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        target = _RENAMED_GLOBALS.get(obj)
        if target is None:
            return super().save_global(obj, name)
        module, qualname = target
        if self.proto >= 4:
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("ascii"))
        self.memoize(obj)

    # The base class's dispatch table binds functions to its own save_global.
    dispatch = {**pickle._Pickler.dispatch, types.FunctionType: save_global}


def write_network_pickle(path: str | os.PathLike, data: Any, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    """``pickle.dump(data)`` as NVIDIA's training loop does, written atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            _NvidiaPickler(f, protocol=protocol).dump(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# Module records (the layout of NVIDIA's training/networks.py)
# ---------------------------------------------------------------------------------------------

def _param(t: torch.Tensor) -> nn.Parameter:
    # Snapshots are taken after .requires_grad_(False).
    return nn.Parameter(t.detach().clone().float().contiguous(), requires_grad=False)


def module_record(class_name: str, *, params: dict | None = None, buffers: dict | None = None,
                  modules: dict | None = None, init_kwargs: dict | None = None,
                  module_src: str = STAND_IN_MODULE_SRC, **attrs: Any) -> PersistentObject:
    """A persistent ``nn.Module``: the keys ``nn.Module.__init__`` creates plus ``attrs``."""
    state = {
        "training": False,
        "_parameters": OrderedDict((k, None if v is None else _param(v)) for k, v in (params or {}).items()),
        "_buffers": OrderedDict((k, v.detach().clone().float()) for k, v in (buffers or {}).items()),
        "_non_persistent_buffers_set": set(),
        "_backward_hooks": OrderedDict(),
        "_forward_hooks": OrderedDict(),
        "_forward_pre_hooks": OrderedDict(),
        "_state_dict_hooks": OrderedDict(),
        "_load_state_dict_pre_hooks": OrderedDict(),
        "_modules": OrderedDict(modules or {}),
        **attrs,
        "_init_args": (),
        "_init_kwargs": dict(init_kwargs or {}),
    }
    return PersistentObject(class_name, state, module_src)


def setup_filter(taps: list[float]) -> torch.Tensor:
    """NVIDIA's ``upfirdn2d.setup_filter`` for short taps: the outer product, normalised to sum 1."""
    f = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def fc_record(weight: torch.Tensor, bias: torch.Tensor, *, activation: str, lr_multiplier: float,
              src: str) -> PersistentObject:
    """``FullyConnectedLayer``; ``weight``/``bias`` are its stored (pre-gain) parameters."""
    out_features, in_features = weight.shape
    return module_record("FullyConnectedLayer", params={"weight": weight, "bias": bias}, module_src=src,
                         activation=activation, weight_gain=np.float64(lr_multiplier / np.sqrt(in_features)),
                         bias_gain=lr_multiplier,
                         init_kwargs=dict(in_features=in_features, out_features=out_features,
                                          activation=activation, lr_multiplier=lr_multiplier))


def _affine(conv, src: str) -> PersistentObject:
    """rosinality's modulation ``EqualLinear`` (lr_mul 1) as NVIDIA's ``affine``."""
    mod = conv.modulation
    return fc_record(mod.weight * mod.lr_mul, mod.bias * mod.lr_mul, activation="linear", lr_multiplier=1, src=src)


def _synthesis_layer(layer: StyledConv, noise: torch.Tensor, resolution: int, up: int, taps: list[float],
                     conv_clamp: float | None, src: str) -> PersistentObject:
    weight = layer.conv.weight[0]  # (O, I, 3, 3); NVIDIA's layer has no weight gain (demodulated)
    return module_record(
        "SynthesisLayer", module_src=src,
        params={"weight": weight, "noise_strength": layer.noise.weight.reshape(()), "bias": layer.activate.bias},
        buffers={"resample_filter": setup_filter(taps), "noise_const": noise[0, 0]},
        modules={"affine": _affine(layer.conv, src)},
        resolution=resolution, up=up, use_noise=True, activation="lrelu", conv_clamp=conv_clamp, padding=1,
        act_gain=np.float64(np.sqrt(2)),
        init_kwargs=dict(in_channels=weight.shape[1], out_channels=weight.shape[0], resolution=resolution,
                         up=up, conv_clamp=conv_clamp))


def _torgb(layer: ToRGB, conv_clamp: float | None, src: str) -> PersistentObject:
    weight = layer.conv.weight[0]  # (3, C, 1, 1)
    return module_record("ToRGBLayer", module_src=src, params={"weight": weight, "bias": layer.bias.reshape(3)},
                         modules={"affine": _affine(layer.conv, src)}, conv_clamp=conv_clamp,
                         weight_gain=np.float64(1 / np.sqrt(weight.shape[1])),
                         init_kwargs=dict(in_channels=weight.shape[1], out_channels=3, conv_clamp=conv_clamp))


def generator_record(G: StyleGAN2Generator, *, c_dim: int = 0, architecture: str = "skip",
                     mapping_lr: float = 0.01, conv_clamp: float | None = 256,
                     module_src: str = STAND_IN_MODULE_SRC, seed: int = 0) -> PersistentObject:
    """NVIDIA ``Generator`` record holding ``G``'s weights.

    Args:
        c_dim: > 0 adds NVIDIA's label embedding (a conditional generator; random weights).
        architecture: ``'skip'`` (exact copy of ``G``), or ``'orig'``/``'resnet'``, which keep
            NVIDIA's layer layout for those architectures (a ToRGB only in the last block,
            ``resnet`` skip convolutions with random weights) for refusal tests.
        mapping_lr: the pickle's mapping ``lr_multiplier``; stored weights are rescaled so the
            network computes the same function.
        conv_clamp: NVIDIA's activation clamp attribute (256 in their fp16 configs).
    """
    src, g = module_src, torch.Generator().manual_seed(seed)
    w_dim, taps = G.style_dim, list(G.blur_kernel)
    noises = [getattr(G.noises, f"noise_{i}") for i in range(G.num_layers)]

    fcs = OrderedDict()
    embed = {}
    if c_dim:
        embed["embed"] = fc_record(torch.randn(w_dim, c_dim, generator=g), torch.zeros(w_dim),
                                   activation="linear", lr_multiplier=mapping_lr, src=src)
    for i, layer in enumerate(G.style[1:]):
        ratio = layer.lr_mul / mapping_lr  # same effective weight: w * lr / sqrt(in) in both codes
        weight = layer.weight * ratio
        if i == 0 and c_dim:  # fc0 reads cat(normalised z, normalised label embedding)
            weight = torch.cat([weight, torch.randn(w_dim, w_dim, generator=g)], 1)
        fcs[f"fc{i}"] = fc_record(weight, layer.bias * ratio, activation="lrelu", lr_multiplier=mapping_lr, src=src)
    mapping = module_record(
        "MappingNetwork", module_src=src, modules={**embed, **fcs}, buffers={"w_avg": G.w_avg},
        z_dim=w_dim, c_dim=c_dim, w_dim=w_dim, num_ws=G.num_ws, num_layers=G.n_mlp, w_avg_beta=0.995,
        init_kwargs=dict(z_dim=w_dim, c_dim=c_dim, w_dim=w_dim, num_ws=G.num_ws, num_layers=G.n_mlp))

    blocks = OrderedDict()
    for b, res in enumerate(G.block_resolutions):
        is_last = res == G.resolution
        has_rgb = is_last or architecture == "skip"
        layers: dict[str, PersistentObject] = {}
        params = {}
        if b == 0:
            params["const"] = G.input.input[0]
            layers["conv1"] = _synthesis_layer(G.conv1, noises[0], res, 1, taps, conv_clamp, src)
            rgb = G.to_rgb1
        else:
            layers["conv0"] = _synthesis_layer(G.convs[2 * b - 2], noises[2 * b - 1], res, 2, taps, conv_clamp, src)
            layers["conv1"] = _synthesis_layer(G.convs[2 * b - 1], noises[2 * b], res, 1, taps, conv_clamp, src)
            rgb = G.to_rgbs[b - 1]
        if has_rgb:
            layers["torgb"] = _torgb(rgb, conv_clamp, src)
        if b > 0 and architecture == "resnet":
            in_ch, out_ch = G.channels[res // 2], G.channels[res]
            layers["skip"] = module_record(
                "Conv2dLayer", module_src=src, params={"weight": torch.randn(out_ch, in_ch, 1, 1, generator=g)},
                buffers={"resample_filter": setup_filter(taps)}, activation="linear", up=2, down=1,
                conv_clamp=None, padding=0, weight_gain=np.float64(1 / np.sqrt(in_ch)), act_gain=1.0)
        blocks[f"b{res}"] = module_record(
            "SynthesisBlock", module_src=src, params=params, buffers={"resample_filter": setup_filter(taps)},
            modules=layers, in_channels=0 if b == 0 else G.channels[res // 2], w_dim=w_dim, resolution=res,
            img_channels=3, is_last=is_last, architecture=architecture, use_fp16=False, channels_last=False,
            num_conv=1 if b == 0 else 2, num_torgb=int(has_rgb))
    synthesis = module_record(
        "SynthesisNetwork", module_src=src, modules=blocks, w_dim=w_dim, img_resolution=G.resolution,
        img_resolution_log2=int(math.log2(G.resolution)), img_channels=3, block_resolutions=G.block_resolutions,
        num_ws=G.num_ws)
    synthesis_kwargs = EasyDict(channel_base=32768, channel_max=512, num_fp16_res=0, conv_clamp=conv_clamp,
                                architecture=architecture)
    return module_record(
        "Generator", module_src=src, modules={"synthesis": synthesis, "mapping": mapping},
        z_dim=w_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=G.resolution, img_channels=3, num_ws=G.num_ws,
        init_kwargs=dict(z_dim=w_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=G.resolution, img_channels=3,
                         mapping_kwargs=EasyDict(num_layers=G.n_mlp), synthesis_kwargs=synthesis_kwargs))


def discriminator_record(resolution: int, channels: int = 8, seed: int = 0,
                         module_src: str = STAND_IN_MODULE_SRC) -> PersistentObject:
    """A small NVIDIA ``Discriminator`` ('resnet' blocks + epilogue) with random weights."""
    g, src = torch.Generator().manual_seed(seed), module_src

    def conv(in_ch: int, out_ch: int, k: int, down: int = 1, bias: bool = True) -> PersistentObject:
        params = {"weight": torch.randn(out_ch, in_ch, k, k, generator=g)}
        if bias:
            params["bias"] = torch.zeros(out_ch)
        return module_record("Conv2dLayer", module_src=src, params=params,
                             buffers={"resample_filter": setup_filter([1, 3, 3, 1])}, activation="lrelu",
                             up=1, down=down, conv_clamp=None, padding=k // 2,
                             weight_gain=np.float64(1 / np.sqrt(in_ch * k * k)), act_gain=np.float64(np.sqrt(2)))

    blocks = OrderedDict()
    res = resolution
    while res > 4:
        layers = {"conv0": conv(channels, channels, 3), "conv1": conv(channels, channels, 3, down=2),
                  "skip": conv(channels, channels, 1, down=2, bias=False)}
        if res == resolution:
            layers = {"fromrgb": conv(3, channels, 1), **layers}
        blocks[f"b{res}"] = module_record("DiscriminatorBlock", module_src=src, modules=layers,
                                          buffers={"resample_filter": setup_filter([1, 3, 3, 1])},
                                          in_channels=0 if res == resolution else channels, resolution=res,
                                          img_channels=3, architecture="resnet", use_fp16=False)
        res //= 2
    fc = fc_record(torch.randn(channels, channels * 16, generator=g), torch.zeros(channels),
                   activation="lrelu", lr_multiplier=1, src=src)
    out = fc_record(torch.randn(1, channels, generator=g), torch.zeros(1), activation="linear",
                    lr_multiplier=1, src=src)
    blocks["b4"] = module_record(
        "DiscriminatorEpilogue", module_src=src,
        modules={"mbstd": module_record("MinibatchStdLayer", module_src=src, group_size=4, num_channels=1),
                 "conv": conv(channels + 1, channels, 3), "fc": fc, "out": out},
        in_channels=channels, cmap_dim=0, resolution=4, img_channels=3, architecture="resnet")
    return module_record("Discriminator", module_src=src, modules=blocks, c_dim=0, img_resolution=resolution,
                         img_channels=3, block_resolutions=[int(name[1:]) for name in blocks])


def stylegan3_generator_record(w_dim: int = 8, channels: int = 8, seed: int = 0,
                               module_src: str = STAND_IN_MODULE_SRC) -> PersistentObject:
    """A tiny StyleGAN3 (``training/networks_stylegan3.py``) ``Generator`` record, random weights."""
    g, src = torch.Generator().manual_seed(seed), module_src
    mapping = module_record(
        "MappingNetwork", module_src=src, buffers={"w_avg": torch.zeros(w_dim)},
        modules={f"fc{i}": fc_record(torch.randn(w_dim, w_dim, generator=g), torch.zeros(w_dim),
                                     activation="lrelu", lr_multiplier=0.01, src=src) for i in range(2)},
        z_dim=w_dim, c_dim=0, w_dim=w_dim, num_ws=4, num_layers=2, w_avg_beta=0.998)
    synthesis_input = module_record(
        "SynthesisInput", module_src=src, params={"weight": torch.randn(channels, channels, generator=g)},
        buffers={"transform": torch.eye(3), "freqs": torch.randn(channels, 2, generator=g),
                 "phases": torch.rand(channels, generator=g) - 0.5},
        modules={"affine": fc_record(torch.zeros(4, w_dim), torch.tensor([1.0, 0, 0, 0]), activation="linear",
                                     lr_multiplier=1, src=src)},
        w_dim=w_dim, channels=channels, size=np.array([36, 36]), sampling_rate=16, bandwidth=2)
    layers = {"input": synthesis_input}
    for i, name in enumerate(["L0_36_8", "L1_36_8", "L2_16_3"]):
        layers[name] = module_record(
            "SynthesisLayer", module_src=src,
            params={"weight": torch.randn(channels if i < 2 else 3, channels, 3 if i < 2 else 1, 3 if i < 2 else 1,
                                          generator=g), "bias": torch.zeros(channels if i < 2 else 3)},
            buffers={"magnitude_ema": torch.ones([]), "up_filter": torch.ones(6) / 6, "down_filter": torch.ones(6) / 6},
            modules={"affine": fc_record(torch.randn(channels, w_dim, generator=g), torch.ones(channels),
                                         activation="linear", lr_multiplier=1, src=src)},
            w_dim=w_dim, is_torgb=i == 2, is_critically_sampled=i == 2, use_fp16=False, conv_kernel=3 if i < 2 else 1)
    synthesis = module_record("SynthesisNetwork", module_src=src, modules=layers, w_dim=w_dim, img_resolution=16,
                              img_channels=3, num_ws=4, num_layers=2, num_critical=2)
    return module_record("Generator", module_src=src, modules={"mapping": mapping, "synthesis": synthesis},
                         z_dim=w_dim, c_dim=0, w_dim=w_dim, img_resolution=16, img_channels=3, num_ws=4)


# ---------------------------------------------------------------------------------------------
# Whole files
# ---------------------------------------------------------------------------------------------

def perturbed_copy(G: StyleGAN2Generator, seed: int = 1, scale: float = 0.1) -> StyleGAN2Generator:
    """A copy of ``G`` with seeded noise on every parameter: stands in for the raw training ``G``."""
    g = torch.Generator().manual_seed(seed)
    other = copy.deepcopy(G)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return other


def write_nvidia_fixture(path: str | os.PathLike, G: StyleGAN2Generator, *, keys: tuple[str, ...] = ("G", "D", "G_ema"),
                         protocol: int = pickle.DEFAULT_PROTOCOL, module_src: str = STAND_IN_MODULE_SRC,
                         **record_kwargs: Any) -> None:
    """Write a training snapshot like NVIDIA's ``network-snapshot-*.pkl`` with ``G_ema = G``.

    ``keys`` selects the networks present; ``G`` holds a perturbed copy (the raw training
    generator differs from its moving average), ``D`` a small random discriminator.
    ``record_kwargs`` go to :func:`generator_record`.
    """
    data: dict[str, Any] = {"training_set_kwargs": EasyDict(class_name="training.dataset.ImageFolderDataset",
                                                            path="datasets/fixture.zip", use_labels=False,
                                                            max_size=16, xflip=False, resolution=G.resolution)}
    if "G" in keys:
        data["G"] = generator_record(perturbed_copy(G), module_src=module_src, **record_kwargs)
    if "D" in keys:
        data["D"] = discriminator_record(G.resolution, module_src=module_src)
    if "G_ema" in keys:
        data["G_ema"] = generator_record(G, module_src=module_src, **record_kwargs)
    data["augment_pipe"] = None
    write_network_pickle(path, data, protocol)


def write_stylegan3_fixture(path: str | os.PathLike) -> None:
    """A snapshot whose ``G``/``G_ema`` are StyleGAN3 generators."""
    write_network_pickle(path, {"G": stylegan3_generator_record(seed=1), "D": discriminator_record(16),
                                "G_ema": stylegan3_generator_record(seed=2), "augment_pipe": None,
                                "training_set_kwargs": None})


def write_discriminator_only_fixture(path: str | os.PathLike, resolution: int = 16) -> None:
    """A pickle that holds only a discriminator (as people save for transfer learning)."""
    write_network_pickle(path, {"D": discriminator_record(resolution), "training_set_kwargs": None,
                                "augment_pipe": None})
