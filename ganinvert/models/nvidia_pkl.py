"""Read NVIDIA stylegan2-ada-pytorch network pickles without NVIDIA's code.

NVIDIA's training loop writes ``pickle.dump(dict(G=..., D=..., G_ema=..., augment_pipe=...,
training_set_kwargs=...), f)``. Its networks are ``torch_utils.persistence`` persistent classes:
each module pickles as a call ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = dict(type='class', version=..., module_src=<source text of the defining module>,
class_name=..., state=<the module's __dict__>)``, and NVIDIA's unpickler *executes*
``module_src`` to rebuild the class. This reader never does: a restricted unpickler resolves only
the globals such a file needs (tensor/storage rebuilders, ``OrderedDict``, ``set``, numpy scalars,
``dnnlib.EasyDict``), each replaced by a wrapper that checks what it is asked to build, lets the
state-changing opcodes act only on the containers such files use, and turns every persistent
object into a plain :class:`PersistentRecord` (class name + state). Anything else is refused.

The generator ``G_ema`` (or ``G`` when a pickle has no ``G_ema``) is then converted to the
rosinality state-dict layout that :class:`~ganinvert.models.stylegan2.StyleGAN2Generator` loads:

==========================================  =============================================
NVIDIA (``training/networks.py``)            rosinality (``model.py``)
==========================================  =============================================
``mapping.fc{i}.weight / .bias``             ``style.{i+1}.weight / .bias``
``synthesis.b4.const`` (C, 4, 4)             ``input.input`` (1, C, 4, 4)
``b4.conv1`` / ``b4.torgb``                  ``conv1`` / ``to_rgb1``
``b{R}.conv0`` / ``b{R}.conv1``              ``convs.{2k}`` / ``convs.{2k+1}``, k = log2(R) - 3
``b{R}.torgb``                               ``to_rgbs.{k}``
``<layer>.affine``                           ``<layer>.conv.modulation``
``<layer>.weight`` (O, I, kh, kw)            ``<layer>.conv.weight`` (1, O, I, kh, kw)
``<conv>.bias`` / ``torgb.bias`` (O,)        ``<conv>.activate.bias`` / ``to_rgb*.bias`` (1, 3, 1, 1)
``<conv>.noise_strength`` ()                 ``<conv>.noise.weight`` (1,)
``<conv>.noise_const`` (R, R)                ``noises.noise_{j}`` (1, 1, R, R), j = conv index + 1
``<block>.resample_filter`` (4, 4)           ``convs.{2k}.conv.blur.kernel``, ``to_rgbs.{k}.upsample.kernel`` (x4)
``mapping.w_avg``                            ``latent_avg``
==========================================  =============================================

Why the weights need no other change (worked out from ``torch_utils/ops/conv2d_resample.py`` and
``upfirdn2d.py``):

* Up-sampling conv (``up=2``, 3x3, ``padding=1``, ``flip_weight=False``, 4-tap filter): the
  padding becomes ``1 + (4+2-1)//2 - (3-1) = 1`` before and ``1 + (4-2)//2 - (3-2) = 1`` after; the
  transposed convolution is called with ``flip_weight=True``, i.e. the weight is *not* flipped, and
  then ``upfirdn2d`` filters with ``filter * up**2`` and padding (1, 1). rosinality computes
  ``conv_transpose2d(stride=2)`` with the unflipped weight followed by ``Blur`` with padding
  ``((0+1)//2 + 1, 0//2 + 1) = (1, 1)`` and ``make_kernel * 4``: the same operation. (Only
  TensorFlow weights need the spatial flip, which NVIDIA's ``legacy.py`` already applies.)
* Skip up-sampling (``upfirdn2d.upsample2d``): padding ``((4+1)//2, (4-2)//2) = (2, 1)`` and gain 4,
  as rosinality's ``Upsample``.
* ``SynthesisLayer`` has no weight gain; rosinality multiplies by ``1/sqrt(I*k*k)``. Demodulation
  cancels that factor, except in the ``1e-8`` epsilon (a relative change below 1e-9 for real
  weights). ``ToRGBLayer`` scales the styles by ``1/sqrt(I)``, rosinality the weight: identical.
* Mapping layers are equalised-lr linear layers with ``lr_multiplier`` in both codes; a pickle's
  multiplier (``bias_gain``) is folded into the weights so the result loads into a generator built
  with rosinality's default ``lr_mlp=0.01``. ``normalize_2nd_moment`` is rosinality's ``PixelNorm``;
  ``bias_act(lrelu)`` is ``fused_leaky_relu`` (slope 0.2, gain sqrt 2).
* ``num_ws`` and the ws index of each layer agree (2 * log2(R) - 2; a ToRGB shares its index with
  the next block's first conv).
* ``conv_clamp`` (256 in NVIDIA's configs that use fp16) clamps activations to +-256; rosinality has
  no clamp, which only matters for activations that large. It is reported in
  :attr:`NvidiaGenerator.conv_clamp`.

Supported: unconditional StyleGAN2 generators with the ``'skip'`` architecture (NVIDIA's
default), RGB output, z_dim == w_dim and mapping layers of width w_dim. StyleGAN3, conditional,
``'orig'``/``'resnet'`` generators, TensorFlow pickles and discriminator-only files are refused
with a one-line :class:`~ganinvert.errors.CheckpointError`.

Example:
    >>> net = read_nvidia_pickle("network-snapshot-000000.pkl")   # doctest: +SKIP
    >>> G = net.build()                                           # doctest: +SKIP
    >>> img = G(torch.randn(1, G.style_dim))                      # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import CheckpointError
from .stylegan2 import StyleGAN2Generator

__all__ = ["NvidiaGenerator", "PersistentRecord", "SNIFF_BYTES", "load_nvidia_records",
           "looks_like_nvidia_head", "looks_like_nvidia_pickle", "read_nvidia_pickle"]

#: How many leading bytes :func:`looks_like_nvidia_pickle` inspects. The first persistent object's
#: global reference comes before any module source text, within the first few hundred bytes.
SNIFF_BYTES = 1 << 16

#: ``torch.save``'s legacy (non-zip) format starts with this pickled magic number.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"

#: Module names whose presence marks an NVIDIA pickle (PyTorch persistence or TensorFlow dnnlib).
_NVIDIA_MARKERS = (b"torch_utils.persistence", b"dnnlib.tflib")

#: rosinality's mapping learning-rate multiplier (``Generator(lr_mlp=0.01)``), which
#: ``StyleGAN2Generator`` also uses by default.
_ROSINALITY_LR_MLP = 0.01

#: Class names that only StyleGAN3's ``training/networks_stylegan3.py`` defines.
_STYLEGAN3_CLASSES = frozenset({"SynthesisInput"})


# ---------------------------------------------------------------------------------------------
# Restricted unpickling
# ---------------------------------------------------------------------------------------------
#
# A pickle is a program. Besides calling the globals it names (REDUCE) it can set the state of
# any object it holds (BUILD) and call ``append``/``extend``/``__setitem__``/``add`` on it, so an
# allow-list of names is not enough: numpy's dtype accepts a BUILD state whose fields hide object
# members, after which ``numpy...scalar`` builds a value whose "objects" are pointers read from the
# file (a segfault, issue #14); torch's ``_rebuild_tensor`` and ``Tensor.__setstate__`` silently
# grow a storage to whatever range a view asks for. This reader therefore runs CPython's
# pure-Python unpickler with those opcodes restricted to the containers network pickles use, and
# each allowed global that builds something is a wrapper that checks its arguments first.

@dataclass
class PersistentRecord:
    """A ``torch_utils.persistence`` object as data: its class name and pickled ``__dict__``.

    For ``torch.nn.Module`` subclasses ``state`` holds ``_parameters`` and ``_buffers`` (name ->
    tensor or None) and ``_modules`` (name -> child record or None), checked when the record is
    made, next to the constructor's plain attributes.
    """

    class_name: str
    state: dict
    version: Any = None

    @property
    def params(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in (self.state.get("_parameters") or {}).items() if v is not None}

    @property
    def buffers(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in (self.state.get("_buffers") or {}).items() if v is not None}

    @property
    def modules(self) -> dict[str, "PersistentRecord"]:
        return {k: v for k, v in (self.state.get("_modules") or {}).items() if isinstance(v, PersistentRecord)}

    def tensor(self, name: str) -> torch.Tensor | None:
        """A parameter or buffer called ``name``, or None."""
        return self.params.get(name, self.buffers.get(name))

    def walk(self, prefix: str = "") -> Iterator[tuple[str, "PersistentRecord"]]:
        """Yield ``(dotted name, record)`` for this record and every descendant, parents first.

        Each record is visited once: a pickle may share one child among many parents, and a
        file of shared children would otherwise have exponentially many paths.
        """
        stack, seen = [(prefix, self)], set()
        while stack:
            name, record = stack.pop()
            if id(record) in seen:
                continue
            seen.add(id(record))
            yield name, record
            stack.extend(reversed([(f"{name}.{child_name}" if name else child_name, child)
                                   for child_name, child in record.modules.items()]))


class _EasyDict(dict):
    """Stand-in for ``dnnlib.EasyDict`` (a dict with attribute access): read as a plain dict."""


#: nn.Module bookkeeping entries of a persistent object's state: what each maps names to.
_MODULE_DICTS = (("_parameters", torch.Tensor, "tensor"), ("_buffers", torch.Tensor, "tensor"),
                 ("_modules", PersistentRecord, "persistent network object"))


def _persistent_record(meta: Any) -> PersistentRecord:
    """Replacement of ``torch_utils.persistence._reconstruct_persistent_obj``: keeps the data,
    never executes ``meta['module_src']``."""
    if not isinstance(meta, dict) or not isinstance(meta.get("class_name"), str) \
            or not isinstance(meta.get("state"), dict):
        raise CheckpointError("malformed persistent object (expected a dict with class_name and state)")
    class_name, state = meta["class_name"], dict(meta["state"])
    for key, kind, what in _MODULE_DICTS:
        entries = state.get(key)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise CheckpointError(f"{class_name}.{key} is a {type(entries).__name__}, not a dict")
        for name, value in entries.items():
            if not isinstance(name, str):
                raise CheckpointError(f"{class_name}.{key} has a key of type {type(name).__name__}, not a name")
            if value is not None and not isinstance(value, kind):
                raise CheckpointError(f"{class_name}.{key}[{name!r}] is a {type(value).__name__}, not a {what}")
        # A copy: later opcodes cannot change a finished record, nor make it contain itself.
        state[key] = OrderedDict(entries)
    return PersistentRecord(class_name, state, meta.get("version"))


def _storage_from_bytes(data: Any) -> torch.storage.TypedStorage:
    """Safe replacement of ``torch.storage._load_from_bytes`` (which calls ``torch.load`` with
    ``weights_only=False``): the storage blob is a legacy ``torch.save`` stream, read with torch's
    weights-only unpickler."""
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError("malformed tensor storage record")
    storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    if not isinstance(storage, torch.storage.TypedStorage):
        raise CheckpointError(f"tensor storage record holds a {type(storage).__name__}, not a storage")
    return storage


def _sizes(value: Any) -> tuple[int, ...] | None:
    """``value`` as a tuple of non-negative ints, or None when it is anything else."""
    if isinstance(value, tuple) and all(type(v) is int and v >= 0 for v in value):
        return tuple(value)
    return None


def _empty_or_none(hooks: Any) -> bool:
    """None or an empty dict: torch never pickles backward hooks (it writes an empty OrderedDict,
    Note [Don't serialize hooks])."""
    return hooks is None or (type(hooks) in (dict, OrderedDict) and not hooks)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """Checked ``torch._utils._rebuild_tensor`` / ``_rebuild_tensor_v2``: a view inside its storage.

    torch itself grows a storage that is too small for the view, i.e. reads uninitialised memory
    or allocates whatever a file asks for; a view may also not hold more elements than its
    storage (stride-0 views would multiply a few bytes into any size).
    """
    if not isinstance(storage, torch.storage.TypedStorage):
        raise CheckpointError(f"tensor record has a {type(storage).__name__} where its storage should be")
    dims, strides = _sizes(size), _sizes(stride)
    if type(storage_offset) is not int or not 0 <= storage_offset <= storage.size() or dims is None \
            or strides is None or len(dims) != len(strides):
        raise CheckpointError("malformed tensor record (offset, size and stride must be non-negative integers)")
    numel = math.prod(dims)
    if numel and (numel > storage.size()
                  or storage_offset + sum((n - 1) * s for n, s in zip(dims, strides)) >= storage.size()):
        raise CheckpointError(f"tensor record of shape {dims} and strides {strides} at offset {storage_offset} "
                              f"lies outside its storage of {storage.size()} elements")
    if type(requires_grad) is not bool or not _empty_or_none(backward_hooks) or not _empty_or_none(metadata):
        # Metadata (conjugate/negative-view bits) never occurs on real-valued weights: None or {} only.
        raise CheckpointError("malformed tensor record (requires_grad, backward hooks or metadata)")
    tensor = torch._utils._rebuild_tensor(storage, storage_offset, dims, strides)
    return tensor.requires_grad_() if requires_grad else tensor


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> torch.nn.Parameter:
    """Checked ``torch._utils._rebuild_parameter(_with_state)``. ``state`` (Python attributes set
    on a parameter) is dropped: the converter needs only the data, and setting attributes named
    by a file is how objects are subverted."""
    if not isinstance(data, torch.Tensor) or type(requires_grad) is not bool or not _empty_or_none(backward_hooks):
        raise CheckpointError("malformed parameter record")
    return torch.nn.Parameter(data, requires_grad)


#: The dtypes pickled numbers use: bool, (unsigned) integer, float or complex of a given size.
_NUMERIC_DTYPE = re.compile(r"[biufc][0-9]{1,2}")
#: A plain dtype's BUILD state after its version (3) and byte order: no subarray, names or
#: fields, no explicit size or alignment, no flags (numpy's ``dtype.__reduce__``).
_PLAIN_DTYPE_STATE = (None, None, None, -1, -1, 0)


class _NumpyDtype:
    """What a pickled ``numpy.dtype(spec, align, copy)`` plus its BUILD state may describe: a
    plain numeric type and its byte order. The stream never holds a real ``numpy.dtype``, whose
    ``__setstate__`` accepts fields with hidden object members (issue #14)."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        if not (type(state) is tuple and len(state) == 8 and type(state[0]) is int and state[0] == 3
                and type(state[1]) is str and state[1] in ("<", ">", "|", "=")
                and all(type(v) is type(plain) and v == plain for v, plain in zip(state[2:], _PLAIN_DTYPE_STATE))):
            raise CheckpointError(f"numpy dtype {self.dtype.str} has a state with fields, a subarray or flags; "
                                  "only plain numeric dtypes are accepted")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = True) -> _NumpyDtype:
    """Replacement of ``numpy.dtype``: only the numeric types numbers are pickled with."""
    if type(spec) is not str or not _NUMERIC_DTYPE.fullmatch(spec) or type(align) is not bool \
            or type(copy) is not bool:
        what = repr(spec) if type(spec) is str else f"from a {type(spec).__name__}"
        raise CheckpointError(f"refusing numpy dtype {what[:40]}: only plain numeric dtypes are accepted")
    try:
        return _NumpyDtype(np.dtype(spec))
    except TypeError:
        raise CheckpointError(f"{spec!r} is not a numpy dtype") from None


def _numpy_scalar(dtype: Any, data: Any) -> np.generic:
    """Replacement of ``numpy...multiarray.scalar``: a number from exactly ``itemsize`` bytes."""
    if not isinstance(dtype, _NumpyDtype) or type(data) is not bytes or len(data) != dtype.dtype.itemsize:
        raise CheckpointError("malformed numpy scalar (expected a numeric dtype and its bytes)")
    return np.frombuffer(data, dtype.dtype)[0]


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` as the class argument of ``_reconstruct``. The real class,
    called from a pickle, would build arrays of any size over uninitialised memory."""

    __slots__ = ()


_NDARRAY = _NdarrayClass()


def _numpy_reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    """Replacement of ``numpy...multiarray._reconstruct``: the empty array numpy's ``__reduce__``
    starts from; its BUILD state (see :func:`_array_state`) then gives it contents."""
    if cls is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise CheckpointError("malformed numpy array record")
    return np.empty(0, np.int8)


def _array_state(state: Any) -> tuple:
    """A pickled ndarray state ``(1, shape, dtype, is_fortran, raw bytes)`` with a plain dtype
    and exactly the bytes its shape needs, as numpy's ``ndarray.__setstate__`` takes it."""
    if not (type(state) is tuple and len(state) == 5 and type(state[0]) is int and state[0] == 1):
        raise CheckpointError("malformed numpy array state")
    _, shape, dtype, fortran, data = state
    dims = _sizes(shape)
    if dims is None or not isinstance(dtype, _NumpyDtype) or type(fortran) is not bool or type(data) is not bytes \
            or math.prod(dims) * dtype.dtype.itemsize != len(data):
        raise CheckpointError("malformed numpy array state (shape, numeric dtype and data must agree)")
    return 1, dims, dtype.dtype, fortran, data


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """numpy scalars/arrays (NVIDIA stores gains such as ``1/np.sqrt(n)`` as np.float64).

    Pickles name numpy 1's ``numpy.core.multiarray`` or numpy 2's ``numpy._core.multiarray``;
    both resolve to the same checked replacements.
    """
    table: dict[tuple[str, str], Any] = {("numpy", "dtype"): _numpy_dtype, ("numpy", "ndarray"): _NDARRAY}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "scalar")] = _numpy_scalar
        table[(module, "_reconstruct")] = _numpy_reconstruct
    return table


def _allowed_globals() -> dict[tuple[str, str], Any]:
    # OrderedDict, set, frozenset and slice are immutable built-in types: REDUCE may call them (on a
    # tuple of stream objects); NEWOBJ and BUILD on them are refused by the unpickler.
    table: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("dnnlib", "EasyDict"): _EasyDict,
        # Tensor and nn.Parameter rebuilders written by Tensor/Parameter.__reduce_ex__ (torch 1.x-2.x).
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    }
    table.update(_numpy_globals())
    return table


class _DisallowedGlobal(CheckpointError):
    pass


#: Containers the state-changing opcodes may act on (NVIDIA's files use no others).
_DICTS = (dict, OrderedDict, _EasyDict)


class _RestrictedUnpickler(pickle._Unpickler):
    """CPython's pure-Python unpickler with the globals of :func:`_allowed_globals` and the
    opcodes that act on existing objects restricted:

    * REDUCE calls with a tuple of arguments (as the C unpickler demands); NEWOBJ builds only
      the EasyDict stand-in; protocol-0/1 INST/OBJ are refused;
    * BUILD only on numpy dtypes and arrays (checked states) and on dicts (attributes);
    * APPEND(S) only on lists, SETITEM(S) only on dicts, ADDITEMS only on sets.
    """

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            pass
        if module.startswith("dnnlib.tflib"):
            raise _DisallowedGlobal("is a TensorFlow StyleGAN pickle; convert it to PyTorch first with "
                                    "stylegan2-ada-pytorch's legacy.py (or use a rosinality .pt checkpoint)")
        raise _DisallowedGlobal(f"references {module}.{name}, which a StyleGAN network pickle never needs; "
                                "refusing to execute arbitrary code from a pickle")

    def _target(self, kinds: tuple[type, ...], opcode: str) -> Any:
        target = self.stack[-1]
        if type(target) not in kinds:
            raise CheckpointError(f"applies {opcode} to a {type(target).__name__}, which a network pickle never does")
        return target

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        if type(args) is not tuple:
            raise CheckpointError("calls a function with arguments that are not a tuple")
        self.stack[-1] = self.stack[-1](*args)

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if cls is not _EasyDict or type(args) is not tuple or args:
            raise CheckpointError(f"creates a {getattr(cls, '__name__', type(cls).__name__)} with NEWOBJ, "
                                  "which a network pickle never does")
        self.append(_EasyDict())

    def _load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        if type(kwargs) is not dict or kwargs:
            raise CheckpointError("creates an object with keyword arguments, which a network pickle never does")
        self._load_newobj()

    def _load_instance(self) -> None:
        raise CheckpointError("uses protocol-0/1 instance opcodes, which a network pickle never does")

    def _load_build(self) -> None:
        state = self.stack.pop()
        target = self._target((_NumpyDtype, np.ndarray, *_DICTS), "BUILD")
        if type(target) is _NumpyDtype:
            target.__setstate__(state)
        elif type(target) is np.ndarray:
            target.__setstate__(_array_state(state))
        elif type(state) is dict and all(type(k) is str for k in state) and type(target) is not dict:
            target.__dict__.update(state)  # plain attributes of an OrderedDict/EasyDict: inert data
        else:
            raise CheckpointError(f"sets a {type(state).__name__} state on a {type(target).__name__}")

    def _load_append(self) -> None:
        value = self.stack.pop()
        self._target((list,), "APPEND").append(value)

    def _load_appends(self) -> None:
        items = self.pop_mark()
        self._target((list,), "APPENDS").extend(items)

    def _load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._target(_DICTS, "SETITEM")[key] = value

    def _load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._target(_DICTS, "SETITEMS")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _load_additems(self) -> None:
        items = self.pop_mark()
        self._target((set,), "ADDITEMS").update(items)

    dispatch = {**pickle._Unpickler.dispatch,
                pickle.REDUCE[0]: _load_reduce, pickle.NEWOBJ[0]: _load_newobj,
                pickle.NEWOBJ_EX[0]: _load_newobj_ex, pickle.INST[0]: _load_instance,
                pickle.OBJ[0]: _load_instance, pickle.BUILD[0]: _load_build, pickle.APPEND[0]: _load_append,
                pickle.APPENDS[0]: _load_appends, pickle.SETITEM[0]: _load_setitem,
                pickle.SETITEMS[0]: _load_setitems, pickle.ADDITEMS[0]: _load_additems}


def _one_line(exc: BaseException, limit: int = 200) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:limit]


def load_nvidia_records(path: str | os.PathLike) -> Any:
    """Unpickle an NVIDIA network pickle with the restricted unpickler.

    Returns the pickled object (normally a dict with ``G``, ``D``, ``G_ema``, ...), with every
    persistent network object as a :class:`PersistentRecord`.

    Raises:
        CheckpointError: the file is missing, not a pickle, truncated/corrupt, references a
            global outside the allow-list, or uses an allowed one in a way network pickles never do.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {_one_line(exc)}") from None
    with f:
        head = f.read(2)
        if head == b"PK":
            raise CheckpointError(f"{path} is a zip archive (torch.save format), not an NVIDIA network pickle")
        if len(head) < 2 or head[0] != pickle.PROTO[0]:
            raise CheckpointError(f"{path} is not a pickle file (no pickle protocol header); "
                                  "expected a stylegan2-ada-pytorch network .pkl")
        f.seek(0)
        try:
            with warnings.catch_warnings():
                # Rebuilding tensors from legacy storage blobs goes through the deprecated TypedStorage.
                warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
                return _RestrictedUnpickler(f).load()
        except _DisallowedGlobal as exc:
            raise CheckpointError(f"{path} {exc}") from None
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        except Exception as exc:  # any other unpickling failure means a truncated or corrupt file
            raise CheckpointError(f"{path} is truncated or corrupt ({type(exc).__name__}: {_one_line(exc)})") from None


def looks_like_nvidia_head(head: bytes) -> bool:
    """Cheap content test on a file's first :data:`SNIFF_BYTES` bytes: a pickle (protocol 2-5
    header), not ``torch.save``'s legacy format, that names ``torch_utils.persistence`` (or
    TensorFlow's ``dnnlib.tflib``). A ``torch.save`` zip starts with ``PK`` and never matches.
    """
    return (len(head) >= 2 and head[0] == pickle.PROTO[0] and 2 <= head[1] <= 5
            and not head.startswith(_LEGACY_TORCH_MAGIC)
            and any(marker in head for marker in _NVIDIA_MARKERS))


def looks_like_nvidia_pickle(path: str | os.PathLike) -> bool:
    """:func:`looks_like_nvidia_head` of the file at ``path`` (False when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return looks_like_nvidia_head(f.read(SNIFF_BYTES))
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Conversion to the rosinality layout
# ---------------------------------------------------------------------------------------------

@dataclass
class NvidiaGenerator:
    """A converted NVIDIA generator.

    Attributes:
        state_dict: rosinality ``g_ema`` key names and shapes; loads into
            ``StyleGAN2Generator(**config)`` with ``strict=True``.
        latent_avg: ``mapping.w_avg`` (w_dim,), or None when the pickle tracks no average.
        config: ``StyleGAN2Generator`` keyword arguments (resolution, style_dim, n_mlp, channels,
            blur_kernel) inferred from the parameter shapes.
        source: which network of the pickle was converted: ``"G_ema"``, or ``"G"`` (the raw
            training generator) when the pickle has no ``G_ema``.
        conv_clamp: NVIDIA's activation clamp (None = off); ``StyleGAN2Generator`` does not clamp.
    """

    state_dict: dict[str, torch.Tensor]
    latent_avg: torch.Tensor | None
    config: dict
    source: str
    conv_clamp: float | None = None

    def build(self) -> StyleGAN2Generator:
        """A ``StyleGAN2Generator`` in eval mode with these weights and ``w_avg = latent_avg``."""
        G = StyleGAN2Generator(**self.config)
        G.load_state_dict(self.state_dict)
        if self.latent_avg is not None:
            G.w_avg.copy_(self.latent_avg)
        return G.eval()


def read_nvidia_pickle(path: str | os.PathLike) -> NvidiaGenerator:
    """Read a stylegan2-ada-pytorch network pickle and convert its generator.

    Uses ``G_ema`` (the exponential moving average every NVIDIA sample and metric uses), else
    ``G``. See the module docstring for the mapping and what is supported.

    Raises:
        CheckpointError: unreadable/unsafe file, no generator, or an unsupported generator.
    """
    path = Path(path)
    data = load_nvidia_records(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a stylegan2-ada-pytorch network pickle "
                              f"(top level is a {type(data).__name__}, expected a dict with G_ema)")
    source = next((key for key in ("G_ema", "G") if data.get(key) is not None), None)
    if source is None:
        if data.get("D") is not None:
            raise CheckpointError(f"{path} holds a discriminator only (no G_ema or G); "
                                  "a generator pickle is needed")
        raise CheckpointError(f"{path} holds no generator (keys: {', '.join(map(str, data)) or 'none'}); "
                              "expected a stylegan2-ada-pytorch network pickle with G_ema")
    record = data[source]
    if not isinstance(record, PersistentRecord):
        raise CheckpointError(f"{path}: {source} is a {type(record).__name__}, "
                              "not a persistent network object")
    try:
        return _GeneratorConverter(record, source).convert()
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, RuntimeError, OverflowError) as exc:
        # Record attributes are untrusted data of any type (an array where a flag belongs, ...).
        raise CheckpointError(f"{path}: malformed {source} record ({type(exc).__name__}: {_one_line(exc)})") from None


def _as_float(value: Any) -> float | None:
    """A pickled number (python or numpy scalar) as float; None for anything else."""
    if isinstance(value, (int, float, np.generic)) and not isinstance(value, bool):
        return float(value)
    return None


def _resample_filter(f: torch.Tensor, where: str) -> tuple[torch.Tensor, list[int] | list[float]]:
    """NVIDIA's ``setup_filter`` output (separable 1-D taps, or their 2-D outer product) as the
    2-D kernel and the 1-D taps of rosinality's ``blur_kernel`` (integers when they are)."""
    if f.ndim == 1:
        taps, kernel = f, torch.outer(f, f)
    elif f.ndim == 2 and f.shape[0] == f.shape[1]:
        # f = c * outer(a, a) has row sums r = c * a * sum(a), so outer(r, r) = f * f.sum().
        taps, kernel = f.sum(1), f
        if not torch.allclose(torch.outer(taps, taps), f * f.sum(), atol=1e-6):
            raise CheckpointError(f"{where}.resample_filter is not separable; "
                                  "only separable FIR filters are supported")
    else:
        raise CheckpointError(f"{where}.resample_filter has shape {tuple(f.shape)}; "
                              "expected a square 2-D or a 1-D filter")
    # rosinality's fast path correlates where NVIDIA convolves: equal only for symmetric filters.
    if not torch.allclose(taps, taps.flip(0), atol=1e-7) or float(taps.sum()) <= 0:
        raise CheckpointError(f"{where}.resample_filter is not a symmetric low-pass filter")
    taps = taps / taps.sum()
    ints = taps / taps.abs().min()
    if torch.allclose(ints, ints.round(), atol=1e-4):
        return kernel, [int(v) for v in ints.round().tolist()]
    return kernel, [float(v) for v in taps.tolist()]


class _GeneratorConverter:
    """Maps one NVIDIA ``Generator`` record onto rosinality names (see the module docstring)."""

    def __init__(self, G: PersistentRecord, source: str) -> None:
        self.G, self.source = G, source
        self.out: dict[str, torch.Tensor] = {}
        self.clamps: set[float | None] = set()
        self.filters: list[tuple[str, torch.Tensor]] = []

    # -------------------------------------------------------------- helpers
    def _child(self, rec: PersistentRecord, name: str, where: str) -> PersistentRecord:
        child = rec.modules.get(name)
        if child is None:
            raise CheckpointError(f"{where}.{name} is missing; not a stylegan2-ada-pytorch StyleGAN2 generator")
        return child

    def _tensor(self, rec: PersistentRecord, name: str, where: str,
                shape: tuple[int, ...] | None = None) -> torch.Tensor:
        t = rec.tensor(name)
        if t is None:
            raise CheckpointError(f"{where}.{name} is missing; not a stylegan2-ada-pytorch StyleGAN2 generator")
        t = t.detach().to(torch.float32).contiguous()
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise CheckpointError(f"{where}.{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{where}.{name} contains NaN or Inf")
        return t

    def _linear(self, rec: PersistentRecord, where: str, in_dim: int, out_dim: int, activation: str,
                target_lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """A ``FullyConnectedLayer`` re-expressed for rosinality's ``EqualLinear(lr_mul=target_lr)``."""
        act = rec.state.get("activation", activation)
        if act != activation:
            raise CheckpointError(f"{where} uses activation {act!r}; only {activation!r} is supported here")
        weight = self._tensor(rec, "weight", where, (out_dim, in_dim))
        bias = self._tensor(rec, "bias", where, (out_dim,))
        lr = _as_float(rec.state.get("bias_gain"))
        if lr is None:
            gain = _as_float(rec.state.get("weight_gain"))
            if gain is None:
                raise CheckpointError(f"{where} stores neither bias_gain nor weight_gain; "
                                      "cannot tell its learning-rate multiplier")
            lr = gain * math.sqrt(in_dim)
        if not (math.isfinite(lr) and lr > 0):
            raise CheckpointError(f"{where} has learning-rate multiplier {lr}; expected a positive finite number")
        if not math.isclose(lr, target_lr, rel_tol=1e-6):
            # Effective weight is weight * lr / sqrt(in) in both codes: fold the ratio into the tensors.
            weight, bias = weight * (lr / target_lr), bias * (lr / target_lr)
        return weight, bias

    # -------------------------------------------------------------- conversion
    def convert(self) -> NvidiaGenerator:
        G, source = self.G, self.source
        synthesis_children = G.modules["synthesis"].modules if "synthesis" in G.modules else {}
        if {rec.class_name for _, rec in G.walk()} & _STYLEGAN3_CLASSES or "input" in synthesis_children:
            raise CheckpointError(f"{source} is a StyleGAN3 (alias-free) generator; only StyleGAN2 'skip' "
                                  "generators from stylegan2-ada-pytorch are supported")
        mapping = self._child(G, "mapping", source)
        synthesis = self._child(G, "synthesis", source)
        c_dim = G.state.get("c_dim", mapping.state.get("c_dim", 0)) or 0
        if c_dim or "embed" in mapping.modules:
            raise CheckpointError(f"{source} is a conditional generator (c_dim={c_dim}); "
                                  "conditional models are not supported")
        blocks = self._blocks(synthesis)
        channels = {4: int(self._tensor(blocks[4], "const", f"{source}.synthesis.b4").shape[0])}
        for res, blk in blocks.items():
            if res > 4:
                conv1 = self._child(blk, "conv1", f"{source}.synthesis.b{res}")
                channels[res] = int(self._tensor(conv1, "weight", f"{source}.synthesis.b{res}.conv1").shape[0])
        style_dim, n_mlp, latent_avg = self._mapping(mapping)
        self._synthesis(blocks, channels, style_dim)
        config = {"resolution": max(blocks), "style_dim": style_dim, "n_mlp": n_mlp,
                  "channels": channels, "blur_kernel": self._blur_taps()}
        clamps = {c for c in self.clamps if c is not None}
        return NvidiaGenerator(self.out, latent_avg, config, source, max(clamps) if clamps else None)

    def _blocks(self, synthesis: PersistentRecord) -> dict[int, PersistentRecord]:
        where = f"{self.source}.synthesis"
        blocks = {}
        for name, rec in synthesis.modules.items():
            if not (name.startswith("b") and name[1:].isdigit()):
                raise CheckpointError(f"{where}.{name} ({rec.class_name}) is not a StyleGAN2 synthesis block; "
                                      "only StyleGAN2 'skip' generators from stylegan2-ada-pytorch are supported")
            blocks[int(name[1:])] = rec
        resolutions = sorted(blocks)
        expected = [4 * 2 ** i for i in range(len(resolutions))]
        if not resolutions or resolutions != expected:
            raise CheckpointError(f"{where} has blocks at {resolutions}; expected 4, 8, ..., a power of two")
        for res, blk in blocks.items():
            arch = blk.state.get("architecture")
            has_rgb = "torgb" in blk.modules
            if arch is None:  # infer from the layers present
                arch = "resnet" if "skip" in blk.modules else ("skip" if has_rgb else "orig")
            if arch != "skip" or not has_rgb:
                raise CheckpointError(f"{self.source} uses the {arch!r} synthesis architecture; only "
                                      "StyleGAN2's 'skip' architecture (the stylegan2-ada-pytorch default) "
                                      "is supported")
            img_channels = blk.state.get("img_channels", 3)
            if img_channels != 3:
                raise CheckpointError(f"{self.source} outputs {img_channels} image channels; "
                                      "only RGB (3) generators are supported")
        return blocks

    def _mapping(self, mapping: PersistentRecord) -> tuple[int, int, torch.Tensor | None]:
        where = f"{self.source}.mapping"
        fcs = sorted((int(name[2:]), rec) for name, rec in mapping.modules.items()
                     if name.startswith("fc") and name[2:].isdigit())
        if not fcs or [i for i, _ in fcs] != list(range(len(fcs))):
            raise CheckpointError(f"{where} has no fc0..fcN layers; not a StyleGAN2 mapping network")
        last = self._tensor(fcs[-1][1], "weight", f"{where}.fc{len(fcs) - 1}")
        w_dim = int(last.shape[0])
        z_dim = int(self._tensor(fcs[0][1], "weight", f"{where}.fc0").shape[1])
        if z_dim != w_dim:
            raise CheckpointError(f"{self.source} has z_dim={z_dim} != w_dim={w_dim}; the rosinality "
                                  "architecture maps z to w of the same dimension")
        for i, rec in fcs:
            weight, bias = self._linear(rec, f"{where}.fc{i}", w_dim, w_dim, "lrelu", _ROSINALITY_LR_MLP)
            self.out[f"style.{i + 1}.weight"], self.out[f"style.{i + 1}.bias"] = weight, bias
        latent_avg = mapping.tensor("w_avg")
        if latent_avg is not None:
            latent_avg = self._tensor(mapping, "w_avg", where, (w_dim,))
        return w_dim, len(fcs), latent_avg

    def _synthesis(self, blocks: dict[int, PersistentRecord], channels: dict[int, int], style_dim: int) -> None:
        for res, blk in blocks.items():
            where = f"{self.source}.synthesis.b{res}"
            ch = channels[res]
            if res == 4:
                self.out["input.input"] = self._tensor(blk, "const", where, (ch, 4, 4))[None]
                self._layer(self._child(blk, "conv1", where), f"{where}.conv1", "conv1", 0, ch, ch, style_dim,
                            up=1)
                self._torgb(self._child(blk, "torgb", where), f"{where}.torgb", "to_rgb1", ch, style_dim)
                continue
            k = int(math.log2(res)) - 3
            f = self._tensor(blk, "resample_filter", where)
            self.filters.append((where, f))
            up_kernel = _resample_filter(f, where)[0] * 4  # upfirdn2d's gain up**2, as rosinality's Blur/Upsample
            self._layer(self._child(blk, "conv0", where), f"{where}.conv0", f"convs.{2 * k}", 2 * k + 1,
                        channels[res // 2], ch, style_dim, up=2)
            self.out[f"convs.{2 * k}.conv.blur.kernel"] = up_kernel.clone()
            self._layer(self._child(blk, "conv1", where), f"{where}.conv1", f"convs.{2 * k + 1}", 2 * k + 2,
                        ch, ch, style_dim, up=1)
            self._torgb(self._child(blk, "torgb", where), f"{where}.torgb", f"to_rgbs.{k}", ch, style_dim)
            self.out[f"to_rgbs.{k}.upsample.kernel"] = up_kernel.clone()

    def _layer(self, rec: PersistentRecord, where: str, name: str, noise_index: int, in_ch: int, out_ch: int,
               style_dim: int, up: int) -> None:
        if rec.state.get("up", up) != up:
            raise CheckpointError(f"{where} has up={rec.state.get('up')}, expected {up}")
        if rec.state.get("activation", "lrelu") != "lrelu":
            raise CheckpointError(f"{where} uses activation {rec.state.get('activation')!r}; "
                                  "only 'lrelu' is supported")
        weight = self._tensor(rec, "weight", where, (out_ch, in_ch, 3, 3))
        self._modulated_conv(rec, where, name, weight, style_dim)
        side = 2 ** ((noise_index + 5) // 2)  # resolution of the layer reading noise_{noise_index}
        if rec.state.get("use_noise", True):
            noise = self._tensor(rec, "noise_const", where, (side, side))
            self.out[f"noises.noise_{noise_index}"] = noise[None, None]
            self.out[f"{name}.noise.weight"] = self._tensor(rec, "noise_strength", where, ()).reshape(1)
        else:  # use_noise=False is the same network as a zero-strength noise input
            self.out[f"noises.noise_{noise_index}"] = torch.zeros(1, 1, side, side)
            self.out[f"{name}.noise.weight"] = torch.zeros(1)
        self.out[f"{name}.activate.bias"] = self._tensor(rec, "bias", where, (out_ch,))
        self.clamps.add(_as_float(rec.state.get("conv_clamp")))

    def _modulated_conv(self, rec: PersistentRecord, where: str, name: str, weight: torch.Tensor,
                        style_dim: int) -> None:
        """Weight (O, I, kh, kw) -> (1, O, I, kh, kw) and ``affine`` -> ``conv.modulation`` (lr 1)."""
        affine = self._child(rec, "affine", where)
        mod_w, mod_b = self._linear(affine, f"{where}.affine", style_dim, weight.shape[1], "linear", 1.0)
        self.out[f"{name}.conv.weight"] = weight[None]
        self.out[f"{name}.conv.modulation.weight"], self.out[f"{name}.conv.modulation.bias"] = mod_w, mod_b

    def _torgb(self, rec: PersistentRecord, where: str, name: str, in_ch: int, style_dim: int) -> None:
        weight = self._tensor(rec, "weight", where)
        if tuple(weight.shape) != (3, in_ch, 1, 1):
            raise CheckpointError(f"{where}.weight has shape {tuple(weight.shape)}, expected (3, {in_ch}, 1, 1)")
        self._modulated_conv(rec, where, name, weight, style_dim)
        self.out[f"{name}.bias"] = self._tensor(rec, "bias", where, (3,)).view(1, 3, 1, 1)
        self.clamps.add(_as_float(rec.state.get("conv_clamp")))

    def _blur_taps(self) -> list[int] | list[float]:
        """The single FIR filter rosinality's config takes; every block must use the same one."""
        if not self.filters:  # a 4x4 generator never resamples
            return [1, 3, 3, 1]
        where, first = self.filters[0]
        for other_where, f in self.filters[1:]:
            if f.shape != first.shape or not torch.allclose(f, first, atol=1e-7):
                raise CheckpointError(f"{other_where}.resample_filter differs from {where}.resample_filter; "
                                      "rosinality's architecture uses one filter")
        return _resample_filter(first, where)[1]
