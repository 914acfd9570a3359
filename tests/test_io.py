"""Image reading (every PIL mode, EXIF orientation, fit policies), writing and atomic file writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganinvert.errors import ImageError
from ganinvert.io import (atomic_torch_save, atomic_write_bytes, atomic_write_json, image_strip, list_images,
                          load_image, pil_to_tensor, save_image, save_pil, tensor_to_pil)


def rgb_array(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def as_uint8(t: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) tensor in [-1, 1] -> (H, W, 3) uint8, the inverse of the reader's scaling."""
    return ((t[0].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()


# ----------------------------------------------------------------------------- modes
def test_rgb_png_is_read_exactly(tmp_path):
    arr = rgb_array(6, 5)
    Image.fromarray(arr).save(tmp_path / "x.png")
    t = load_image(tmp_path / "x.png")
    assert t.shape == (1, 3, 6, 5) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    np.testing.assert_array_equal(as_uint8(t), arr)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = rgb_array(4, 4)[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = as_uint8(load_image(tmp_path / "g.png"))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_alpha_is_composited_over_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 255            # red ...
    rgba[0, 0, 3] = 255           # ... opaque in one pixel, fully transparent elsewhere
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = as_uint8(load_image(tmp_path / "a.png"))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[1, 1].tolist() == [255, 255, 255]

    la = np.zeros((2, 2, 2), np.uint8)
    la[..., 1] = 128              # black at half opacity over white -> mid grey
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert abs(int(as_uint8(load_image(tmp_path / "la.png"))[0, 0, 0]) - 127) <= 1


def test_palette_image(tmp_path):
    arr = np.zeros((4, 4, 3), np.uint8)
    arr[:2] = (10, 200, 30)
    Image.fromarray(arr).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(as_uint8(load_image(tmp_path / "p.png")), arr)


def test_palette_image_with_transparency(tmp_path):
    img = Image.new("P", (2, 2), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((0, 0), 1)
    img.save(tmp_path / "pt.png", transparency=0)
    out = as_uint8(load_image(tmp_path / "pt.png"))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[1, 1].tolist() == [255, 255, 255]  # the transparent index shows white


def test_16_bit_image_uses_its_full_range(tmp_path):
    arr = np.array([[0, 65535], [32768, 1000]], np.uint16)
    Image.fromarray(arr).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode.startswith("I;16")
    out = as_uint8(load_image(tmp_path / "i16.png"))[..., 0]
    assert out.tolist() == [[0, 255], [128, 4]]


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((8, 16, 3), np.uint8)
    arr[:, :8] = 255  # white left half of a wide image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    t = load_image(tmp_path / "r.jpg")
    assert t.shape == (1, 3, 16, 8)  # displayed upright: tall
    top, bottom = t[0, :, :8].mean(), t[0, :, 8:].mean()
    assert top > 0.9 and bottom < -0.9  # the white half is on top after a clockwise turn


# ----------------------------------------------------------------------------- fit policies
@pytest.fixture
def wide_image(tmp_path) -> Path:
    """40x20 image: left quarter red, middle half green, right quarter blue."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :10] = (255, 0, 0)
    arr[:, 10:30] = (0, 255, 0)
    arr[:, 30:] = (0, 0, 255)
    Image.fromarray(arr).save(tmp_path / "wide.png")
    return tmp_path / "wide.png"


def test_fit_crop_keeps_the_centre(wide_image):
    out = as_uint8(load_image(wide_image, 20, "crop"))
    assert out.shape == (20, 20, 3)
    np.testing.assert_array_equal(out, np.broadcast_to(np.array([0, 255, 0], np.uint8), (20, 20, 3)))


def test_fit_pad_keeps_everything_and_replicates_edges(wide_image):
    out = as_uint8(load_image(wide_image, 40, "pad"))
    assert out.shape == (40, 40, 3)
    assert out[0, 0].tolist() == [255, 0, 0] and out[39, 39].tolist() == [0, 0, 255]
    assert out[0, 20].tolist() == [0, 255, 0]  # padded rows repeat the edge row


def test_fit_stretch_squeezes_each_axis(wide_image):
    out = as_uint8(load_image(wide_image, 20, "stretch"))
    assert out.shape == (20, 20, 3)
    assert out[10, 0].tolist() == [255, 0, 0] and out[10, 19].tolist() == [0, 0, 255]


def test_square_image_at_size_is_untouched(tmp_path):
    arr = rgb_array(8, 8)
    Image.fromarray(arr).save(tmp_path / "s.png")
    for fit in ("crop", "pad", "stretch"):
        np.testing.assert_array_equal(as_uint8(load_image(tmp_path / "s.png", 8, fit)), arr)


def test_resize_to_generator_size(tmp_path):
    Image.fromarray(rgb_array(50, 30)).save(tmp_path / "x.png")
    assert load_image(tmp_path / "x.png", 32).shape == (1, 3, 32, 32)


def test_unknown_fit_policy(wide_image):
    with pytest.raises(ImageError, match="resize policy"):
        load_image(wide_image, 20, "zoom")


# ----------------------------------------------------------------------------- unreadable images
@pytest.mark.parametrize("content,message", [
    (b"", "empty file"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "cannot read image"),
    (b"definitely not pixels", "cannot read image"),
])
def test_unreadable_images_raise_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message) as info:
        load_image(path)
    assert "\n" not in str(info.value)


def test_truncated_jpeg(tmp_path):
    Image.fromarray(rgb_array(64, 64)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(tmp_path / "cut.jpg")


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.fromarray(rgb_array(8, 8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 64 px > 2 x limit: PIL's bomb error
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(tmp_path / "big.png")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_float_image_with_non_finite_pixels_is_refused(tmp_path, bad):
    arr = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    arr[1, 2] = bad
    Image.fromarray(arr).save(tmp_path / "f.tif")  # float32 -> mode F
    with pytest.raises(ImageError, match="NaN or infinite pixel values") as info:
        load_image(tmp_path / "f.tif")
    assert "\n" not in str(info.value) and "f.tif" in str(info.value)


def test_animated_gif_warns_and_uses_the_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((4, 4, 3), v, np.uint8)) for v in (10, 200, 90)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    with pytest.warns(UserWarning, match=r"anim\.gif has 3 frames .*using the first"):
        t = load_image(tmp_path / "anim.gif")
    assert as_uint8(t)[0, 0].tolist() == [10, 10, 10]


def test_missing_image(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")


# ----------------------------------------------------------------------------- writing
def test_save_image_round_trip_and_clamping(tmp_path):
    t = torch.linspace(-1.5, 1.5, 3 * 4 * 4).reshape(1, 3, 4, 4)
    save_image(t, tmp_path / "o.png")
    back = load_image(tmp_path / "o.png")
    assert torch.allclose(back, t.clamp(-1, 1), atol=1 / 127.5)
    np.testing.assert_array_equal(np.asarray(tensor_to_pil(t)), as_uint8(back))
    assert torch.equal(pil_to_tensor(tensor_to_pil(back)), back)


def test_tensor_to_pil_takes_one_image():
    with pytest.raises(ValueError):
        tensor_to_pil(torch.zeros(2, 3, 4, 4))


def test_image_strip_size(tmp_path):
    strip = image_strip([torch.zeros(1, 3, 8, 8), torch.ones(3, 8, 8)], ["a", "b"], height=32)
    assert strip.size == (64, 32 + 14)
    save_pil(strip, tmp_path / "strip.png")
    assert Image.open(tmp_path / "strip.png").size == strip.size


def test_list_images_expands_folders(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert list_images([tmp_path]) == [tmp_path / "a.JPG", tmp_path / "b.png"]
    assert list_images([tmp_path / "notes.txt"]) == [tmp_path / "notes.txt"]  # files are kept as given


# ----------------------------------------------------------------------------- atomic writes
def test_atomic_writes_leave_only_the_target(tmp_path):
    atomic_write_bytes(tmp_path / "sub" / "a.bin", b"123")
    atomic_write_json(tmp_path / "sub" / "b.json", {"x": [1, 2]})
    atomic_torch_save({"t": torch.ones(2)}, tmp_path / "sub" / "c.pt")
    save_image(torch.zeros(1, 3, 2, 2), tmp_path / "sub" / "d.png")
    assert sorted(os.listdir(tmp_path / "sub")) == ["a.bin", "b.json", "c.pt", "d.png"]
    assert (tmp_path / "sub" / "a.bin").read_bytes() == b"123"
    assert torch.equal(torch.load(tmp_path / "sub" / "c.pt")["t"], torch.ones(2))


def test_json_writer_writes_null_for_non_finite_floats(tmp_path):
    atomic_write_json(tmp_path / "e.json", {"frames": [{"alpha": 1.0, "rmse": float("nan")}],
                                            "pair": (float("inf"), -float("inf")), "n": np.float64("nan"), "k": 2})

    def refuse(name):
        raise AssertionError(f"{name} is not JSON")

    back = json.loads((tmp_path / "e.json").read_text(), parse_constant=refuse)
    assert back == {"frames": [{"alpha": 1.0, "rmse": None}], "pair": [None, None], "n": None, "k": 2}


def test_failed_atomic_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "c.pt"
    atomic_torch_save({"v": 1}, target)
    with pytest.raises(Exception):
        atomic_torch_save({"v": lambda: None}, target)  # a lambda cannot be pickled
    assert os.listdir(tmp_path) == ["c.pt"]
    assert torch.load(target)["v"] == 1


def test_overwrite_replaces_content(tmp_path):
    atomic_write_bytes(tmp_path / "a", b"old")
    atomic_write_bytes(tmp_path / "a", b"new")
    assert (tmp_path / "a").read_bytes() == b"new" and os.listdir(tmp_path) == ["a"]
