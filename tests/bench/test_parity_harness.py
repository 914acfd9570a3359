"""bench/parity: CPU stand-ins, checkpoint conversion, source patches and the report, without the
official repositories (CI). One test also runs the official rosinality model.py when
$GANINVERT_PARITY_ROSINALITY names a local tree of rosinality/stylegan2-pytorch."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from bench.parity import checkpoint, harness, projector, standins
from ganinvert.models.ops import SQRT2, upfirdn2d_reference
from ganinvert.models.stylegan2 import Blur, FusedLeakyReLU as GanInvertFusedLeakyReLU, Upsample
from tests.conftest import make_random_generator


@pytest.fixture(autouse=True)
def _clean_modules():
    yield
    standins.uninstall()


def test_upfirdn2d_standin_matches_reference_for_rosinality_pads():
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    k = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1]))
    k = k / k.sum()
    for up, pad in ((1, (2, 1)), (2, (2, 1)), (1, (1, 1))):
        expected = upfirdn2d_reference(x, k, up=up, pad=pad)
        assert torch.equal(standins.upfirdn2d(x, k, up=up, pad=pad), expected)
        assert torch.equal(standins.upfirdn2d(x, k, up=(up, up), pad=(*pad, *pad)), expected)
    # ganinvert's own Blur / Upsample (reference impl) are the same computation
    blur = Blur([1, 3, 3, 1], pad=(2, 1))
    assert torch.equal(standins.upfirdn2d(x, blur.kernel, pad=blur.pad), blur(x, impl="reference"))
    upsample = Upsample([1, 3, 3, 1])
    assert torch.equal(standins.upfirdn2d(x, upsample.kernel, up=2, pad=upsample.pad), upsample(x, impl="reference"))


def test_upfirdn2d_standin_refuses_anisotropic_forms():
    x, k = torch.zeros(1, 1, 4, 4), torch.ones(2, 2)
    with pytest.raises(NotImplementedError):
        standins.upfirdn2d(x, k, up=(2, 1))
    with pytest.raises(NotImplementedError):
        standins.upfirdn2d(x, k, pad=(1, 1, 0, 0))


def test_fused_leaky_relu_standin_matches_ganinvert_and_its_state_dict_key():
    x = torch.randn(2, 5, 3, 3, generator=torch.Generator().manual_seed(1))
    ours = GanInvertFusedLeakyReLU(5)
    stand_in = standins.FusedLeakyReLU(5)
    with torch.no_grad():
        ours.bias.normal_()
    assert list(stand_in.state_dict()) == ["bias"]
    stand_in.load_state_dict(ours.state_dict())
    assert torch.allclose(stand_in(x), ours(x), atol=0, rtol=0)
    expected = torch.nn.functional.leaky_relu(x + ours.bias.view(1, -1, 1, 1), 0.2) * SQRT2
    assert torch.allclose(standins.fused_leaky_relu(x, ours.bias), expected)
    assert standins.FusedLeakyReLU(5, bias=False).bias is None


def _fake_official_tree(tmp_path: Path) -> Path:
    """A tree shaped like rosinality's: op/ with a pure-Python conv2d_gradfix and a model.py that
    imports from op exactly as the official one does (written here, not copied)."""
    (tmp_path / "op").mkdir()
    (tmp_path / "op" / "__init__.py").write_text("raise RuntimeError('the CUDA op package must not be imported')\n")
    (tmp_path / "op" / "conv2d_gradfix.py").write_text("import torch.nn.functional as F\nconv2d = F.conv2d\n")
    (tmp_path / "model.py").write_text(
        "import torch\nfrom torch import nn\n"
        "from op import FusedLeakyReLU, fused_leaky_relu, upfirdn2d, conv2d_gradfix\n"
        "class Generator(nn.Module):\n"
        "    def __init__(self, size, style_dim, n_mlp, channel_multiplier=2, blur_kernel=(1, 3, 3, 1)):\n"
        "        super().__init__()\n"
        "        self.channels = {4: 512, 8: 512, 16: 512 * channel_multiplier}\n"
        "        self.act = FusedLeakyReLU(self.channels[4])\n"
        "        self.size, self.style_dim = size, style_dim\n")
    return tmp_path


def test_install_rosinality_ops_registers_pure_torch_modules(tmp_path):
    tree = _fake_official_tree(tmp_path)
    patches = standins.install_rosinality_ops(tree)
    assert patches and "stand-in" in patches[0]
    model = standins.import_official_model(tree)
    assert sys.modules["op.fused_act"].FusedLeakyReLU is standins.FusedLeakyReLU
    assert sys.modules["op.upfirdn2d"].upfirdn2d is standins.upfirdn2d
    assert sys.modules["op.conv2d_gradfix"].__file__ == str(tree / "op" / "conv2d_gradfix.py")
    generator = standins.with_channels(model.Generator, {4: 8, 8: 4, 16: 2})(16, 32, 2)
    assert generator.channels == {4: 8, 8: 4, 16: 2}
    assert generator.act.bias.shape == (8,)  # layers are built from the replaced table
    assert type(generator).__name__ == "Generator"


def test_install_rosinality_ops_rejects_a_tree_without_op(tmp_path):
    with pytest.raises(FileNotFoundError, match="no op/"):
        standins.install_rosinality_ops(tmp_path)


def test_checkpoint_round_trip_keeps_weights_and_renders(tmp_path):
    G = make_random_generator(seed=3)
    path = checkpoint.write_rosinality_checkpoint(G, tmp_path / "g.pt")
    raw = torch.load(path, map_location="cpu")  # what the official scripts do: weights_only=True default
    assert set(raw) == {"g_ema", "latent_avg"}
    assert set(raw["g_ema"]) == set(G.state_dict())
    H = checkpoint.read_back(path)
    for key, value in G.state_dict().items():
        assert torch.equal(H.state_dict()[key], value), key
    assert torch.equal(H.w_avg, G.w_avg)
    z = torch.randn(2, G.style_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(H.synthesis(H.broadcast(H.mapping(z))), G.synthesis(G.broadcast(G.mapping(z))))


def test_source_patches_must_match_exactly_once():
    config = {"style_dim": 256, "n_mlp": 8}
    text = ('device = "cuda"\ng = Generator(args.size, 512, 8)\nz = torch.randn(n_mean_latent, 512, device=device)\n')
    patched = projector.patched_source(text, projector.source_patches(config))
    assert 'device = "cpu"' in patched and "Generator(args.size, 256, 8)" in patched
    assert "torch.randn(n_mean_latent, 256," in patched
    with pytest.raises(RuntimeError, match="exactly one"):
        projector.patched_source(text.replace('device = "cuda"', ""), projector.source_patches(config))
    with pytest.raises(RuntimeError, match="found 2"):
        projector.patched_source(text + 'device = "cuda"\n', projector.source_patches(config))


def test_torchvision_standin_reads_images_as_ganinvert_does(tmp_path):
    from PIL import Image

    from ganinvert.io import load_image

    array = torch.randint(0, 256, (8, 8, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(array.numpy()).save(path)
    standins.install_torchvision_transforms()
    from torchvision import transforms

    t = transforms.Compose([transforms.Resize(8), transforms.CenterCrop(8), transforms.ToTensor(),
                            transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])])
    assert torch.allclose(t(Image.open(path).convert("RGB")), load_image(path)[0], atol=1e-6)
    with pytest.raises(ValueError, match="stand-in got a"):
        transforms.Resize(16)(Image.open(path))


def test_lpips_standin_calls_the_given_metric_in_official_argument_order():
    calls = []

    class Metric(torch.nn.Module):
        net, weight_files = "alex", "w.pth"

        def forward(self, x, y):
            calls.append((x, y))
            return (x - y).abs().mean((1, 2, 3))

    standins.install_lpips(Metric())
    import lpips

    a, b = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    loss = lpips.PerceptualLoss(model="net-lin", net="vgg")
    assert float(loss(a, b).sum()) == 1.0
    assert calls[-1][0] is b  # official: self.model.forward(target, pred)
    assert float(loss(a, b, normalize=True).sum()) == 2.0


def test_ganinvert_side_records_curve_at_every_k_steps():
    G = make_random_generator(seed=0)
    target = torch.zeros(1, 3, G.resolution, G.resolution)
    seen = []

    def measure(image):
        seen.append(image.shape)
        return {"psnr": 1.0, "lpips": 0.5}

    class NoLPIPS(torch.nn.Module):
        def forward(self, x, y):
            return (x - y).square().mean((1, 2, 3))

    cell = projector.run_ganinvert(G, target, steps=6, every=3, seed=0, lpips=NoLPIPS(), measure=measure)
    assert [row["step"] for row in cell["curve"]] == [3, 6]
    assert seen == [(1, 3, G.resolution, G.resolution)] * 2
    assert cell["seconds_per_step"] > 0


def _cell(side: str, image: str, psnr_final: float) -> dict:
    return {"curve": [{"step": 5, "psnr": psnr_final - 1, "lpips": 0.2}, {"step": 10, "psnr": psnr_final,
                                                                           "lpips": 0.1}],
            "seconds_per_step": 0.1 if side == "official" else 0.05, "image": image, "side": side, "steps": 10,
            "every": 5, "patches": ["CPU: device"], "argv": ["--ckpt", "g.pt", "x.png"], "method": "pti",
            "settings": {"pivot_lr": 0.1}}


def test_report_writes_json_md_png_with_required_keys(tmp_path):
    cells = tmp_path / "cells" / "projector"
    cells.mkdir(parents=True)
    for i, (off, ours) in enumerate(((20.0, 20.2), (22.0, 23.0), (24.0, 24.4))):
        (cells / f"im{i}.official.json").write_text(json.dumps(_cell("official", f"im{i}", off)))
        (cells / f"im{i}.ganinvert.json").write_text(json.dumps(_cell("ganinvert", f"im{i}", ours)))
    (cells / "im9.official.json").write_text(json.dumps(_cell("official", "im9", 99.0)))  # unpaired: ignored
    args = harness.parse_args(["projector", "--report-only", "--official-commit", "abc", "--cells",
                               str(tmp_path / "cells"), "--results", str(tmp_path / "out")])
    r = harness.report(args)
    for key in ("method", "official_repo", "official_commit", "images", "steps", "cpu_patches",
                "psnr_official_median", "psnr_ganinvert_median", "lpips_official_median", "lpips_ganinvert_median",
                "seconds_per_step_official", "seconds_per_step_ganinvert"):
        assert key in r, key
    assert r["images"] == ["im0", "im1", "im2"]
    assert r["psnr_official_median"] == 22.0 and r["psnr_ganinvert_median"] == 23.0
    assert r["within_tolerance"] is False  # 1.0 dB gap
    assert json.loads((tmp_path / "out" / "projector.json").read_text())["official_commit"] == "abc"
    assert "| median final PSNR (dB) | 22.00 | 23.00 | +1.00 |" in (tmp_path / "out" / "projector.md").read_text()
    assert (tmp_path / "out" / "projector.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_cells_needs_official_path():
    with pytest.raises(SystemExit):
        harness.parse_args(["projector"])


@pytest.mark.skipif(not os.environ.get("GANINVERT_PARITY_ROSINALITY"),
                    reason="set GANINVERT_PARITY_ROSINALITY to a rosinality/stylegan2-pytorch tree")
def test_official_rosinality_generator_on_standins_matches_ganinvert():
    tree = Path(os.environ["GANINVERT_PARITY_ROSINALITY"])
    G = make_random_generator(seed=5)
    standins.install_rosinality_ops(tree)
    model = standins.import_official_model(tree)
    official = standins.official_generator(model, G.config()).eval()
    missing, unexpected = official.load_state_dict(G.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("noises.") for k in missing)
    z = torch.randn(3, G.style_dim, generator=torch.Generator().manual_seed(0))
    noise = [torch.randn(3, *s[1:], generator=torch.Generator().manual_seed(i)) for i, s in enumerate(G.noise_shapes)]
    with torch.no_grad():
        w = G.mapping(z)
        assert torch.allclose(official.style(z), w, atol=1e-5)
        image, _ = official([w], input_is_latent=True, noise=noise)
        assert torch.allclose(image, G.synthesis(G.broadcast(w), noise), atol=1e-4)
