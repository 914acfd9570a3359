"""HyperInverter acceptance figures (issue #8, criterion 1): PSNR, LPIPS and seconds per image of
E1 alone (``hyperinverter-e1``), HyperInverter (``hyperinverter``) and ``w+`` optimisation at its
default steps, on held-back samples of the default generator and on ../shared celeba_hq.

Held-back samples: seeds 10_000.. (one ``torch.Generator`` per sample: z, then fresh noise maps),
disjoint from training, whose draws all come from the run's generator seeded with 0.

Timing: each encoder method inverts every image alone (batch 1) through the real engine
(``ganinvert.inversion.invert``) with its network already loaded; the median of those calls is
reported. ``w+`` (1000 steps, ``methods/latent.py``; MSE + LPIPS) is run on a subset (``--wplus``
images per set, in batches of ``--wplus-batch``; the engine inverts the images of a batch
independently) and its seconds per image is the batch wall time divided by the batch size. Its
PSNR/LPIPS are over that subset, and the encoders' figures on the same subset are reported beside
them. Because the w+ subset may run under another machine load than the encoders, the encoders'
part also times 50 w+ steps on one image right after them and extrapolates to the default steps
("w+ (timing only)"); both speed ratios are reported. Parts can run separately (``--part``); results merge into OUT/hyperinverter.json, and
OUT/hyperinverter.md is rewritten from it.

Example:
    python bench/hyperinverter.py --out bench/results --threads 1 --part wplus
    python bench/hyperinverter.py --out bench/results --threads 1 --part encoders
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ganinvert.inversion import invert, make_method  # noqa: E402
from ganinvert.io import atomic_write_bytes, atomic_write_json, load_image  # noqa: E402
from ganinvert.metrics import LPIPS, psnr  # noqa: E402
from ganinvert.models import load_generator  # noqa: E402
from ganinvert.training.trainer import random_noise  # noqa: E402

SHARED = ROOT / ".." / "shared"
HELD_OUT_SEEDS = range(10_000, 10_032)


@torch.no_grad()
def generated_set(G) -> torch.Tensor:
    images = []
    for seed in HELD_OUT_SEEDS:
        g = torch.Generator().manual_seed(seed)
        w = G.mapping(torch.randn(1, G.style_dim, generator=g))
        images.append(G.synthesis(G.broadcast(w), random_noise(G, 1, g, G.w_avg.device)).clamp(-1, 1))
    return torch.cat(images)


def celeba_set(G) -> torch.Tensor:
    folder = SHARED / "data" / "images" / "celeba_hq"
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    return torch.cat([load_image(p, G.resolution) for p in paths])


def metrics(G, result, target: torch.Tensor, lpips: LPIPS) -> dict[str, list[float]]:
    with torch.no_grad():
        x = result.render(G).clamp(-1, 1)
        return {"psnr": psnr(x, target).tolist(), "lpips": lpips(x, target).tolist()}


def run_encoder(G, name: str, images: torch.Tensor, lpips: LPIPS) -> dict:
    method = make_method(name)
    method.network(G)  # load once, outside the timing
    invert(G, images[:1], method, progress=False)  # warm-up
    per_image, psnrs, lpipss = [], [], []
    for i in range(images.shape[0]):
        t0 = time.perf_counter()
        result = invert(G, images[i:i + 1], method, progress=False)
        per_image.append(time.perf_counter() - t0)
        m = metrics(G, result, images[i:i + 1], lpips)
        psnrs += m["psnr"]
        lpipss += m["lpips"]
    return {"psnr": psnrs, "lpips": lpipss, "seconds_per_image": statistics.median(per_image)}


def run_wplus(G, images: torch.Tensor, lpips: LPIPS, batch: int) -> dict:
    psnrs, lpipss, seconds = [], [], 0.0
    for start in range(0, images.shape[0], batch):
        chunk = images[start:start + batch]
        t0 = time.perf_counter()
        result = invert(G, chunk, "w+", lpips=lpips, progress=False)
        seconds += time.perf_counter() - t0
        m = metrics(G, result, chunk, lpips)
        psnrs += m["psnr"]
        lpipss += m["lpips"]
        print(f"  w+ {start + len(chunk)}/{images.shape[0]}: {seconds:.0f} s", file=sys.stderr)
    return {"psnr": psnrs, "lpips": lpipss, "seconds_per_image": seconds / images.shape[0],
            "steps": make_method("w+").settings.steps}


def wplus_step_seconds(G, image: torch.Tensor, lpips: LPIPS, steps: int = 50) -> float:
    """Seconds per w+ step on one image (a short run timed next to the encoders, same load)."""
    t0 = time.perf_counter()
    invert(G, image, "w+", settings={"steps": steps}, lpips=lpips, progress=False)
    return (time.perf_counter() - t0) / steps


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def markdown(report: dict) -> str:
    lines = ["# HyperInverter vs E1 alone vs w+ optimisation (default 64 px generator)", "",
             f"Threads: {report.get('threads')}; device: cpu. Generated: seeds {HELD_OUT_SEEDS.start}.."
             f"{HELD_OUT_SEEDS.stop - 1}; celeba_hq: ../shared/data/images/celeba_hq resized to 64 px.", "",
             "| set | method | images | PSNR (dB) | LPIPS | s / image |", "|---|---|---|---|---|---|"]
    for set_name, methods in report.get("sets", {}).items():
        for method, r in methods.items():
            if "psnr" not in r:  # timing-only row
                lines.append(f"| {set_name} | {method}, {r['steps']} steps extrapolated from 50 | | | | "
                             f"{r['seconds_per_image']:.2f} |")
                continue
            lines.append(f"| {set_name} | {method} | {len(r['psnr'])} | {mean(r['psnr']):.2f} | "
                         f"{mean(r['lpips']):.4f} | {r['seconds_per_image']:.4f} |")
        hyper = methods.get("hyperinverter")
        if hyper and "w+" in methods:
            n = len(methods["w+"]["psnr"])
            for name in ("hyperinverter-e1", "hyperinverter"):
                r = methods[name]
                lines.append(f"| {set_name} | {name} (the {n} images of w+) | {n} | {mean(r['psnr'][:n]):.2f} | "
                             f"{mean(r['lpips'][:n]):.4f} | |")
        for name in ("w+", "w+ (timing only)"):
            if hyper and name in methods:
                lines.append(f"| {set_name} | speed ratio {name} / hyperinverter | | | | "
                             f"{methods[name]['seconds_per_image'] / hyper['seconds_per_image']:.0f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--part", choices=["all", "encoders", "wplus"], default="all")
    parser.add_argument("--wplus", type=int, default=4, help="images per set optimised with w+")
    parser.add_argument("--wplus-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lpips-weights", default=str(SHARED / "weights" / "lpips_alex.pth"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    G = load_generator("default")
    lpips = LPIPS(weights=args.lpips_weights)
    sets = {"generated": generated_set(G), "celeba_hq": celeba_set(G)}
    out_json = args.out / "hyperinverter.json"
    report = json.loads(out_json.read_text()) if out_json.is_file() else {}
    report["threads"] = args.threads
    report.setdefault("sets", {})
    for set_name, images in sets.items():
        entry = report["sets"].setdefault(set_name, {})
        if args.part in ("all", "encoders"):
            for name in ("hyperinverter-e1", "hyperinverter"):
                print(f"{set_name}: {name}", file=sys.stderr)
                entry[name] = run_encoder(G, name, images, lpips)
            # w+ at its default steps, extrapolated from 50 steps timed under the encoders' load.
            steps = make_method("w+").settings.steps
            entry["w+ (timing only)"] = {"seconds_per_image": steps * wplus_step_seconds(G, images[:1], lpips),
                                         "steps": steps}
        if args.part in ("all", "wplus"):
            print(f"{set_name}: w+", file=sys.stderr)
            entry["w+"] = run_wplus(G, images[:args.wplus], lpips, args.wplus_batch)
        report["sets"][set_name] = {k: entry[k] for k in ("hyperinverter-e1", "hyperinverter", "w+", "w+ (timing only)")
                                    if k in entry}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_json, report)
    table = markdown(report)
    atomic_write_bytes(args.out / "hyperinverter.md", table.encode())
    print(table)


if __name__ == "__main__":
    main()
