"""The README's paste-back strip: align a photo, invert the crop, edit it, paste the edits back.

Steps: FFHQ-align the largest face of ``--photo`` at the bundled generator's 64 px; invert the
crop with ``w+`` ({"lambda_lpips": 0, "steps": 300}, seed 0: the ``--no-lpips`` settings); move
the result along the generator's principal direction ``--component`` (GANSpace PCA of w, in
standard deviations, ``--strengths``); paste the reconstruction and each edit back into the
photo (feathered mask: outside it the photo's pixels are unchanged). The strip shows the photo,
the aligned crop, the reconstruction, the edited crops and the pasted photos.

Needs the ``align`` extra (dlib) and ../shared (the photo is read in place, never copied).

Example (the command behind docs/paste_back_strip.png):
    python bench/paste_back_example.py --out docs/paste_back_strip.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ganinvert.inversion import invert  # noqa: E402
from ganinvert.io import image_strip, pil_to_tensor, save_pil  # noqa: E402
from ganinvert.models import load_generator  # noqa: E402
from ganinvert.tasks.alignment import align_face, as_rgb_image, paste_back, paste_mask  # noqa: E402
from ganinvert.tasks.editing import edit, pca_directions  # noqa: E402

PHOTO = ROOT.parent / "shared" / "data" / "images" / "faces_inthewild" / "sample4.jpg"
SETTINGS = {"lambda_lpips": 0.0, "steps": 300}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path, default=PHOTO)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "paste_back_strip.png")
    parser.add_argument("--component", type=int, default=1, help="PCA component K (pca:K).")
    parser.add_argument("--strengths", default="-1.5,1.5", help="Comma-separated alphas, in standard deviations.")
    parser.add_argument("--tile", type=int, default=160, help="Side of each tile in the strip.")
    args = parser.parse_args()
    if not args.photo.is_file():
        print(f"{args.photo} is absent (the ../shared data folder)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    strengths = [float(a) for a in args.strengths.split(",")]
    G = load_generator("default")
    photo = as_rgb_image(args.photo)
    alignment = align_face(photo, None, G.resolution)
    result = invert(G, alignment.crop[None], "w+", settings=SETTINGS, seed=0, progress=False)
    reconstruction = result.render(G)[0].clamp(-1, 1)
    pca = pca_directions(G)
    direction = pca.directions[args.component] * pca.explained_variance[args.component].sqrt()
    edits = edit(G, result, direction, strengths)[:, 0].clamp(-1, 1)
    pasted = [paste_back(photo, crop, alignment) for crop in (reconstruction, *edits)]
    mask = paste_mask(alignment) == 0
    for image in pasted:  # the acceptance property, checked on the very images shown
        assert np.array_equal(np.asarray(image)[mask], np.asarray(photo)[mask])
    psnr = -10 * torch.log10(((reconstruction - alignment.crop) / 2).square().mean())
    names = [f"pca:{args.component} {a:+g}" for a in strengths]
    tiles = [pil_to_tensor(photo), alignment.crop, reconstruction, *edits, *(pil_to_tensor(p) for p in pasted)]
    labels = ["photo", f"aligned {G.resolution}px", f"w+ ({psnr:.1f} dB)", *names, "pasted: w+",
              *(f"pasted: {n}" for n in names)]
    save_pil(image_strip(tiles, labels, height=args.tile), args.out, optimize=True)
    print(f"{args.out}: {len(tiles)} tiles, {args.out.stat().st_size // 1024} KB; rotation "
          f"{alignment.rotation:+.1f} deg, reconstruction PSNR {psnr:.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
