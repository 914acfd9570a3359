"""FFHQ face alignment acceptance figures (issue #18): detection, identity on aligned faces,
rotation recovery, paste-back exactness.

Parts, all on ../shared/data/images (read in place, never copied):

1. ``wild`` — every photo of faces_inthewild: faces found, the largest face's transform, seconds.
2. ``celeba`` — every celeba_hq image (already aligned the CelebA-HQ way): the FFHQ transform of
   the image relative to its own frame, with the criterion |rotation| <= 3 deg, |scale - 1| <= 10 %,
   |offset| <= 5 % of the side.
3. ``rotation`` — each face (celeba_hq, and the faces of faces_inthewild) aligned at SIZE px
   (crop A), rotated by +-20 deg about the centre (``affine_shift``, reflected borders: the
   ood-geometric suite's warp) and aligned again (crop C): the estimated rotation of the rotated
   image, the same minus the estimate on A itself (A's own landmark noise), and PSNR(C, A) over
   the whole crop, over the part the rotated image still shows (``overlap``: A's pixels that the
   rotation keeps inside the frame; the corners outside it exist in neither image) and over the
   inscribed disc. ``oracle`` re-aligns with the exact transform (the landmarks of the rotated
   frame) instead of detected landmarks: the floor that resampling and the missing corners set.
4. ``paste`` — each face photo of faces_inthewild: paste a drastic edit (the negated crop) back
   and count the pixels outside the mask that changed (must be 0).

Needs the ``align`` extra (dlib). Example:
    python bench/alignment.py --out bench/results
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ganinvert.io import atomic_write_bytes, atomic_write_json  # noqa: E402
from ganinvert.tasks import alignment as al  # noqa: E402
from ganinvert.tasks.geometry import affine_shift  # noqa: E402

IMAGES = ROOT.parent / "shared" / "data" / "images"
ROTATION = 20.0
LIMITS = {"rotation_deg": 3.0, "scale": 0.10, "offset": 0.05}


def frame_landmarks(side: int, angle: float = 0.0) -> np.ndarray:
    """Landmarks whose FFHQ quad is the frame of a side x side image turned by ``angle`` degrees
    counter-clockwise about its centre (eyes side/4 apart, mouth 0.234 side below them)."""
    c, d = (side - 1) / 2, 0.234375 * side
    eye_y = c - 0.1 * d
    key = np.array([[c - side / 8, eye_y], [c + side / 8, eye_y], [c - side / 10, eye_y + d],
                    [c + side / 10, eye_y + d]])
    t = math.radians(angle)
    rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    key = (key - c) @ rot.T + c
    lm = np.tile(key.mean(0), (68, 1))
    lm[36:42], lm[42:48], lm[48], lm[54] = key[0], key[1], key[2], key[3]
    return lm


def psnr(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> float:
    diff = ((a - b) / 2).square()
    diff = diff[:, where] if where is not None else diff
    return -10 * math.log10(max(float(diff.mean()), 1e-12))


def overlap(side: int, angle: float) -> torch.Tensor:
    """A's pixels that a rotation by ``angle`` about the centre keeps inside the frame."""
    c = (side - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(side) - c, torch.arange(side) - c, indexing="ij")
    t = math.radians(angle)
    x, y = math.cos(t) * xs + math.sin(t) * ys, -math.sin(t) * xs + math.cos(t) * ys
    return (x.abs() <= side / 2) & (y.abs() <= side / 2)


def disc(side: int) -> torch.Tensor:
    c = (side - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(side) - c, torch.arange(side) - c, indexing="ij")
    return xs.square() + ys.square() <= (side / 2) ** 2


def geometry_row(geometry: al.AlignmentGeometry) -> dict:
    return {"rotation_deg": round(geometry.rotation, 3), "scale": round(geometry.scale, 4),
            "offset": [round(v, 4) for v in geometry.offset], "offset_norm": round(math.hypot(*geometry.offset), 4)}


def part_wild() -> list[dict]:
    rows = []
    for path in sorted((IMAGES / "faces_inthewild").iterdir()):
        start = time.perf_counter()
        faces = al.detect_faces(path)
        row = {"image": path.name, "faces": len(faces), "crop": bool(faces)}
        if faces:
            row.update(geometry_row(al.alignment_geometry(path, faces[0])))
        row["seconds"] = round(time.perf_counter() - start, 2)
        rows.append(row)
    return rows


def part_celeba() -> list[dict]:
    rows = []
    for path in sorted((IMAGES / "celeba_hq").iterdir()):
        faces = al.detect_faces(path)
        row = {"image": path.name, "faces": len(faces)}
        if faces:
            row.update(geometry_row(al.alignment_geometry(path, faces[0])))
            row["single_pass"] = geometry_row(al.alignment_geometry(path, al.detect_faces(path, refine=False)[0]))
            row["ok"] = (abs(row["rotation_deg"]) <= LIMITS["rotation_deg"]
                         and abs(row["scale"] - 1) <= LIMITS["scale"] and row["offset_norm"] <= LIMITS["offset"])
        else:
            row["ok"] = False
        rows.append(row)
    return rows


def face_paths() -> list[Path]:
    paths = sorted((IMAGES / "celeba_hq").iterdir())
    return paths + [p for p in sorted((IMAGES / "faces_inthewild").iterdir()) if al.detect_faces(p)]


def part_rotation(size: int, refine: bool) -> list[dict]:
    rows = []
    shown = {angle: overlap(size, angle) for angle in (ROTATION, -ROTATION)}
    inner = disc(size)
    for path in face_paths():
        original = al.align_face(path, al.detect_faces(path, refine=refine)[0], size)
        own = al.alignment_geometry(original.crop, al.detect_faces(original.crop, refine=refine)[0]).rotation
        for angle in (ROTATION, -ROTATION):
            rotated = affine_shift(original.crop[None], angle=angle)
            row = {"image": path.name, "size": size, "applied_deg": angle, "rotation_of_A_deg": round(own, 3)}
            faces = al.detect_faces(rotated, refine=refine)
            if not faces:
                rows.append({**row, "found": False})
                continue
            again = al.align_face(rotated, faces[0], size)
            oracle = al.align_face(rotated, frame_landmarks(size, angle), size)
            rows.append({**row, "found": True, "estimated_deg": round(again.rotation, 3),
                         "error_deg": round(again.rotation - angle, 3),
                         "error_vs_A_deg": round(again.rotation - own - angle, 3),
                         "psnr_full": round(psnr(again.crop, original.crop), 2),
                         "psnr_overlap": round(psnr(again.crop, original.crop, shown[angle]), 2),
                         "psnr_disc": round(psnr(again.crop, original.crop, inner), 2),
                         "oracle_psnr_full": round(psnr(oracle.crop, original.crop), 2),
                         "oracle_psnr_overlap": round(psnr(oracle.crop, original.crop, shown[angle]), 2)})
    return rows


def part_paste() -> list[dict]:
    rows = []
    for path in sorted((IMAGES / "faces_inthewild").iterdir()):
        photo = al.as_rgb_image(path)
        faces = al.detect_faces(photo)
        if not faces:
            continue
        alignment = al.align_face(photo, faces[0], 64)
        pasted = np.asarray(al.paste_back(photo, -alignment.crop, alignment))
        before = np.asarray(photo)
        mask = al.paste_mask(alignment)
        changed = np.any(pasted != before, axis=-1)
        rows.append({"image": path.name, "pixels": int(mask.size), "outside_mask": int((mask == 0).sum()),
                     "changed_outside_mask": int(changed[mask == 0].sum()),
                     "changed_inside_mask": round(float(changed[mask > 0].mean()), 4)})
    return rows


def fmt_offset(row: dict) -> str:
    return f"({row['offset'][0]:+.3f}, {row['offset'][1]:+.3f})"


def summary_row(label: str, rows: list[dict]) -> str:
    found = [r for r in rows if r["found"]]
    if not found:
        return f"| {label} | 0/{len(rows)} | | | | | | |"

    def spread(key: str) -> str:
        return f"{min(r[key] for r in found):.2f} / {float(np.median([r[key] for r in found])):.2f}"
    return (f"| {label} | {len(found)}/{len(rows)} | {max(abs(r['error_deg']) for r in found):.2f} | "
            f"{max(abs(r['error_vs_A_deg']) for r in found):.2f} | {spread('psnr_full')} | {spread('psnr_overlap')} | "
            f"{sum(r['psnr_overlap'] < 25 for r in found)} | {min(r['oracle_psnr_full'] for r in found):.2f} |")


def markdown(results: dict) -> str:
    lines = ["# FFHQ face alignment (issue #18)", "",
             f"Produced by `python bench/alignment.py --out bench/results` ({results['environment']}). "
             "Transforms are relative to each image's own frame: rotation in degrees counter-clockwise, "
             "scale = quad side / image side, offset = (quad centre - image centre) / image side.", "",
             "## 1. faces_inthewild: detection", "",
             "| image | faces | crop | rotation (deg) | scale | offset | s |", "|---|---|---|---|---|---|---|"]
    for r in results["wild"]:
        geo = (f"{r['rotation_deg']:+.2f} | {r['scale']:.3f} | {fmt_offset(r)}" if r["crop"] else "- | - | -")
        lines.append(f"| {r['image']} | {r['faces']} | {'yes' if r['crop'] else 'no'} | {geo} | {r['seconds']} |")
    lines += ["", "## 2. celeba_hq: the FFHQ transform of CelebA-HQ-aligned faces", "",
              f"Criterion: |rotation| <= {LIMITS['rotation_deg']} deg, |scale - 1| <= {LIMITS['scale']:.0%}, "
              f"|offset| <= {LIMITS['offset']:.0%} of the side.", "",
              "| image | rotation (deg) | scale | offset | abs offset | within | single pass: rotation, scale, "
              "abs offset |", "|---|---|---|---|---|---|---|"]
    for r in results["celeba"]:
        if r["faces"]:
            one = r["single_pass"]
            lines.append(f"| {r['image']} | {r['rotation_deg']:+.2f} | {r['scale']:.3f} | {fmt_offset(r)} | "
                         f"{r['offset_norm']:.3f} | {'yes' if r['ok'] else '**no**'} | {one['rotation_deg']:+.2f}, "
                         f"{one['scale']:.3f}, {one['offset_norm']:.3f} |")
        else:
            lines.append(f"| {r['image']} | no face | | | | **no** | |")
    for size, rows in results["rotation"].items():
        lines += ["", f"## 3. Rotation by +-{ROTATION:g} deg and re-alignment at {size} px (refined landmarks)", "",
                  "| image | applied | estimated | error | error vs A | PSNR full | PSNR overlap | PSNR disc | "
                  "oracle full | oracle overlap |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if not r["found"]:
                lines.append(f"| {r['image']} | {r['applied_deg']:+g} | no face | | | | | | | |")
                continue
            lines.append(f"| {r['image']} | {r['applied_deg']:+g} | {r['estimated_deg']:+.2f} | "
                         f"{r['error_deg']:+.2f} | {r['error_vs_A_deg']:+.2f} | {r['psnr_full']:.2f} | "
                         f"{r['psnr_overlap']:.2f} | {r['psnr_disc']:.2f} | {r['oracle_psnr_full']:.2f} | "
                         f"{r['oracle_psnr_overlap']:.2f} |")
        lines += ["", "| landmarks | found | max abs error (deg) | vs A | PSNR full min / median | "
                  "PSNR overlap min / median | overlap < 25 dB | oracle full min |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, mode_rows in (("refined (default)", rows),
                                 ("single pass (FFHQ)", results["rotation_single_pass"][size])):
            lines.append(summary_row(label, mode_rows))
    lines += ["", "## 4. Paste-back exactness (a drastic edit: the negated 64 px crop)", "",
              "| image | pixels | outside mask | changed outside mask | changed inside mask |", "|---|---|---|---|---|"]
    for r in results["paste"]:
        lines.append(f"| {r['image']} | {r['pixels']} | {r['outside_mask']} | {r['changed_outside_mask']} | "
                     f"{r['changed_inside_mask']:.1%} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--sizes", default="256,64", help="Crop sides of the rotation part.")
    args = parser.parse_args()
    if not IMAGES.is_dir():
        print(f"{IMAGES} is absent (the ../shared data folder)", file=sys.stderr)
        return 2
    al.require_detection()
    torch.set_num_threads(1)
    import dlib
    results = {"environment": f"dlib {dlib.__version__}, torch {torch.__version__}, CPU"}
    for name, part in (("wild", part_wild), ("celeba", part_celeba), ("paste", part_paste)):
        print(f"{name} ...", file=sys.stderr)
        results[name] = part()
    results["rotation"], results["rotation_single_pass"] = {}, {}
    for size in (int(s) for s in args.sizes.split(",")):
        print(f"rotation {size} ...", file=sys.stderr)
        results["rotation"][str(size)] = part_rotation(size, refine=True)
        results["rotation_single_pass"][str(size)] = part_rotation(size, refine=False)
    atomic_write_json(args.out / "alignment.json", results)
    atomic_write_bytes(args.out / "alignment.md", markdown(results).encode())
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
