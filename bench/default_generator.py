"""Acceptance figures of a face generator: MTCNN face-detection rate and pairwise LPIPS diversity.

usage: python bench/default_generator.py {student CHECKPOINT | teacher} OUTDIR

Writes 256 samples (z from ``torch.Generator().manual_seed(0)``, truncation 1.0, stored noise),
upsampled to 160 px (bicubic), as PNGs under OUTDIR/faces. It runs
``../shared/tools/face_detection_rate.py`` on them (needs ``pip install --no-deps
facenet-pytorch==2.6.0``) and computes the mean LPIPS (AlexNet, ``../shared/weights``) over all
32 640 pairs at 64 px. The figures go in ``ganinvert/assets/MODEL_CARD.md``.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from ganinvert.io import atomic_write_json
from ganinvert.metrics import LPIPS
from ganinvert.models import load_generator

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
N = 256


def samples(which: str, checkpoint: str | None) -> torch.Tensor:
    with torch.no_grad():
        if which == "teacher":
            from ganinvert.training.teacher import load_teacher
            teacher = load_teacher("teacher:gan-face-generate")
            z = torch.randn(N, teacher.latent_dim, generator=torch.Generator().manual_seed(0))
            return torch.cat([teacher(c) for c in z.split(64)]).clamp(-1, 1)
        G = load_generator(checkpoint)
        z = torch.randn(N, G.style_dim, generator=torch.Generator().manual_seed(0))
        return torch.cat([G(c) for c in z.split(64)]).clamp(-1, 1)


def main(argv: list[str]) -> None:
    which, out = argv[0], Path(argv[-1])
    images = samples(which, argv[1] if which != "teacher" else None)
    faces = out / "faces"
    faces.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        arr = ((img + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(arr).resize((160, 160), Image.BICUBIC).save(faces / f"{i:03d}.png")
    detection = subprocess.run([sys.executable, str(SHARED / "tools" / "face_detection_rate.py"), str(faces), "--json"],
                               capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    started = time.time()
    lpips = LPIPS(weights=SHARED / "weights" / "lpips_alex.pth")
    pairs = torch.tensor(list(itertools.combinations(range(N), 2)))
    with torch.no_grad():
        d = torch.cat([lpips(images[p[:, 0]], images[p[:, 1]]) for p in pairs.split(512)])
    result = {"which": which, "face_detection": json.loads(detection), "lpips_pairs": len(d),
              "lpips_mean": d.mean().item(), "lpips_std": d.std().item(), "lpips_seconds": time.time() - started}
    atomic_write_json(out / "result.json", result)
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    main(sys.argv[1:])
