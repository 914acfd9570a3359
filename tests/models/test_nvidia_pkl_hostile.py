"""Hostile NVIDIA pickles: crafted opcode programs over the reader's allowed globals.

A pickle is a program, and the reader's allow-list only names what it may call. These tests
write programs that call those globals, and set state on or add items to their results, in
ways a real network pickle never does. Each must load or fail with a one-line
:class:`CheckpointError`; a crash (issue #14: numpy dtype + scalar + set segfaulted) would take
the test process with it, so the crash tests load in a subprocess and check its exit status.
"""

from __future__ import annotations

import io
import math
import pickle
import random
import struct
import subprocess
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from ganinvert.errors import CheckpointError
from ganinvert.models.nvidia_pkl import PersistentRecord, load_nvidia_records, read_nvidia_pickle
from ganinvert.models.stylegan2 import StyleGAN2Generator
from nvidia_fixture import PersistentObject, generator_record, write_network_pickle, write_nvidia_fixture

#: Runs load_generator on every file of a folder, one line per file: "<name> OK|CheckpointError".
#: A crash ends the process; the last "<name> start" line names the file that caused it.
RUNNER = r"""
import sys, torch
from pathlib import Path
from ganinvert.errors import CheckpointError
from ganinvert.models.loading import load_generator
torch.set_num_threads(1)
for path in sorted(Path(sys.argv[1]).iterdir()):
    print(path.name, "start", flush=True)
    try:
        load_generator(path)
        outcome = "OK"
    except CheckpointError as exc:
        outcome = "CheckpointError" if "\n" not in str(exc) else "multi-line-error"
    print(path.name, outcome, flush=True)
"""


def run_loader(folder: Path, timeout: float = 120) -> dict[str, str]:
    """Outcome per file of :data:`RUNNER` in a fresh interpreter; fails on a crash or traceback."""
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", RUNNER, str(folder)],
                          check=False, capture_output=True, text=True, timeout=timeout)
    lines = [line.split(" ", 1) for line in proc.stdout.splitlines()]
    last = lines[-1][0] if lines else "(none)"
    assert proc.returncode == 0, (f"loader exited with status {proc.returncode} while reading {last}:\n"
                                  f"{proc.stderr[-3000:]}")
    outcomes = {name: outcome for name, outcome in lines if outcome != "start"}
    assert sorted(outcomes) == sorted(p.name for p in folder.iterdir())
    return outcomes


# ---------------------------------------------------------------------------------------------
# Pickle opcodes, written by hand
# ---------------------------------------------------------------------------------------------

def op_str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def op_bytes(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def op_int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def op_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def op_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def op_dict(pairs: dict[str, bytes]) -> bytes:
    return b"(" + b"".join(op_str(k) + v for k, v in pairs.items()) + b"d"


def op_call(module: str, name: str, *args: bytes) -> bytes:
    return op_global(module, name) + op_tuple(*args) + b"R"


FALSE, TRUE, NONE = b"\x89", b"\x88", b"N"
#: Sniffing needs the persistence module's name in the head: push it and pop it.
MARKER = op_str("torch_utils.persistence") + b"0"


def program(body: bytes, protocol: int = 3) -> bytes:
    return b"\x80" + bytes([protocol]) + MARKER + body + b"."


def op_dtype(spec: str, state: bytes | None = None) -> bytes:
    out = op_call("numpy", "dtype", op_str(spec), FALSE, TRUE)
    return out + state + b"b" if state is not None else out


#: numpy's BUILD state of a structured dtype with one object field at offset 0, flags 0: the
#: flags hide that the dtype holds object pointers (issue #14).
HIDDEN_OBJECT_STATE = op_tuple(op_int(3), op_str("|"), NONE, op_tuple(op_str("a")),
                               op_dict({"a": op_tuple(op_dtype("O8"), op_int(0))}), op_int(16), op_int(1), op_int(0))


def scalar_attack(container: tuple[str, str], spec: str = "V16") -> bytes:
    """``container(scalar(dtype(spec) + hidden-object state, 16 bytes of 0x41))``."""
    scalar = op_call("numpy.core.multiarray", "scalar", op_dtype(spec, HIDDEN_OBJECT_STATE), op_bytes(b"\x41" * 16))
    return program(op_global(*container) + op_tuple(scalar) + b"R")


def array_attack() -> bytes:
    """``OrderedDict(array)`` of a 1-element array whose BUILD state has the hidden-object dtype."""
    array = (op_call("numpy.core.multiarray", "_reconstruct", op_global("numpy", "ndarray"), op_tuple(op_int(0)),
                     op_bytes(b"b"))
             + op_tuple(op_int(1), op_tuple(op_int(1)), op_dtype("V16", HIDDEN_OBJECT_STATE), FALSE,
                        op_bytes(b"\x41" * 16)) + b"b")
    return program(op_global("collections", "OrderedDict") + op_tuple(array) + b"R")


def storage_blob(n: int, dtype: torch.dtype = torch.float32) -> bytes:
    """A tensor storage as NVIDIA's pickles embed it: a legacy ``torch.save`` stream."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(torch.arange(n).to(dtype).storage(), buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def op_storage(n: int) -> bytes:
    return op_call("torch.storage", "_load_from_bytes", op_bytes(storage_blob(n)))


def op_tensor(storage: bytes, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    return op_call("torch._utils", "_rebuild_tensor_v2", storage, op_int(offset),
                   op_tuple(*map(op_int, size)), op_tuple(*map(op_int, stride)), FALSE,
                   op_call("collections", "OrderedDict"))


# ---------------------------------------------------------------------------------------------
# The attack of issue #14, and its relatives
# ---------------------------------------------------------------------------------------------

HOSTILE = {
    "dtype_scalar_set": scalar_attack(("builtins", "set")),
    "dtype_scalar_frozenset": scalar_attack(("builtins", "frozenset")),
    "dtype_scalar_ordereddict": scalar_attack(("collections", "OrderedDict")),
    "numeric_dtype_with_fields": scalar_attack(("builtins", "set"), spec="f8"),
    "ndarray_with_hidden_objects": array_attack(),
}


def test_dtype_scalar_attacks_end_in_checkpoint_errors(tmp_path):
    """Before the fix each of these segfaulted the loader (exit status -11 / 139)."""
    for name, data in HOSTILE.items():
        (tmp_path / f"{name}.pkl").write_bytes(data)
    assert set(run_loader(tmp_path).values()) == {"CheckpointError"}
    with pytest.raises(CheckpointError, match="only plain numeric dtypes"):
        load_nvidia_records(tmp_path / "dtype_scalar_set.pkl")


@pytest.mark.parametrize("state", [HIDDEN_OBJECT_STATE,
                                   op_tuple(op_int(3), op_str("<"), op_tuple(op_dtype("f8"), op_tuple(op_int(2))),
                                            NONE, NONE, op_int(16), op_int(8), op_int(0)),
                                   op_tuple(op_int(3), op_str("<"), NONE, NONE, NONE, op_int(-1), op_int(-1),
                                            op_int(63))],
                         ids=["fields", "subarray", "flags"])
def test_numeric_dtype_state_beyond_byte_order_is_refused(tmp_path, state):
    path = tmp_path / "dtype.pkl"
    path.write_bytes(program(op_dtype("f8", state)))
    with pytest.raises(CheckpointError, match="only plain numeric dtypes"):
        load_nvidia_records(path)


@pytest.mark.parametrize("protocol", [3, 4])  # what Python 3 writes by default
def test_plain_numpy_scalars_and_arrays_still_load(tmp_path, protocol):
    path = tmp_path / "numbers.pkl"
    data = {"gain": np.float64(1 / np.sqrt(3)), "flag": np.bool_(True), "count": np.int64(-7),
            "size": np.array([[36, 36]], dtype=np.int64), "taps": np.arange(4.0)[::2],
            "big_endian": np.array([1.5, -2.0], dtype=">f4")}
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    loaded = load_nvidia_records(path)
    assert loaded.keys() == data.keys()
    for key, value in data.items():
        assert type(loaded[key]) is type(value) and np.array_equal(loaded[key], value), key


# ---------------------------------------------------------------------------------------------
# Tensors: views inside their storage, no state set on them afterwards
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("offset,size,stride,message", [
    (0, (10,), (1,), "outside its storage"),          # torch would grow the 6-element storage
    (10 ** 9, (2,), (1,), "offset"),                  # ... to 4 GB
    (0, (10 ** 6,), (0,), "outside its storage"),     # a stride-0 view multiplies 6 elements
    (0, (3,), (2, 1), "malformed tensor record"),
])
def test_tensor_views_outside_their_storage_are_refused(tmp_path, offset, size, stride, message):
    path = tmp_path / "view.pkl"
    path.write_bytes(program(op_tensor(op_storage(6), offset, size, stride)))
    with pytest.raises(CheckpointError, match=message):
        load_nvidia_records(path)


def test_tensor_view_inside_its_storage_loads(tmp_path):
    path = tmp_path / "view.pkl"
    path.write_bytes(program(op_tensor(op_storage(6), 1, (2, 2), (1, 2))))
    assert torch.equal(load_nvidia_records(path), torch.tensor([[1.0, 3.0], [2.0, 4.0]]))


@pytest.mark.parametrize("target", [
    op_tensor(op_storage(6), 0, (6,), (1,)),                     # Tensor.__setstate__ re-points the view
    op_call("torch_utils.persistence", "_reconstruct_persistent_obj",
            op_dict({"class_name": op_str("Generator"), "state": op_dict({})})),
    op_global("dnnlib.util", "EasyDict"),                        # attributes of the stand-in class itself
    op_global("torch._utils", "_rebuild_tensor_v2"),
], ids=["tensor", "record", "easydict-class", "rebuilder"])
def test_build_on_anything_but_numpy_values_and_dicts_is_refused(tmp_path, target):
    state = op_tuple(op_storage(6), op_int(0), op_tuple(op_int(10 ** 6)), op_tuple(op_int(0)))
    path = tmp_path / "build.pkl"
    path.write_bytes(program(target + state + b"b"))
    with pytest.raises(CheckpointError, match="applies BUILD"):
        load_nvidia_records(path)


def test_items_are_added_only_to_containers(tmp_path):
    path = tmp_path / "additems.pkl"
    path.write_bytes(program(op_tensor(op_storage(6), 0, (6,), (1,)) + b"(" + op_int(1) + b"\x90", protocol=4))
    with pytest.raises(CheckpointError, match="applies ADDITEMS to a Tensor"):
        load_nvidia_records(path)


# ---------------------------------------------------------------------------------------------
# Records whose module dictionaries are not what nn.Module writes
# ---------------------------------------------------------------------------------------------

def _tiny_generator() -> StyleGAN2Generator:
    return StyleGAN2Generator(8, style_dim=8, n_mlp=2, channels={4: 8, 8: 8}).eval()


def _snapshot_with(path: Path, edit) -> Path:
    record = generator_record(_tiny_generator())
    edit(record)
    write_network_pickle(path, {"G_ema": record})
    return path


def _conv(record: PersistentObject) -> PersistentObject:
    return record.modules["synthesis"].modules["b8"].modules["conv0"]


@pytest.mark.parametrize("key,value,message", [
    ("_parameters", [1, 2], "SynthesisLayer._parameters is a list, not a dict"),
    ("_buffers", "noise", "SynthesisLayer._buffers is a str, not a dict"),
    ("_modules", 7, "SynthesisLayer._modules is a int, not a dict"),
    ("_parameters", {"weight": "w"}, r"SynthesisLayer._parameters\['weight'\] is a str, not a tensor"),
    ("_modules", {"affine": torch.zeros(1)}, r"_modules\['affine'\] is a Tensor, not a persistent network object"),
])
def test_module_dictionaries_of_the_wrong_type_are_named(tmp_path, key, value, message):
    path = _snapshot_with(tmp_path / "g.pkl", lambda record: _conv(record).state.__setitem__(key, value))
    with pytest.raises(CheckpointError, match=message) as info:
        read_nvidia_pickle(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("attribute,value,message", [
    ("up", torch.tensor([2, 2]), "malformed G_ema record"),       # `!=` on a tensor: no single truth value
    ("use_noise", np.array([True, False]), "malformed G_ema record"),
])
def test_attributes_of_unexpected_types_are_one_line_errors(tmp_path, attribute, value, message):
    path = _snapshot_with(tmp_path / "g.pkl", lambda record: _conv(record).state.__setitem__(attribute, value))
    with pytest.raises(CheckpointError, match=message) as info:
        read_nvidia_pickle(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("gain", [float("nan"), float("inf"), 0.0])
def test_learning_rate_multiplier_must_be_positive_and_finite(tmp_path, gain):
    def edit(record):
        record.modules["mapping"].modules["fc0"].state["bias_gain"] = gain

    with pytest.raises(CheckpointError, match="learning-rate multiplier"):
        read_nvidia_pickle(_snapshot_with(tmp_path / "g.pkl", edit))


def test_walk_visits_a_shared_child_once():
    """A pickle can share one record among many parents: 2**depth paths, depth + 1 records."""
    record = PersistentRecord("Leaf", {})
    for depth in range(18):
        record = PersistentRecord(f"Node{depth}", {"_modules": OrderedDict(a=record, b=record)})
    names = [name for name, _ in record.walk()]
    assert len(names) == 19 and names[:3] == ["", "a", "a.a"]


# ---------------------------------------------------------------------------------------------
# Fuzzing: random opcode programs over the allowed globals
# ---------------------------------------------------------------------------------------------

ALLOWED = [("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
           ("torch.storage", "_load_from_bytes"), ("torch_utils.persistence", "_reconstruct_persistent_obj"),
           ("dnnlib.util", "EasyDict"), ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
           ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
           ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "scalar"),
           ("numpy._core.multiarray", "_reconstruct")]
REFUSED = [("os", "system"), ("builtins", "getattr"), ("numpy", "frombuffer"), ("torch", "Tensor")]
DTYPE_SPECS = ["f8", "f4", "b1", "i8", "u1", "c16", "V16", "O8", "S4", "M8[s]"]
WORDS = DTYPE_SPECS + ["<", ">", "|", "a", "b", "weight", "_parameters", "_buffers", "_modules", "class_name",
                       "state", "G_ema", "mapping", "synthesis", "b4", "const", "Generator", "__class__", "__dict__"]


class ProgramFuzzer:
    """Random pickle programs, mostly well-formed, built from the allowed globals.

    Each expression pushes one object. Besides atoms, tuples, lists and dicts there are calls of
    random globals on random arguments, templates of what the reader's wrappers expect (dtypes
    with plain and hostile states, scalars, arrays, storages, tensor views, persistent records)
    with random parts, BUILD with random states on random objects, NEWOBJ, ADDITEMS/APPENDS/
    SETITEMS on random targets, and memo reuse of earlier objects.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.memo = 0
        self.blobs = [storage_blob(n) for n in (1, 4, 6)] + [storage_blob(3, torch.int64)]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def program(self) -> bytes:
        self.memo = 0
        statements = b"".join(self.expr(3) + b"0" for _ in range(self.rng.randint(0, 3)))
        return program(statements + self.expr(4), protocol=self.rng.randint(2, 5))

    def expr(self, depth: int) -> bytes:
        kinds = ["atom"] * 3 + (["tuple", "list", "dict", "call", "template", "build", "newobj", "add", "memo"]
                                if depth > 0 else [])
        out = getattr(self, f"_{self.rng.choice(kinds)}")(depth - 1)
        if self.chance(0.15):
            out += b"q" + bytes([self.memo % 256])  # BINPUT: later BINGETs reuse (and mutate) the object
            self.memo += 1
        return out

    def _atom(self, depth: int) -> bytes:
        r = self.rng
        return r.choice([
            lambda: op_int(r.choice([0, 1, 2, 3, 4, 6, 8, 16, -1, r.randint(-2 ** 31, 2 ** 31 - 1)])),
            lambda: b"G" + struct.pack(">d", r.choice([0.5, -1.0, math.nan, math.inf, r.random()])),
            lambda: r.choice([NONE, TRUE, FALSE, b")", b"]", b"}"]),
            lambda: op_str(r.choice(WORDS)),
            lambda: op_bytes(r.choice([b"b", b"\x41" * r.choice([1, 2, 4, 8, 16, 24]),
                                       r.randbytes(r.randint(0, 40))])),
            lambda: op_global(*r.choice(ALLOWED if self.chance(0.95) else REFUSED)),
        ])()

    def _tuple(self, depth: int) -> bytes:
        return op_tuple(*(self.expr(depth) for _ in range(self.rng.randint(0, 4))))

    def _list(self, depth: int) -> bytes:
        return b"(" + b"".join(self.expr(depth) for _ in range(self.rng.randint(0, 3))) + b"l"

    def _dict(self, depth: int) -> bytes:
        keys = [self._atom(0) if self.chance(0.2) else op_str(self.rng.choice(WORDS))
                for _ in range(self.rng.randint(0, 3))]
        return b"(" + b"".join(k + self.expr(depth) for k in keys) + b"d"

    def _call(self, depth: int) -> bytes:
        return op_global(*self.rng.choice(ALLOWED)) + self._tuple(depth) + b"R"

    def _build(self, depth: int) -> bytes:
        return self.expr(depth) + self.expr(depth) + b"b"

    def _newobj(self, depth: int) -> bytes:
        return op_global(*self.rng.choice(ALLOWED)) + self._tuple(depth) + b"\x81"

    def _add(self, depth: int) -> bytes:
        target = self.rng.choice([b"\x8f", b"]", b"}", self.expr(depth)])
        items = b"".join(self.expr(depth) for _ in range(2 * self.rng.randint(0, 2)))
        return target + b"(" + items + self.rng.choice([b"\x90", b"e", b"u"])

    def _memo(self, depth: int) -> bytes:
        return b"h" + bytes([self.rng.randrange(self.memo)]) if self.memo else self._atom(depth)

    def _maybe(self, good: bytes, depth: int) -> bytes:
        """Mostly the well-formed part a template expects, sometimes a random expression."""
        return good if self.chance(0.8) else self.expr(depth)

    def _dtype(self, depth: int) -> bytes:
        plain = op_tuple(op_int(3), op_str(self.rng.choice("<>|")), NONE, NONE, NONE, op_int(-1), op_int(-1), op_int(0))
        state = self.rng.choice([None, HIDDEN_OBJECT_STATE, plain, self.expr(depth)])
        return op_dtype(self.rng.choice(DTYPE_SPECS), state)

    def _storage(self) -> bytes:
        blob = self.rng.choice(self.blobs)
        return op_call("torch.storage", "_load_from_bytes", op_bytes(blob if self.chance(0.8) else self._mutated(blob)))

    def _sizes(self) -> bytes:
        return op_tuple(*(op_int(self.rng.choice([0, 1, 2, 3, 6, 10 ** 6])) for _ in range(self.rng.randint(0, 3))))

    def _template(self, depth: int) -> bytes:
        r, maybe = self.rng, self._maybe
        hooks = op_call("collections", "OrderedDict")
        templates = [
            lambda: self._dtype(depth),
            lambda: op_call("numpy.core.multiarray", "scalar", maybe(self._dtype(depth), depth),
                            maybe(op_bytes(b"\x41" * 8), depth)),
            lambda: op_call("numpy.core.multiarray", "_reconstruct", maybe(op_global("numpy", "ndarray"), depth),
                            maybe(op_tuple(op_int(0)), depth), maybe(op_bytes(b"b"), depth))
            + op_tuple(op_int(1), maybe(self._sizes(), depth), maybe(self._dtype(depth), depth), FALSE,
                       maybe(op_bytes(r.randbytes(8)), depth)) + b"b",
            lambda: self._storage(),
            lambda: op_call("torch._utils", "_rebuild_tensor_v2", maybe(self._storage(), depth),
                            maybe(op_int(r.choice([0, 1, 5])), depth), maybe(self._sizes(), depth),
                            maybe(self._sizes(), depth), maybe(FALSE, depth), maybe(hooks, depth)),
            lambda: op_call("torch._utils", "_rebuild_parameter", self.expr(depth), maybe(FALSE, depth),
                            maybe(hooks, depth)),
            lambda: op_call("torch_utils.persistence", "_reconstruct_persistent_obj", op_dict({
                "class_name": maybe(op_str(r.choice(WORDS)), depth),
                "state": maybe(op_dict({r.choice(["_parameters", "_buffers", "_modules"]): self.expr(depth)}),
                               depth)})),
            lambda: op_call(*r.choice([("builtins", "set"), ("builtins", "frozenset"), ("collections", "OrderedDict")]),
                            self.expr(depth)),
        ]
        return r.choice(templates)()

    def _mutated(self, data: bytes) -> bytes:
        data = bytearray(data)
        for _ in range(self.rng.randint(1, 4)):
            data[self.rng.randrange(len(data))] = self.rng.randrange(256)
        return bytes(data[: self.rng.randint(1, len(data))] if self.chance(0.2) else data)

    def mutated_network(self, data: bytes) -> bytes:
        """A real (tiny) network pickle with a few bytes changed."""
        return self._mutated(data)


def test_random_pickles_load_or_raise_checkpoint_errors(tmp_path):
    fuzzer = ProgramFuzzer(seed=14)
    network = tmp_path / "network.pkl"
    write_nvidia_fixture(network, _tiny_generator(), keys=("G_ema",))
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "000-valid.pkl").write_bytes(network.read_bytes())
    for i in range(1, 321):
        data = fuzzer.mutated_network(network.read_bytes()) if i % 4 == 0 else fuzzer.program()
        (cases / f"{i:03d}.pkl").write_bytes(data)
    outcomes = run_loader(cases)
    assert outcomes.pop("000-valid.pkl") == "OK"
    assert set(outcomes.values()) <= {"OK", "CheckpointError"}
    assert list(outcomes.values()).count("CheckpointError") > 200
