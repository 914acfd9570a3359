"""Hostile inputs through the real command line, one subprocess each (issue #14).

Every case must end with exit status 2 and exactly one stderr line (``ganinvert: error: …``),
no traceback, nothing changed outside its ``--out``, and no file left under a final name: a
failing run publishes nothing. The cases run two at a time (the machine has two cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ganinvert.inversion import invert
from ganinvert.io import save_image
from ganinvert.models.loading import load_generator, save_generator
from tests.conftest import make_random_generator



# Pickle programs written opcode by opcode (the loader's own attack tests in
# tests/models/test_nvidia_pkl_hostile.py explain the dtype attack in full).
def op_str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def op_call(module: str, name: str, *args: bytes) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode() + b"(" + b"".join(args) + b"tR"


def program(body: bytes) -> bytes:
    """A protocol-3 pickle that NVIDIA sniffing accepts (it names torch_utils.persistence first)."""
    return b"\x80\x03" + op_str("torch_utils.persistence") + b"0" + body + b"."


def dtype_scalar_set_attack() -> bytes:
    """``set(scalar(dtype('V16') with a BUILD state hiding an object field, 16 bytes))``: it segfaulted."""
    def op_int(i: int) -> bytes:
        return b"J" + struct.pack("<i", i)

    def dtype(spec: str) -> bytes:
        return op_call("numpy", "dtype", op_str(spec), b"\x89", b"\x88")

    fields = b"(" + op_str("a") + b"(" + dtype("O8") + op_int(0) + b"td"
    state = (b"(" + op_int(3) + op_str("|") + b"N(" + op_str("a") + b"t" + fields
             + op_int(16) + op_int(1) + op_int(0) + b"t")
    scalar = op_call("numpy.core.multiarray", "scalar", dtype("V16") + state + b"b",
                     b"B" + struct.pack("<I", 16) + b"\x41" * 16)
    return program(b"cbuiltins\nset\n(" + scalar + b"tR")


def tiff(path: Path, value: float) -> None:
    pixels = np.full((32, 32), value, np.float32)
    pixels[0, 0] = 0.5
    Image.fromarray(pixels, mode="F").save(path)


def build_inputs(d: Path) -> None:
    """Everything the cases read, under ``d``: generators, images, results, directions, pickles."""
    G = make_random_generator(32, seed=11)
    save_generator(G, d / "g.pt")
    save_generator(make_random_generator(32, seed=12), d / "other.pt")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / "face.png")
    (d / "text.png").write_text("not an image at all\n")
    (d / "empty.png").write_bytes(b"")
    (d / "truncated.png").write_bytes((d / "face.png").read_bytes()[:60])
    tiff(d / "nan.tif", float("nan"))
    tiff(d / "inf.tif", float("inf"))
    (d / "no_images").mkdir()
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(d / "small_mask.png")
    # checkpoints
    (d / "text.pt").write_text("a text file\n")
    torch.save([1, 2, 3], d / "list.pt")
    state = G.state_dict()
    torch.save({"g_ema": {k: v for i, (k, v) in enumerate(state.items()) if i % 2}}, d / "half.pt")
    torch.save({"g_ema": state, "latent_avg": "w"}, d / "latent_string.pt")
    torch.save({"g_ema": state, "latent_avg": torch.full_like(G.w_avg, float("nan"))}, d / "latent_nan.pt")
    torch.save({"g_ema": state, "latent_avg": torch.zeros(3, 5)}, d / "latent_shape.pt")
    torch.save({"g_ema": {**state, "style.1.bias": state["style.1.bias"].long()}, "latent_avg": G.w_avg},
               d / "int_weight.pt")
    (d / "code.pkl").write_bytes(program(op_call("os", "system", op_str("touch PWNED"))))
    (d / "segfault.pkl").write_bytes(dtype_scalar_set_attack())
    (d / "cut.pkl").write_bytes(pickle.dumps({"torch_utils.persistence": list(range(1000))})[:200])
    # results
    G = load_generator(d / "g.pt")  # results record the checkpoint's hash, so another one is refused
    z = torch.randn(1, G.style_dim, generator=torch.Generator().manual_seed(3))
    target = G.synthesis(G.broadcast(G.mapping(z))).detach().clamp(-1, 1)
    save_image(target[0], d / "target.png")
    for name, method, steps in (("r", "w+", 2), ("rw", "w", 2), ("r2", "w+", 3)):
        result = invert(G, target, method, settings={"steps": steps, "lambda_lpips": 0.0}, progress=False)
        result.save(d / name / "result.safetensors")
    meta = json.loads((d / "r" / "result.json").read_text())
    tensors = load_file(d / "r" / "result.safetensors")

    def result_variant(name: str, meta_change=None, tensor_change=None, raw_json: str | None = None) -> None:
        (d / name).mkdir()
        text = raw_json if raw_json is not None else json.dumps(meta_change(dict(meta)) if meta_change else meta)
        (d / name / "result.json").write_text(text)
        save_file(tensor_change(dict(tensors)) if tensor_change else tensors, d / name / "result.safetensors")

    result_variant("json_list", raw_json="[1, 2, 3]")
    result_variant("no_method", meta_change=lambda m: {k: v for k, v in m.items() if k != "method"})
    result_variant("settings_string", meta_change=lambda m: {**m, "settings": "fast"})
    result_variant("deep", raw_json="[" * 200_000 + "]" * 200_000)
    result_variant("bad_json", raw_json="{not json")
    result_variant("missing_key", tensor_change=lambda t: {k: v for k, v in list(t.items())[1:]})
    result_variant("float64", tensor_change=lambda t: {k: v.double() for k, v in t.items()})
    result_variant("nan", tensor_change=lambda t: {k: torch.full_like(v, float("nan")) for k, v in t.items()})
    result_variant("mismatched", tensor_change=lambda t: load_file(d / "r2" / "result.safetensors"))
    (d / "no_tensors").mkdir()
    (d / "no_tensors" / "result.json").write_text(json.dumps(meta))
    # directions
    torch.save({"directions": torch.eye(G.style_dim)[:4], "explained_variance": torch.ones(2)}, d / "short_var.pt")
    torch.save({"directions": torch.eye(G.style_dim)[:4], "explained_variance": "big"}, d / "string_var.pt")
    torch.save(torch.ones(G.style_dim + 3), d / "wrong_dim.pt")


def r(name: str) -> str:
    return f"IN/{name}/result.safetensors"


G_ARGS = ["-g", "IN/g.pt"]
INVERT = ["invert", "IN/face.png", *G_ARGS, "--no-lpips", "--steps", "2", "-m", "w+"]
#: for --set steps=… and lambda_lpips=… (--steps and --no-lpips would override them)
SETTINGS = ["invert", "IN/face.png", *G_ARGS, "-m", "w+", "--set", "lambda_lpips=0"]
RESTORE = ["restore", "IN/face.png", *G_ARGS, "--no-lpips", "--steps", "2", "-m", "w+"]
EDIT = ["edit", r("r"), *G_ARGS, "--no-lpips"]

#: id -> (argv with IN/ for the inputs and OUT for the output path, a fragment of the message)
CASES: dict[str, tuple[list[str], str]] = {
    # images
    "text renamed .png": (["invert", "IN/text.png", *G_ARGS, "--no-lpips", "-o", "OUT"], "text.png"),
    "empty image": (["invert", "IN/empty.png", *G_ARGS, "--no-lpips", "-o", "OUT"], "empty.png"),
    "truncated png": (["invert", "IN/truncated.png", *G_ARGS, "--no-lpips", "-o", "OUT"], "truncated.png"),
    "missing image": (["invert", "IN/nope.png", *G_ARGS, "--no-lpips", "-o", "OUT"], "nope.png"),
    "folder without images": (["invert", "IN/no_images", *G_ARGS, "--no-lpips", "-o", "OUT"], "no images"),
    "NaN tiff": (["invert", "IN/nan.tif", *G_ARGS, "--no-lpips", "-o", "OUT"], "NaN"),
    "inf tiff": (["invert", "IN/inf.tif", *G_ARGS, "--no-lpips", "-o", "OUT"], "infinite"),
    "unknown fit": ([*INVERT, "--fit", "squash", "-o", "OUT"], "squash"),
    # generators
    "text checkpoint": (["invert", "IN/face.png", "-g", "IN/text.pt", "--no-lpips", "-o", "OUT"], "text.pt"),
    "missing checkpoint": (["invert", "IN/face.png", "-g", "IN/none.pt", "--no-lpips", "-o", "OUT"], "not found"),
    "checkpoint is a folder": (["invert", "IN/face.png", "-g", "IN/no_images", "--no-lpips", "-o", "OUT"],
                               "not a file"),
    "list checkpoint": (["invert", "IN/face.png", "-g", "IN/list.pt", "--no-lpips", "-o", "OUT"], "list.pt"),
    "half a state dict": (["invert", "IN/face.png", "-g", "IN/half.pt", "--no-lpips", "-o", "OUT"], "half.pt"),
    "latent_avg a string": (["invert", "IN/face.png", "-g", "IN/latent_string.pt", "--no-lpips", "-o", "OUT"],
                            "latent_avg"),
    "latent_avg NaN": (["invert", "IN/face.png", "-g", "IN/latent_nan.pt", "--no-lpips", "-o", "OUT"], "NaN"),
    "latent_avg shape": (["invert", "IN/face.png", "-g", "IN/latent_shape.pt", "--no-lpips", "-o", "OUT"],
                         "latent_avg"),
    "integer weights": (["invert", "IN/face.png", "-g", "IN/int_weight.pt", "--no-lpips", "-o", "OUT"],
                        "floating-point"),
    "code-execution pickle": (["invert", "IN/face.png", "-g", "IN/code.pkl", "--no-lpips", "-o", "OUT"], "code.pkl"),
    "segfault pickle": (["invert", "IN/face.png", "-g", "IN/segfault.pkl", "--no-lpips", "-o", "OUT"], "dtype"),
    "cut pickle": (["invert", "IN/face.png", "-g", "IN/cut.pkl", "--no-lpips", "-o", "OUT"], "cut.pkl"),
    "render with a code pickle": (["render", r("r"), "-g", "IN/code.pkl", "-o", "OUT"], "code.pkl"),
    # settings and options
    "steps=abc": ([*SETTINGS, "--set", "steps=abc", "-o", "OUT"], "'steps'"),
    "lr=nan": ([*INVERT, "--set", "lr=nan", "-o", "OUT"], "'lr'"),
    "lr=1e999": ([*INVERT, "--set", "lr=1e999", "-o", "OUT"], "'lr'"),
    "lambda_lpips=1e999": (["invert", "IN/face.png", *G_ARGS, "--steps", "2", "--set", "lambda_lpips=1e999",
                            "-o", "OUT"], "'lambda_lpips'"),
    "lambda_mse=[1,2]": ([*INVERT, "--set", "lambda_mse=[1,2]", "-o", "OUT"], "'lambda_mse'"),
    "lambda_mse=-1": ([*INVERT, "--set", "lambda_mse=-1", "-o", "OUT"], "'lambda_mse'"),
    "steps=2.5": ([*SETTINGS, "--set", "steps=2.5", "-o", "OUT"], "'steps'"),
    "steps=True": ([*SETTINGS, "--set", "steps=True", "-o", "OUT"], "'steps'"),
    "unknown setting": ([*INVERT, "--set", "warp=9", "-o", "OUT"], "warp"),
    "set without =": ([*INVERT, "--set", "lr", "-o", "OUT"], "key=value"),
    "zero steps": ([*INVERT, "--steps", "0", "-o", "OUT"], "--steps"),
    "seed 2**70": ([*INVERT, "--seed", str(2 ** 70), "-o", "OUT"], "seed"),
    "negative seed": ([*INVERT, "--seed", "-1", "-o", "OUT"], "seed"),
    "zero batch": ([*INVERT, "--batch-size", "0", "-o", "OUT"], "--batch-size"),
    "unknown method": (["invert", "IN/face.png", *G_ARGS, "--no-lpips", "-m", "w++", "-o", "OUT"], "w++"),
    "unknown preset": ([*INVERT, "--preset", "turbo", "-o", "OUT"], "turbo"),
    "no CUDA": ([*INVERT, "--device", "cuda", "-o", "OUT"], "CUDA"),
    "bogus device": ([*INVERT, "--device", "tpu9", "-o", "OUT"], "tpu9"),
    "missing LPIPS weights": (["invert", "IN/face.png", *G_ARGS, "--steps", "2", "--lpips-weights",
                               "IN/none.pth", "-o", "OUT"], "none.pth"),
    "out is a file": ([*INVERT, "-o", "IN/face.png"], "face.png"),
    # result files
    "result.json a list": (["render", r("json_list"), *G_ARGS, "-o", "OUT"], "result.json"),
    "result without method": (["render", r("no_method"), *G_ARGS, "-o", "OUT"], "method"),
    "settings a string": (["render", r("settings_string"), *G_ARGS, "-o", "OUT"], "settings"),
    "200 000 levels of JSON": (["render", r("deep"), *G_ARGS, "-o", "OUT"], "result.json"),
    "invalid JSON": (["render", r("bad_json"), *G_ARGS, "-o", "OUT"], "result.json"),
    "missing tensor": (["render", r("missing_key"), *G_ARGS, "-o", "OUT"], "missing"),
    "float64 tensors": (["render", r("float64"), *G_ARGS, "-o", "OUT"], "float"),
    "NaN tensors": (["render", r("nan"), *G_ARGS, "-o", "OUT"], "NaN"),
    "json and tensors of two runs": (["render", r("mismatched"), *G_ARGS, "-o", "OUT"], "belong"),
    "no tensor file": (["render", r("no_tensors"), *G_ARGS, "-o", "OUT"], "result.safetensors"),
    "another generator": (["render", r("r"), "-g", "IN/other.pt", "-o", "OUT"], "generator"),
    "negative draws": (["render", r("r"), *G_ARGS, "--draws", "-1", "-o", "OUT"], "draws"),
    "render seed 2**70": (["render", r("r"), *G_ARGS, "--draws", "2", "--seed", str(2 ** 70), "-o", "OUT"], "seed"),
    # edit, interpolate, robustness, directions, sample
    "layers 0-3000000000": ([*EDIT, "-d", "pca:0", "--layers", "0-3000000000", "-o", "OUT"], "layer"),
    "short explained_variance": ([*EDIT, "-d", "IN/short_var.pt:0", "-o", "OUT"], "explained_variance"),
    "string explained_variance": ([*EDIT, "-d", "IN/string_var.pt:0", "-o", "OUT"], "explained_variance"),
    "direction of the wrong size": ([*EDIT, "-d", "IN/wrong_dim.pt", "-o", "OUT"], "direction"),
    "NaN strength": ([*EDIT, "-d", "pca:0", "--strength", "1,nan", "-o", "OUT"], "strength"),
    "direction index out of range": ([*EDIT, "-d", "pca:99999", "-o", "OUT"], "99999"),
    "interpolate two methods": (["interpolate", r("r"), r("rw"), *G_ARGS, "-o", "OUT"], "method"),
    "interpolate one frame": (["interpolate", r("r"), r("r2"), *G_ARGS, "--steps", "1", "-o", "OUT"], "--steps"),
    "robustness bad SNR list": (["robustness", r("r"), *G_ARGS, "--no-lpips", "--snr-db", "10,loud", "-o", "OUT"],
                                "--snr-db"),
    "directions into a .txt": (["directions", *G_ARGS, "-o", "OUT.txt"], ".pt"),
    "zero samples": (["sample", *G_ARGS, "--n", "0", "-o", "OUT"], "--n"),
    "sample seed 2**70": (["sample", *G_ARGS, "--seed", str(2 ** 70), "-o", "OUT"], "seed"),
    # restore
    "measured compressed sensing": ([*RESTORE, "--task", "cs", "--fraction", "0.1", "--measured", "-o", "OUT"],
                                    "not images"),
    "denoise without sigma": ([*RESTORE, "--task", "denoise", "-o", "OUT"], "--sigma"),
    "mask of the wrong size": ([*RESTORE, "--task", "inpaint", "--mask", "IN/small_mask.png", "-o", "OUT"], "mask"),
    "factor not dividing": ([*RESTORE, "--task", "sr", "--factor", "3", "-o", "OUT"], "factor"),
    "zero fraction": ([*RESTORE, "--task", "cs", "--fraction", "0", "-o", "OUT"], "fraction"),
    "fraction above one": ([*RESTORE, "--task", "cs", "--fraction", "2", "-o", "OUT"], "fraction"),
    "unknown task": ([*RESTORE, "--task", "deblur", "-o", "OUT"], "deblur"),
    # evaluate and training
    "unknown suite": (["evaluate", "warp-speed", "--images", "IN/face.png", *G_ARGS, "-o", "OUT"], "warp-speed"),
    "evaluate lr=nan": (["evaluate", "denoise", "--images", "IN/face.png", *G_ARGS, "--no-lpips", "--methods", "w+",
                         "--set", "lr=nan", "-o", "OUT"], "'lr'"),
    "train-inverter bad setting": (["train-inverter", "hyperinverter-e1", *G_ARGS, "--steps", "1",
                                    "--set", "hidden=abc", "--out", "OUT"], "hidden"),
}


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_case(work: Path, case: str) -> dict:
    argv, _ = CASES[case]
    safe = "".join(c if c.isalnum() else "_" for c in case)
    out = f"out_{safe}"
    args = [a.replace("IN/", "in/").replace("OUT", out) for a in argv]
    before = snapshot(work / "in")
    env = {**os.environ, "GANINVERT_CACHE": str(work / "cache")}
    proc = subprocess.run([sys.executable, "-m", "ganinvert.cli", *args], cwd=work, capture_output=True, text=True,
                          timeout=300, env=env)
    return {"code": proc.returncode, "stderr": proc.stderr, "in_changed": snapshot(work / "in") != before,
            "out": out, "pwned": (work / "PWNED").exists(),
            "stray": sorted(p.name for p in work.iterdir()
                            if p.name not in ("in", "cache") and not p.name.startswith("out_"))}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict]:
    work = tmp_path_factory.mktemp("hostile")
    (work / "in").mkdir()
    build_inputs(work / "in")
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(CASES, pool.map(lambda c: run_case(work, c), CASES))) | {"_work": {"path": work}}


def test_there_are_at_least_sixty_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_gets_one_line_and_exit_2(outcomes, case):
    got, (_, fragment) = outcomes[case], CASES[case]
    work = outcomes["_work"]["path"]
    lines = got["stderr"].strip("\n").split("\n")
    assert got["code"] == 2, got["stderr"]
    assert "Traceback" not in got["stderr"]
    assert len(lines) == 1 and lines[0].startswith("ganinvert: error: "), got["stderr"]
    assert fragment.lower() in lines[0].lower(), lines[0]
    assert not got["in_changed"] and not got["pwned"] and not got["stray"], got
    out = work / got["out"]
    files = [p.relative_to(out).parts for p in out.rglob("*") if p.is_file()] if out.is_dir() else []
    published = [p for p in files if not any(part.startswith(".") for part in p)]  # locks and temp folders aside
    assert not published and not Path(str(out) + ".txt").exists(), published
