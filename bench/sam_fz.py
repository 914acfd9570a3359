"""SAM predictor and F/Z+ encoder acceptance figures (issue #8, criteria 2 and 3).

Held-back images: (1) samples of the default generator from seed ``--seed`` (10_000, while the
training set of ``train-inverter sam-predictor`` is drawn from seed 0), each rotated / scaled /
translated with the training distribution of shifts (``draw_training_images`` with no teacher
images), and (2) ../shared celeba_hq at 64 px (centre crop, never used for training).

Parts (each cached as OUT/<part>.json; OUT/sam_fz.json and OUT/sam_fz.md are rebuilt from them):

* ``truemaps`` — the probe maps of ``maps`` alone (cached; no predictor needed).
* ``maps`` — criterion 2a: the true per-space error maps come from fresh probe inversions
  (``sam-opt``'s, ``--error-steps`` each, as in training) and are compared with the predictor's
  maps by the Pearson correlation per image (over its pixels, then averaged over the images) per
  space, their mean ("overall") and over all spaces of an image together ("pooled", inflated by
  the spaces' different mean errors); at the predictor's 16 px and upsampled to 64 px.
* ``sam`` — criterion 2b: PSNR of ``sam-opt`` with the predicted label map (``predictor_path``
  default; ``--steps`` main steps) against ``w+`` (its default settings) at the same steps.
* ``fz`` — criterion 3: per-step PSNR of ``fz+`` started from the encoder (``--fz-encoder``)
  against ``fz+`` without an encoder (``encoder_path=None``: F from the w_avg features and z+ at a
  random point of the sphere, the random-initialised fz+), ``--fz-steps`` each (fz+'s 1200 by
  default); the step at which the encoder run first reaches the other run's final PSNR, and its
  ratio to ``--fz-steps``; and the same encoder run with BDInvert's base-code pull
  (``basecode_weight``). Both runs draw the same z+ (same seeds).

Example:
    python bench/sam_fz.py --out bench/results/sam_fz --threads 1 --part maps
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ganinvert.inversion import invert  # noqa: E402
from ganinvert.io import atomic_torch_save, atomic_write_bytes, atomic_write_json, list_images, load_image  # noqa: E402
from ganinvert.metrics import LPIPS, psnr  # noqa: E402
from ganinvert.models import load_generator  # noqa: E402
from ganinvert.inversion.methods.sam import sam_feature_blocks  # noqa: E402
from ganinvert.models.sam_predictor import load_predictor  # noqa: E402
from ganinvert.training.inverters.sam_predictor import (SamPredictorSettings, draw_training_images,  # noqa: E402
                                                        true_error_maps)

SHARED = ROOT / ".." / "shared"
PARTS = ("maps", "sam", "fz")
#: Runs before "maps" (no predictor needed), e.g. while the predictor trains.
PRE_PARTS = ("truemaps",)


def held_back_sets(G, n_generated: int, n_celeba: int, seed: int) -> dict[str, torch.Tensor]:
    settings = SamPredictorSettings(images=n_generated, teacher_images=0)
    sets = {"generated_shifted": draw_training_images(G, settings, seed)}
    folder = SHARED / "data" / "images" / "celeba_hq"
    if n_celeba and folder.is_dir():
        paths = list_images([folder])[:n_celeba]
        sets["celeba_hq"] = torch.cat([load_image(p, G.resolution) for p in paths]).clamp(-1, 1)
    return sets


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Pearson correlation of (N, D) tensors."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def cached_true_maps(G, name: str, images: torch.Tensor, lpips, args) -> torch.Tensor:
    """Fresh probe-inversion error maps of a held-back set, cached in OUT/true_maps_<set>.pt."""
    path = args.out / f"true_maps_{name}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    true = true_error_maps(G, images, args.error_steps, "lpips", lpips, list(range(len(images))))
    atomic_torch_save(true, path)
    return true


def part_true_maps(G, sets, lpips, args) -> dict:
    return {name: list(cached_true_maps(G, name, images, lpips, args).shape) for name, images in sets.items()}


def part_maps(G, sets, lpips, args) -> dict:
    predictor = load_predictor("default", G)
    out = {"spaces": predictor.spaces, "error_steps": args.error_steps}
    for name, images in sets.items():
        true = cached_true_maps(G, name, images, lpips, args)
        small = predictor.maps(images)
        side = small.shape[-1]
        big = F.interpolate(small, size=true.shape[-2:], mode="bilinear", align_corners=False)
        pooled = F.adaptive_avg_pool2d(true, side)
        record = {}
        for label, p, t in (("16px", small, pooled), ("64px", big, true)):
            per_space = {s: float(pearson(p[:, k].flatten(1), t[:, k].flatten(1)).mean())
                         for k, s in enumerate(predictor.spaces)}
            # "overall": the mean of the per-space figures; "pooled": all spaces of an image as one
            # vector (inflated by the spaces' different mean errors, shown for reference only).
            record[label] = {"per_space": per_space, "overall": sum(per_space.values()) / len(per_space),
                             "pooled": float(pearson(p.flatten(1), t.flatten(1)).mean())}
        record["true_mean"] = {s: float(true[:, k].mean()) for k, s in enumerate(predictor.spaces)}
        record["predicted_mean"] = {s: float(small[:, k].mean()) for k, s in enumerate(predictor.spaces)}
        out[name] = record
        print(name, json.dumps(record), flush=True)
    return out


def _run(G, images, method, settings, lpips):
    start = time.perf_counter()
    result = invert(G, images, method, settings=settings, lpips=lpips, progress=False)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        rendered = result.render(G).clamp(-1, 1)
    return result, float(psnr(rendered, images).mean()), seconds / len(images)


def part_sam(G, sets, lpips, args) -> dict:
    out = {"steps": args.steps}
    for name, images in sets.items():
        _, w_psnr, w_s = _run(G, images, "w+", {"steps": args.steps}, lpips)
        out[name] = {"w_plus_psnr": w_psnr, "w_plus_s_per_image": w_s}
        for tau in args.taus:
            settings = {"steps": args.steps} if tau is None else {"steps": args.steps, "tau": tau}
            sam, sam_psnr, sam_s = _run(G, images, "sam-opt", settings, lpips)
            labels = sam.params["labels"]
            fractions = {str(k): float((labels == k).float().mean()) for k in range(len(sam_feature_blocks(G)) + 1)}
            out[name][f"tau={'default' if tau is None else tau}"] = {"sam_opt_psnr": sam_psnr, "sam_opt_s_per_image": sam_s,
                                       "label_fractions": fractions}
        print(name, json.dumps(out[name]), flush=True)
    return out


def _first_reaching(curve: list[float], level: float) -> int | None:
    return next((i + 1 for i, v in enumerate(curve) if v >= level), None)


#: Steps whose PSNR the fz part reports (those within ``--fz-steps``).
FZ_REPORTED_STEPS = (1, 10, 25, 50, 100, 200, 300, 400, 600, 900, 1200)
#: Step budgets whose ratio (encoder steps to reach the no-encoder run's PSNR at the budget) is reported.
FZ_BUDGETS = (100, 300, 600, 1200)


def part_fz(G, sets, lpips, args) -> dict:
    out = {"steps": args.fz_steps}
    for name, images in sets.items():
        encoder = {"steps": args.fz_steps, "encoder_path": args.fz_encoder}
        runs = {"encoder": encoder,
                "w_avg": {"steps": args.fz_steps, "encoder_path": None},
                "encoder_basecode10": {**encoder, "basecode_weight": 10.0}}
        record = {}
        curves = {}
        for label, settings in runs.items():
            result, final, seconds = _run(G, images, "fz+", settings, lpips)
            curves[label] = result.history["psnr"]
            record[label] = {"final_psnr": final, "s_per_image": seconds,
                             "psnr_at": {str(s): curves[label][s - 1] for s in FZ_REPORTED_STEPS
                                         if s <= args.fz_steps}}
        reach = _first_reaching(curves["encoder"], curves["w_avg"][-1])
        record["encoder_step_reaching_w_avg_final"] = reach
        record["ratio"] = None if reach is None else reach / args.fz_steps
        # fz+'s learning rate is constant, so a shorter run is a prefix of this one: the same ratio
        # for smaller step budgets comes from the same curves.
        record["ratio_by_budget"] = {}
        for budget in (b for b in FZ_BUDGETS if b <= args.fz_steps):
            step = _first_reaching(curves["encoder"][:budget], curves["w_avg"][budget - 1])
            record["ratio_by_budget"][str(budget)] = None if step is None else step / budget
        out[name] = record
        print(name, json.dumps(record), flush=True)
    return out


def _ratio(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.3f}"


def markdown(results: dict) -> str:
    lines = ["# SAM predictor and F/Z+ encoder (issue #8, criteria 2 and 3)", "",
             "Generated by `bench/sam_fz.py`; figures are means over the images of each set.", ""]
    if "maps" in results:
        m = results["maps"]
        lines += [f"## Predicted vs true LPIPS error maps (Pearson; true maps: {m['error_steps']}-step probes)", "",
                  "| set | scale | " + " | ".join(m["spaces"]) + " | overall (mean) | pooled |",
                  "|---|---|" + "---|" * (len(m["spaces"]) + 2)]
        for name, rec in m.items():
            if isinstance(rec, dict) and "16px" in rec:
                for scale in ("16px", "64px"):
                    r = rec[scale]
                    lines.append(f"| {name} | {scale} | " + " | ".join(f"{r['per_space'][s]:.3f}" for s in m["spaces"])
                                 + f" | {r['overall']:.3f} | {r['pooled']:.3f} |")
        lines.append("")
    if "sam" in results:
        s = results["sam"]
        lines += [f"## sam-opt (predicted maps) vs w+ at {s['steps']} steps", "",
                  "| set | tau | sam-opt PSNR | w+ PSNR | label fractions (0 = W+, k = k-th feature block) |",
                  "|---|---|---|---|---|"]
        for name, rec in s.items():
            if not isinstance(rec, dict) or "w_plus_psnr" not in rec:
                continue
            for key, run in rec.items():
                if key.startswith("tau="):
                    lines.append(f"| {name} | {key[4:]} | {run['sam_opt_psnr']:.2f} | {rec['w_plus_psnr']:.2f} | "
                                 f"{', '.join(f'{k}: {v:.2f}' for k, v in run['label_fractions'].items())} |")
        lines.append("")
    if "fz" in results:
        f = results["fz"]
        lines += [f"## fz+ encoder-initialised vs without encoder (w_avg features, random z+; {f['steps']} steps)", "",
                  "| set | run | final PSNR | PSNR at steps |", "|---|---|---|---|"]
        for name, rec in f.items():
            if not isinstance(rec, dict) or "encoder" not in rec:
                continue
            for run in ("encoder", "w_avg", "encoder_basecode10"):
                at = ", ".join(f"{k}: {v:.2f}" for k, v in rec[run]["psnr_at"].items())
                lines.append(f"| {name} | {run} | {rec[run]['final_psnr']:.2f} | {at} |")
            lines.append(f"| {name} | encoder reaches w_avg's final PSNR at step | "
                         f"{rec['encoder_step_reaching_w_avg_final']} | ratio {_ratio(rec['ratio'])} |")
            budgets = ", ".join(f"{b}: {_ratio(r)}" for b, r in rec.get("ratio_by_budget", {}).items())
            lines.append(f"| {name} | ratio at smaller budgets (steps: ratio) | | {budgets} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--part", choices=PRE_PARTS + PARTS + ("all",), default="all")
    parser.add_argument("--generated", type=int, default=8)
    parser.add_argument("--celeba", type=int, default=8)
    parser.add_argument("--seed", type=int, default=10_000)
    parser.add_argument("--error-steps", type=int, default=50)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--fz-steps", type=int, default=1200, help="fz+ steps per run (its preset's 1200)")
    parser.add_argument("--fz-encoder", default="default", help="base-code encoder file (default: the bundled one)")
    parser.add_argument("--taus", type=lambda text: [None if t == "default" else float(t) for t in text.split(",")],
                        default=[None], help="sam-opt thresholds to run, comma-separated; 'default' = the method's "
                                             "default (the predictor's calibrated threshold)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lpips-weights", default=str(SHARED / "weights" / "lpips_alex.pth"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    G = load_generator("default")
    lpips = LPIPS(weights=args.lpips_weights)
    sets = held_back_sets(G, args.generated, args.celeba, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    runners = {"truemaps": part_true_maps, "maps": part_maps, "sam": part_sam, "fz": part_fz}
    for part in PARTS if args.part == "all" else (args.part,):
        result = runners[part](G, sets, lpips, args)
        if part in PRE_PARTS:
            continue
        result["sets"] = {k: len(v) for k, v in sets.items()}
        atomic_write_json(args.out / f"{part}.json", result)
    results = {p: json.loads((args.out / f"{p}.json").read_text()) for p in PARTS if (args.out / f"{p}.json").is_file()}
    atomic_write_json(args.out / "sam_fz.json", results)
    atomic_write_bytes(args.out / "sam_fz.md", markdown(results).encode())


if __name__ == "__main__":
    main()
