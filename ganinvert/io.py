"""Image and file I/O: reading any PIL image into a [-1, 1] tensor, atomic writes, image strips.

Resize policy (``fit``) when an image is not already at the generator's resolution:

* ``"crop"`` (default): centre-crop to a square on the short side, then Lanczos-resize;
* ``"pad"``: pad to a square with the border colour (edge replication), then resize;
* ``"stretch"``: resize each axis independently.

Modes: 1/L/LA/P/RGBA/CMYK/I;16/I/F images become RGB; alpha is composited over white;
16-bit and 32-bit images are rescaled from their full range to 8 bits; EXIF orientation is
applied first. A float image with NaN or infinite pixels is refused; of a multi-frame file (an
animated GIF, a multi-page TIFF) the first frame is read, with a warning.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

FIT_POLICIES = ("crop", "pad", "stretch")
_UMASK = os.umask(0o022)
os.umask(_UMASK)


# ----------------------------------------------------------------------------- atomic writes
def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda fh: fh.write(data))


def _finite_or_null(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON has no NaN: ``null`` stands for it)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write valid JSON: non-finite floats become ``null`` (a bare ``NaN`` is not JSON)."""
    text = json.dumps(_finite_or_null(obj), indent=2, sort_keys=False, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda fh: torch.save(obj, fh))


# ----------------------------------------------------------------------------- reading images
def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():  # min/max would be NaN and the image silently black
            raise ImageError("it has NaN or infinite pixel values")
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        img = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def _fit(img: Image.Image, size: int, fit: str) -> Image.Image:
    if fit not in FIT_POLICIES:
        raise ImageError(f"unknown resize policy {fit!r}; choose one of {', '.join(FIT_POLICIES)}")
    w, h = img.size
    if fit == "crop" and w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    elif fit == "pad" and w != h:
        s = max(w, h)
        arr = np.asarray(img)
        pw, ph = s - w, s - h
        arr = np.pad(arr, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="edge")
        img = Image.fromarray(arr)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return img


def load_image(path: str | Path, size: int | None = None, fit: str = "crop") -> torch.Tensor:
    """Read an image file into a (1, 3, H, W) float tensor in [-1, 1].

    Args:
        path: any file PIL can read.
        size: square side to bring the image to (``None`` keeps its size).
        fit: resize policy, see the module docstring.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    try:
        with Image.open(path) as opened:
            frames = getattr(opened, "n_frames", 1)
            if frames > 1:
                warnings.warn(f"{path} has {frames} frames (animated or multi-page); using the first",
                              UserWarning, stacklevel=2)
            opened.load()
            img = ImageOps.exif_transpose(opened)
            img = _to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = "empty file" if path.stat().st_size == 0 else str(exc).splitlines()[0][:120]
        raise ImageError(f"cannot read image {path}: {reason}") from None
    if size is not None:
        img = _fit(img, size, fit)
    return pil_to_tensor(img)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """(3, H, W) or (1, 3, H, W) tensor in [-1, 1] -> RGB image (values clamped)."""
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError("tensor_to_pil takes one image")
        x = x[0]
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).numpy(), "RGB")


def save_image(x: torch.Tensor, path: str | Path) -> None:
    """Write one image tensor in [-1, 1] as PNG (atomically)."""
    buf = io.BytesIO()
    tensor_to_pil(x).save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())


def image_strip(images: Sequence[torch.Tensor], labels: Sequence[str] | None = None,
                height: int = 256) -> Image.Image:
    """Side-by-side strip of (3, H, W) / (1, 3, H, W) images, each scaled to ``height`` px,
    with optional labels above them."""
    from PIL import ImageDraw

    tiles = [tensor_to_pil(t).resize((height, height), Image.Resampling.NEAREST
                                     if t.shape[-1] < height else Image.Resampling.LANCZOS) for t in images]
    label_h = 14 if labels else 0
    strip = Image.new("RGB", (height * len(tiles), height + label_h), "white")
    draw = ImageDraw.Draw(strip)
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * height, label_h))
        if labels:
            draw.text((i * height + 3, 1), labels[i], fill="black")
    return strip


def save_pil(img: Image.Image, path: str | Path, **kwargs: Any) -> None:
    buf = io.BytesIO()
    fmt = "GIF" if Path(path).suffix.lower() == ".gif" else "PNG"
    img.save(buf, format=fmt, **kwargs)
    atomic_write_bytes(Path(path), buf.getvalue())


def list_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expand directories into their image files (sorted); keep files as given."""
    exts = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in exts))
        else:
            out.append(p)
    return out
