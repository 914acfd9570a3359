"""Shared test fixtures: the ../shared data folder (skipping when absent) and tiny seeded generators.

Tests never copy anything from ../shared; they read it in place and skip with a reason when a
fresh clone does not have it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Mapping

import pytest
import torch

from ganinvert.inversion.methods.base import InversionContext
from ganinvert.models.stylegan2 import StyleGAN2Generator

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"

# The test tensors are tiny: one intra-op thread avoids thread-pool oversubscription (which made
# each step ~100x slower on the shared 2-core machines) and costs nothing on small convolutions.
torch.set_num_threads(1)


def shared_file(*parts: str) -> Path:
    """A file under ../shared, or skip the calling test when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (the ../shared data folder is not in a fresh clone)")
    return path


def make_random_generator(resolution: int = 32, style_dim: int = 32, n_mlp: int = 2,
                          channels: Mapping[int, int] | None = None, seed: int = 0) -> StyleGAN2Generator:
    """A frozen generator whose every parameter and buffer is drawn from ``seed``.

    Unlike a freshly built (rosinality-initialised) generator, biases and noise strengths are
    non-zero, so every input (noise maps included) affects the image.
    """
    channels = dict(channels) if channels is not None else {4: 32, 8: 32, 16: 16, 32: 16}
    G = StyleGAN2Generator(resolution, style_dim=style_dim, n_mlp=n_mlp, channels=channels)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise.weight"):
                p.copy_(0.1 + 0.2 * torch.rand(p.shape, generator=g))
            elif name.endswith("modulation.bias"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))  # styles near 1, as trained nets have
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.startswith("style."):
                # Mapping weights are stored divided by lr_mul (0.01), as rosinality initialises them;
                # unscaled ones would make w nearly constant and its gradients ill-conditioned.
                p.copy_(torch.randn(p.shape, generator=g) / G.style[1].lr_mul)
            else:
                p.copy_(torch.randn(p.shape, generator=g))
        for name, b in G.named_buffers():
            if name.startswith("noises."):
                b.copy_(torch.randn(b.shape, generator=g))
        G.w_avg.copy_(G.estimate_w_avg(n=1024, seed=seed))
    G.requires_grad_(False)
    return G.eval()


def seeded_generator(resolution: int = 32, style_dim: int = 32, channels: Mapping[int, int] | None = None,
                     seed: int = 0) -> StyleGAN2Generator:
    """A frozen generator whose weights, noise buffers and constant are N(0, 1) draws from ``seed``
    (mapping weights rescaled by 1 / lr_mul, noise strengths N(0, 0.1^2), biases left at zero);
    the generator of the PTI, SAM and task tests."""
    channels = dict(channels) if channels is not None else {4: 32, 8: 32, 16: 16, 32: 16}
    G = StyleGAN2Generator(resolution, style_dim=style_dim, n_mlp=2, channels=channels)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(G.named_parameters()) + list(G.named_buffers()):
            if name.endswith("noise.weight"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif name.startswith("style.") and name.endswith("weight"):
                t.copy_(torch.randn(t.shape, generator=g) / G.style[1].lr_mul)
            elif name.endswith("weight") or name.startswith("noises.") or name == "input.input":
                t.copy_(torch.randn(t.shape, generator=g))
        G.w_avg.copy_(G.estimate_w_avg())
    return G.requires_grad_(False).eval()


def scaled_style_generator(seed: int = 0, style_dim: int = 32) -> StyleGAN2Generator:
    """A 32 px generator of the ILO and feature-method tests: weights, noise buffers and constant
    N(0, 1) from ``seed``, mapping weights x100 (undoing lr_mul), ToRGB weights x0.25 so images stay
    near [-1, 1], noise strengths 0.1 (the noise must matter), biases zero."""
    G = StyleGAN2Generator(32, style_dim=style_dim, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 16})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*G.named_parameters(), *G.named_buffers()]:
            if name.endswith("noise.weight"):
                t.fill_(0.1)
            elif name.startswith("noises.") or name == "input.input" or (name.endswith("weight") and t.ndim > 1):
                scale = 100.0 if name.startswith("style.") else 0.25 if name.startswith("to_rgb") else 1.0
                t.copy_(torch.randn(t.shape, generator=g) * scale)
    G.requires_grad_(False).eval()
    G.w_avg.copy_(G.estimate_w_avg())
    return G


def in_domain_images(G: StyleGAN2Generator, n: int = 1, seed: int = 1) -> torch.Tensor:
    """``n`` renders of G from z drawn with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return G(torch.randn(n, G.style_dim, generator=g).to(G.w_avg))


def generated_images(G: StyleGAN2Generator, n: int = 2, seed: int = 0) -> torch.Tensor:
    """``n`` renders of G from z drawn with ``seed``, clamped to the image range [-1, 1]."""
    return in_domain_images(G, n, seed).clamp(-1, 1)


def assert_resume_matches_uninterrupted(G: StyleGAN2Generator, target: torch.Tensor, method: str,
                                        settings: dict, stop_at: int, checkpoint: Path) -> None:
    """Kill ``invert`` after step ``stop_at`` (checkpointing every ``stop_at`` steps), resume it, and
    check that it continues at the next step and ends with the uninterrupted run's tensors."""
    from ganinvert.inversion import invert

    class Interrupt(Exception):
        pass

    full = invert(G, target, method, settings=settings, progress=False)

    def stop(progress):
        if progress.step == stop_at + 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        invert(G, target, method, settings=settings, checkpoint_path=checkpoint, checkpoint_every=stop_at,
               callback=stop, progress=False)
    assert checkpoint.is_file()
    steps_run: list[int] = []
    resumed = invert(G, target, method, settings=settings, checkpoint_path=checkpoint, checkpoint_every=stop_at,
                     resume=True, progress=False, callback=lambda progress: steps_run.append(progress.step))
    assert steps_run[0] == stop_at + 1 and len(resumed.history["loss"]) == len(full.history["loss"])
    assert resumed.params.keys() == full.params.keys()
    for name, value in full.params.items():
        torch.testing.assert_close(resumed.params[name], value, atol=1e-6, rtol=0, msg=name)


def same_safetensors(a: Path, b: Path) -> bool:
    """Whether two .safetensors files hold the same tensor names and bit-identical values."""
    from safetensors.torch import load_file
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def assert_training_resumes_bit_identically(monkeypatch: pytest.MonkeyPatch, trainer: type,
                                            train: Callable[[str, bool], Path]) -> None:
    """Kill a ``train_inverter`` run at step 3 (after its step-2 checkpoint), resume it, and check
    that it exports the uninterrupted run's network bit for bit.

    ``train(run_name, resume)`` runs 4 steps of ``trainer`` with a checkpoint every 2 steps in a
    directory named ``run_name`` and returns the exported network's path.
    """
    whole = train("whole", False)
    real_step = trainer.train_step

    def killed_at_three(self, step):
        if step == 3:
            raise KeyboardInterrupt  # the process dies after the checkpoint of step 2
        return real_step(self, step)

    monkeypatch.setattr(trainer, "train_step", killed_at_three)
    with pytest.raises(KeyboardInterrupt):
        train("cut", False)
    monkeypatch.setattr(trainer, "train_step", real_step)
    assert same_safetensors(whole, train("cut", True))


def state_hash(module: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names, shapes and bytes), to prove nothing changed."""
    digest = hashlib.sha256()
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def psnr_db(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR of unclamped [-1, 1] images (mapped to [0, 1], data range 1)."""
    mse = ((x - y) / 2).square().reshape(x.shape[0], -1).mean(1)
    return -10 * torch.log10(mse)


@pytest.fixture(scope="session")
def shared() -> Callable[..., Path]:
    """``shared("reference", "x.pt")``: a path under ../shared, skipping the test when absent."""
    return shared_file


@pytest.fixture(scope="session")
def random_generator() -> Callable[..., StyleGAN2Generator]:
    """Factory of tiny seeded generators: ``random_generator(resolution=32, seed=0, ...)``."""
    return make_random_generator


@pytest.fixture(scope="session")
def reference_generator_32() -> StyleGAN2Generator:
    """The 32 px rosinality reference generator from ../shared (style_dim 64, 8 ws); shared by the
    session, so tests must not modify it (the engine tests check that nothing does)."""
    from ganinvert.models.loading import load_generator
    return load_generator(shared_file("reference", "rosinality_s32_sd64.pt"))


@pytest.fixture(scope="session")
def hash_state() -> Callable[[torch.nn.Module], str]:
    return state_hash


@pytest.fixture(scope="session")
def psnr() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return psnr_db


def method_context(G: StyleGAN2Generator, images: torch.Tensor | None, rngs, **fields) -> InversionContext:
    """The context the engine hands a method's hooks, for calling them directly: ``images`` are both
    the picture and the measurement (no forward operator); ``fields`` set stage_index, step, lpips…"""
    return InversionContext(G=G, rngs=list(rngs), measurement=images, image=images, **fields)
