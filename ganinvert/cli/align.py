"""``ganinvert align | paste-back``: FFHQ alignment of face photos, and pasting an edited crop back.

``align`` exits 0 when it wrote at least one crop, each photo it could not use (unreadable, no
face) reported on stderr as one line; it exits 2 when it wrote none (a single photo: just its
one-line error).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import GanInvertError
from .common import generator_option, out_dir_option, overwrite_option

ALIGNMENT_RECORD = "alignment.json"
ALIGNED_IMAGE = "aligned.png"
FACE_CHOICES = ("largest", "all")


@click.command("align")
@click.argument("photos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--face", type=click.Choice(FACE_CHOICES), default="largest", show_default=True,
              help="Align the largest face of each photo, or every face found (largest first).")
@click.option("--size", type=int, default=None,
              help="Side of the aligned crops in pixels [default: the generator's resolution].")
@generator_option
@out_dir_option
@overwrite_option
def align_command(photos: tuple[Path, ...], face: str, size: int | None, generator: str, out: Path,
                  overwrite: bool) -> None:
    """Find the faces in PHOTOS (files or folders) with dlib and align them the FFHQ way.

    Writes OUT/<name>/aligned.png and alignment.json (the crop's quad in the photo's pixels,
    rotation in degrees, scale, offset, the landmarks, and the photo's path and sha256); with
    --face all, OUT/<name>/face_<k>/ for each face, largest first. A photo that cannot be read or
    shows no face gets one line on stderr and the others still run: the exit status is 0 when at
    least one crop was written, else 2. Needs the optional extra: pip install "ganinvert[align]".
    """
    from ..inversion.result import source_image_record
    from ..io import atomic_write_json, list_images, load_image, save_image, tensor_to_pil
    from ..outputs import OutputLocks, output_folder, output_names, staged_folder, sweep_stale
    from ..tasks.alignment import align_face, detect_faces, require_detection

    require_detection()  # the missing extra is one line before anything else happens
    paths = list_images(photos)
    if not paths:
        raise GanInvertError("no images found in the given paths")
    size = _crop_size(size, generator)
    names = output_names(paths)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    with OutputLocks(out) as locks:
        locks.acquire(names)
        sweep_stale(out, locks)
        folders = [output_folder(out, name) for name in names]
        taken = [f for f in folders if f.exists()]
        if taken and not overwrite:
            raise GanInvertError(f"{taken[0]} already exists; pass --overwrite to replace it or choose another --out")
        for path, name, folder in zip(paths, names, folders):
            try:
                photo = tensor_to_pil(load_image(path))
                faces = detect_faces(photo)
                if not faces:
                    raise GanInvertError(f"{path}: no face found")
                chosen = faces if face == "all" else faces[:1]
                alignments = [align_face(photo, landmarks, size) for landmarks in chosen]
            except GanInvertError as exc:
                if len(paths) == 1:
                    raise
                click.echo(f"ganinvert: error: {exc}", err=True)
                continue
            source = source_image_record(path)
            with staged_folder(folder, overwrite=overwrite) as staging:
                for k, alignment in enumerate(alignments):
                    target = staging / f"face_{k}" if face == "all" else staging
                    save_image(alignment.crop, target / ALIGNED_IMAGE)
                    atomic_write_json(target / ALIGNMENT_RECORD, {**alignment.to_json(), "source": source, "face": k,
                                                                 "faces_found": len(faces)})
            written += 1
            largest = alignments[0].geometry
            click.echo(f"{name}: {len(faces)} face{'s' if len(faces) != 1 else ''}, aligned {len(alignments)} at "
                       f"{size} px (largest: rotation {largest.rotation:+.1f} deg, scale {largest.scale:.2f}) "
                       f"-> {folder}")
    if not written:
        raise GanInvertError(f"no crop written: none of the {len(paths)} photos could be aligned")


def _crop_size(size: int | None, generator: str) -> int:
    """``--size``, else the generator's resolution (the generator is only loaded for it)."""
    from ..tasks.alignment import check_crop_size
    if size is None:
        from ..models import load_generator
        size = load_generator(generator, "cpu").resolution
    return check_crop_size(size)


# ----------------------------------------------------------------------------- paste-back
@click.command("paste-back")
@click.argument("aligned", type=click.Path(path_type=Path))
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--photo", type=click.Path(path_type=Path), default=None,
              help="The original photo [default: the source path in ALIGNED/alignment.json]; its sha256 must "
                   "match the record's.")
@click.option("--feather", type=float, default=None,
              help="Width of the blending ramp at the crop's edges, as a fraction of its side [default: 0.1].")
@click.option("--out", "-o", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The composited photo (PNG).")
def paste_back_command(aligned: Path, image: Path, photo: Path | None, feather: float | None, out: Path) -> None:
    """Warp IMAGE (an edit or reconstruction of the aligned crop in ALIGNED, a folder `ganinvert
    align` wrote or its alignment.json; any square size) back into the original photo and write
    OUT. Pixels outside the feathered mask are the photo's own, unchanged."""
    from ..inversion.result import source_image_record
    from ..io import load_image, save_pil, tensor_to_pil
    from ..tasks.alignment import DEFAULT_FEATHER, Alignment, paste_back

    record_path = aligned / ALIGNMENT_RECORD if aligned.is_dir() else aligned
    record = _read_record(record_path)
    alignment = Alignment.from_json(record, str(record_path))
    source = record.get("source") if isinstance(record.get("source"), dict) else {}
    photo_path = photo if photo is not None else Path(str(source.get("path", "")))
    if not str(photo_path) or not photo_path.is_file():
        raise GanInvertError(f"the original photo {photo_path} is not there; pass it with --photo")
    if source.get("sha256") != source_image_record(photo_path)["sha256"]:
        raise GanInvertError(f"{photo_path} is not the photo {record_path} was made from (its sha256 differs)")
    edited = load_image(image)
    if edited.shape[-1] != edited.shape[-2]:
        raise GanInvertError(f"{image} is {edited.shape[-1]}x{edited.shape[-2]}; the crop to paste back must be square")
    composite = paste_back(tensor_to_pil(load_image(photo_path)), edited[0], alignment,
                           DEFAULT_FEATHER if feather is None else feather)
    save_pil(composite, out)
    click.echo(f"pasted {image} into {photo_path} -> {out}")


def _read_record(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise GanInvertError(f"{path} not found (expected a folder written by `ganinvert align` or its "
                             f"{ALIGNMENT_RECORD})") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise GanInvertError(f"cannot read {path}: {str(exc).splitlines()[0][:120]}") from None


COMMANDS = {"align": align_command, "paste-back": paste_back_command}
