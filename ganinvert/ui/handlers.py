"""What the page does, as plain functions over the library's public API (no Gradio here).

A :class:`Workspace` holds what every browser session shares (the generator, LPIPS, the PCA
directions, the folder results are written to); a :class:`Session` holds one page's images,
results and running job. Inversions and restorations run in a :class:`Job`: a worker thread
whose progress the page polls and which the Stop button ends cleanly (the engine's callback
returns True, and the run keeps the tensors of its last step).

Every user error is a :class:`~ganinvert.errors.GanInvertError` with a one-line message; the
page shows it in place of the output.
"""

from __future__ import annotations

import copy
import io
import itertools
import re
import shutil
import tempfile
import threading
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..checks import check_number, check_seed
from ..cli.common import pick_device
from ..errors import GanInvertError, ImageError
from ..inversion import InversionResult, Progress, invert, list_methods, make_method
from ..inversion.report import write_inversion_outputs
from ..io import atomic_write_bytes, image_strip, load_image, tensor_to_pil
from ..models import StyleGAN2Generator, load_generator
from ..models.loading import ASSETS
from ..outputs import safe_name
from ..tasks import make_operator
from ..tasks.editing import edit, load_direction, resolve_direction
from ..tasks.interpolation import interpolate
from ..tasks.restore import Restoration, measurement_at_full_size, restore, write_restoration_outputs
from ..tasks.robustness import latent_robustness, write_robustness_outputs

EXAMPLE_IMAGE = ASSETS / "example.png"
#: Uploads above these are refused before they are decoded (the page says so in one line).
MAX_UPLOAD_BYTES = 50 * 2 ** 20
MAX_IMAGE_PIXELS = 40_000_000
MAX_RESULT_BYTES = 1 << 30
#: Images are shown at least this large (nearest-neighbour, so 64 px pixels stay visible).
DISPLAY_SIZE = 256
#: Edit sliders: the strongest PCA directions, in standard deviations of w along each.
PCA_SLIDERS = 5
#: The restoration tasks the page has controls for (names of the operator registry).
RESTORE_TASKS = ("denoise", "sr", "cs", "inpaint")


# ----------------------------------------------------------------------------- shared state
class Workspace:
    """What every session shares: the generator (a copy per device), LPIPS, the PCA directions and
    the folder that results are written to."""

    def __init__(self, G: StyleGAN2Generator, lpips: torch.nn.Module | None = None,
                 workdir: str | Path | None = None) -> None:
        self.G = G
        self.lpips = lpips
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="ganinvert-ui-"))
        self._copies: dict[str, tuple[StyleGAN2Generator, torch.nn.Module | None]] = {str(G.w_avg.device): (G, lpips)}
        self._lock = threading.Lock()
        self._pca: list[torch.Tensor] | None = None
        self._runs = itertools.count(1)

    @classmethod
    def open(cls, generator: str = "default", lpips_weights: str | None = None, no_lpips: bool = False,
             workdir: str | Path | None = None) -> "Workspace":
        """Load the generator (on the CPU) and LPIPS: explicit weights must load; without them the
        default weights are used when present, else the page runs MSE only."""
        from ..metrics import LPIPS, lpips_available
        G = load_generator(generator, "cpu")
        lpips = None if no_lpips or (lpips_weights is None and not lpips_available()) else LPIPS(weights=lpips_weights)
        return cls(G, lpips, workdir)

    def describe(self) -> str:
        source = getattr(self.G, "source", None)
        name = Path(source.path).name if getattr(source, "path", None) else "in-memory generator"
        return (f"{name}: {self.G.resolution} px, style_dim {self.G.style_dim}, {self.G.num_ws} ws; "
                + ("LPIPS loaded" if self.lpips is not None else "no LPIPS weights (MSE only)"))

    def devices(self) -> list[str]:
        return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]

    def on(self, device: str) -> tuple[StyleGAN2Generator, torch.nn.Module | None]:
        """The generator and LPIPS on ``device`` (copied there once)."""
        key = str(pick_device(device))
        with self._lock:
            if key not in self._copies:
                lpips = None if self.lpips is None else copy.deepcopy(self.lpips).to(key)
                self._copies[key] = (copy.deepcopy(self.G).to(key), lpips)
            return self._copies[key]

    def pca(self) -> list[torch.Tensor]:
        """The edit sliders' directions, ``pca:0`` … (computed once, cached on disk by the library)."""
        with self._lock:
            if self._pca is None:
                count = min(PCA_SLIDERS, self.G.style_dim)
                self._pca = [resolve_direction(self.G, f"pca:{k}") for k in range(count)]
            return self._pca

    def new_folder(self, kind: str, name: str) -> Path:
        return self.workdir / f"{next(self._runs):03d}-{kind}-{safe_name(name)}"

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class Entry:
    """A result of this session and, when it was made here, its folder and the folder's zip."""

    result: InversionResult
    archive: Path | None = None


@dataclass
class Session:
    """One page's state: the images it works on, its results (newest last) and its running job."""

    image: torch.Tensor | None = None
    image_name: str = ""
    clean: torch.Tensor | None = None
    clean_name: str = ""
    results: dict[str, Entry] = field(default_factory=dict)
    direction: torch.Tensor | None = None
    job: "Job | None" = None

    def add(self, label: str, entry: Entry) -> str:
        label = f"#{len(self.results) + 1} {label}"
        self.results[label] = entry
        return label

    def result(self, label: str | None) -> InversionResult:
        if not self.results:
            raise GanInvertError("no result yet: run an inversion or load a result file on the Invert tab")
        if label not in self.results:
            raise GanInvertError(f"pick a result (got {label!r})")
        return self.results[label].result


# ----------------------------------------------------------------------------- images
def _upload_name(path: str | Path) -> str:
    return Path(path).name


def read_image(path: str | Path, resolution: int) -> torch.Tensor:
    """An uploaded image as (1, 3, R, R) in [-1, 1], refusing non-images and huge images before
    decoding them (the size is read from the header)."""
    path, name = Path(path), _upload_name(path)
    if path.stat().st_size > MAX_UPLOAD_BYTES:
        raise ImageError(f"{name} is {path.stat().st_size / 2 ** 20:.0f} MB; uploads are limited to "
                         f"{MAX_UPLOAD_BYTES // 2 ** 20} MB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we refuse it ourselves, below
            with Image.open(path) as img:
                width, height = img.size
    except Image.DecompressionBombError:
        raise ImageError(f"{name} has too many pixels to be opened") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageError(f"{name} is not an image file that can be read (PNG, JPEG, WebP, …)") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(f"{name} is {width}×{height} px ({width * height / 1e6:.0f} MP); images up to "
                         f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP are accepted")
    try:
        return load_image(path, resolution)
    except ImageError as exc:
        raise ImageError(str(exc).replace(str(path), name)) from None


def display(x: torch.Tensor, size: int = DISPLAY_SIZE) -> Image.Image:
    """The first image of (N, 3, H, W) in [-1, 1] as a PIL image at least ``size`` px wide."""
    img = tensor_to_pil(x[:1])
    return img if img.width >= size else img.resize((size, size * img.height // img.width), Image.Resampling.NEAREST)


def canvas(x: torch.Tensor, size: int = DISPLAY_SIZE) -> np.ndarray:
    """An image to paint a mask on: ``display(x)`` as an (H, W, 3) uint8 array."""
    return np.asarray(display(x, size))


def mask_from_layers(layers: Sequence[np.ndarray | Image.Image | None], resolution: int) -> torch.Tensor:
    """The inpainting mask (1, 1, R, R) of the strokes painted on a canvas: 0 (missing) where a
    pixel of the generator's resolution is at least half covered by paint, 1 (observed) elsewhere."""
    arrays = [np.asarray(layer) for layer in layers if layer is not None]
    alphas = [a[..., 3] for a in arrays if a.ndim == 3 and a.shape[-1] == 4]
    if not alphas or not any(a.any() for a in alphas):
        raise GanInvertError("paint the missing region on the image first (inpainting needs a mask)")
    painted = np.max(np.stack(alphas), axis=0)
    small = np.asarray(Image.fromarray(painted).resize((resolution, resolution), Image.Resampling.BOX))
    observed = torch.from_numpy((small < 128).astype(np.float32))[None, None]
    if not observed.any():
        raise GanInvertError("the painted mask covers the whole image; leave some of it observed")
    return observed


# ----------------------------------------------------------------------------- methods
def presets(method: str) -> list[tuple[str, str]]:
    """(label, value) of each preset of ``method``; value "" is the method's plain defaults."""
    cls = _method_class(method)
    choices = [(name + (" (default)" if name == cls.default_preset else ""), name) for name in cls.presets]
    return choices if cls.default_preset is not None else [("(the method's defaults)", "")] + choices


def default_preset(method: str) -> str:
    return _method_class(method).default_preset or ""


def preset_source(method: str, preset: str | None) -> str:
    cls = _method_class(method)
    if not preset:
        return f"{cls.summary}. No preset: the method's default settings."
    if preset not in cls.presets:
        return f"{cls.summary}."
    return f"{cls.summary}. Preset source: {cls.presets[preset].source}"


def _method_class(method: str):
    methods = list_methods()
    if method not in methods:
        raise GanInvertError(f"unknown method {method!r}; known: {', '.join(methods)}")
    return methods[method]


def _settings(steps: Any, use_lpips: bool) -> dict[str, Any]:
    if isinstance(steps, float) and steps.is_integer():
        steps = int(steps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise GanInvertError(f"steps must be a whole number >= 1, got {steps!r}")
    return {"steps": steps} if use_lpips else {"steps": steps, "lambda_lpips": 0.0}


def _seed(seed: Any) -> int:
    return check_seed(int(seed) if isinstance(seed, float) and seed.is_integer() else seed)


# ----------------------------------------------------------------------------- jobs
class Job:
    """``work(callback)`` in a worker thread. ``callback`` is the engine's: it records each step
    and returns True once :meth:`stop` was called, which ends the run cleanly. ``info``: what the
    run was started on (image, name, device), for writing its outputs."""

    def __init__(self, work: Callable[[Callable[[Progress], bool]], Any], **info: Any) -> None:
        self.info = info
        self.latest: Progress | None = None
        self.history: dict[str, list[float]] = {"loss": [], "psnr": []}
        self._work = work
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._done = False
        self._outcome: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ganinvert-job", daemon=True)
        self._thread.start()

    def _callback(self, progress: Progress) -> bool:
        with self._changed:
            self.latest = progress
            self.history["loss"].append(progress.loss)
            self.history["psnr"].append(float("nan") if progress.psnr is None else progress.psnr)
            self._changed.notify_all()
        return self._stop.is_set()

    def _run(self) -> None:
        try:
            self._outcome = self._work(self._callback)
        except BaseException as exc:  # handed to the page's thread by outcome()
            self._error = exc
        finally:
            with self._changed:
                self._done = True
                self._changed.notify_all()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Stop was pressed and the run has not ended yet."""
        return self._stop.is_set() and not self._done

    def updates(self, interval: float = 0.1) -> Iterator[Progress]:
        """The newest progress, at most every ``interval`` s and only when a step was done, until the job ends."""
        shown, last = 0, 0.0
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._done or (self.latest is not None and self.latest.step != shown))
                if self.latest is None or self.latest.step == shown:
                    return
                progress = self.latest
            wait = last + interval - time.perf_counter()
            if wait > 0 and not self._done:
                time.sleep(wait)
                with self._changed:
                    progress = self.latest
            shown, last = progress.step, time.perf_counter()
            yield progress

    def outcome(self) -> Any:
        """What ``work`` returned (re-raising what it raised), once it has ended."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._outcome


def progress_line(progress: Progress | None, stopping: bool = False) -> str:
    if progress is None:
        return "starting…"
    psnr = "" if progress.psnr is None else f", PSNR {progress.psnr:.2f} dB"
    return (f"step {progress.step}/{progress.total} ({progress.stage}): loss {progress.loss:.4f}{psnr}"
            + (" — stopping…" if stopping else ""))


def format_metrics(metrics: dict[str, Any]) -> str:
    names = [("psnr", "PSNR", "{:.2f} dB"), ("ssim", "SSIM", "{:.3f}"), ("ms_ssim", "MS-SSIM", "{:.3f}"),
             ("lpips", "LPIPS", "{:.3f}"), ("psnr_measurement", "measurement PSNR", "{:.2f} dB")]
    return " · ".join(f"{label} {fmt.format(metrics[key])}" for key, label, fmt in names if key in metrics)


def _run_label(result: InversionResult, name: str) -> str:
    steps = len(result.history.get("loss", []))
    stopped = result.extra.get("stopped_at")
    return f"{result.method} {name} ({f'stopped at step {stopped}' if stopped is not None else f'{steps} steps'})"


# ----------------------------------------------------------------------------- invert
def start_inversion(ws: Workspace, session: Session, method: str, preset: str | None, steps: Any, seed: Any,
                    device: str, use_lpips: bool) -> Job:
    """Start inverting the session's image (checked first, so a bad option fails before the run)."""
    if session.image is None:
        raise GanInvertError("upload an image or pick the example first")
    m = make_method(method, preset or None, _settings(steps, use_lpips and ws.lpips is not None))
    seed = _seed(seed)
    G, lpips = ws.on(device)
    target = session.image.to(G.w_avg.device)
    return Job(lambda callback: invert(G, target, m, preset=preset or None, seed=seed,
                                       lpips=lpips if m.settings.lambda_lpips else None,
                                       callback=callback, progress=False),
               target=target, name=session.image_name, device=device)


def finish_inversion(ws: Workspace, session: Session, job: Job) -> tuple[str, torch.Tensor, dict]:
    """Write the finished (or stopped) run's folder and zip; returns its label, render and metrics."""
    result = job.outcome()
    G, lpips = ws.on(job.info["device"])
    name = job.info["name"]
    folder = ws.new_folder("invert", Path(name).stem)
    reconstruction = result.render(G)
    metrics = write_inversion_outputs(folder, job.info["target"], result, reconstruction, lpips)
    label = session.add(_run_label(result, name), Entry(result, zip_folder(folder)))
    return label, reconstruction, metrics


def zip_folder(folder: Path) -> Path:
    """``folder`` as ``folder.zip`` (its files under ``folder.name/``), written atomically."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, f"{folder.name}/{path.name}")
    target = folder.with_suffix(".zip")
    atomic_write_bytes(target, buffer.getvalue())
    return target


def load_result_upload(ws: Workspace, session: Session, paths: Sequence[str | Path]) -> tuple[str, torch.Tensor]:
    """Add an uploaded result (the page's zip, or a .safetensors with its .json) to the session; returns
    its label and its render."""
    paths = [Path(p) for p in paths or []]
    folder = ws.new_folder("upload", paths[0].stem if paths else "result")
    folder.mkdir(parents=True)
    if len(paths) == 1 and paths[0].suffix.lower() == ".zip":
        _extract_result(paths[0], folder)
    else:
        by_suffix = {p.suffix.lower(): p for p in paths}
        if len(paths) != 2 or set(by_suffix) != {".safetensors", ".json"}:
            raise GanInvertError("upload the result zip, or a result's .safetensors together with its .json")
        for suffix, path in by_suffix.items():
            shutil.copyfile(path, folder / f"result{suffix}")
    try:
        result = InversionResult.load(folder / "result.safetensors")
    except GanInvertError as exc:
        raise GanInvertError(str(exc).replace(str(folder) + "/", "")) from None
    image = result.render(ws.G)
    label = session.add(_run_label(result, "(uploaded)"), Entry(result))
    return label, image


def _extract_result(path: Path, folder: Path) -> None:
    """The one ``result.safetensors`` + ``result.json`` pair of a zip, copied into ``folder``."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {Path(info.filename).name: info for info in archive.infolist()
                       if Path(info.filename).name in ("result.safetensors", "result.json")}
            if len(members) != 2:
                raise GanInvertError(f"{path.name} holds no result.safetensors + result.json pair")
            if sum(info.file_size for info in members.values()) > MAX_RESULT_BYTES:
                raise GanInvertError(f"{path.name}: the result files are larger than {MAX_RESULT_BYTES >> 20} MB")
            for name, info in members.items():
                atomic_write_bytes(folder / name, archive.read(info))
    except (zipfile.BadZipFile, OSError, EOFError):
        raise GanInvertError(f"{path.name} is not a readable zip file") from None


# ----------------------------------------------------------------------------- edit
def load_direction_upload(ws: Workspace, path: str | Path, index: Any = None) -> torch.Tensor:
    """A direction file for the generator, (num_ws, style_dim); ``index`` (blank: none) picks a row of
    a collection."""
    row = None if index is None or str(index).strip() == "" else _whole(index, "the row")
    path = Path(path)
    try:
        return load_direction(ws.G, path, row)
    except GanInvertError as exc:
        raise GanInvertError(str(exc).replace(str(path), path.name)) from None


def edit_image(ws: Workspace, result: InversionResult, strengths: Sequence[float], first_layer: Any,
               last_layer: Any, direction: torch.Tensor | None = None, direction_strength: float = 0.0) -> torch.Tensor:
    """``result`` moved by ``sum_k strengths[k] * pca:k`` (+ ``direction_strength * direction``) on
    the ws indices first_layer..last_layer: one forward pass, (1, 3, H, W)."""
    pca = ws.pca()
    moves = [(float(a), d) for a, d in zip(strengths, pca)]
    if direction is not None:
        moves.append((float(direction_strength), direction))
    for alpha, _ in moves:
        check_number(alpha, "an edit strength")
    total = sum((alpha * d for alpha, d in moves if alpha), torch.zeros_like(pca[0]))
    lo, hi = sorted((int(first_layer), int(last_layer)))
    if not total.abs().sum():
        return result.render(ws.G)[:1]
    return edit(ws.G, result, total, [1.0], list(range(lo, hi + 1)))[0][:1]


def interpolation_strip(ws: Workspace, a: InversionResult, b: InversionResult, frames: Any) -> Image.Image:
    """``frames`` renders from ``a`` to ``b`` (both included), side by side."""
    renders = interpolate(ws.G, a, b, int(frames))
    times = torch.linspace(0, 1, renders.shape[0]).tolist()
    return image_strip([r[0] for r in renders], [f"t={t:.2f}" for t in times], height=128)


# ----------------------------------------------------------------------------- draws and robustness
def draws_strip(ws: Workspace, result: InversionResult, draws: Any, seed: Any) -> tuple[Image.Image, str]:
    """The result's render beside ``draws`` renders with fresh random inputs (SPHInX's fresh z+),
    and a note saying whether they differ."""
    draws = int(draws)
    if draws < 1:
        raise GanInvertError(f"draws must be >= 1, got {draws}")
    fixed = result.render(ws.G)[0]
    samples = result.render_draws(ws.G, draws, _seed(seed))[:, 0]
    renders = torch.cat([fixed[None], samples])
    spread = float((renders - renders[:1]).abs().max())
    note = (f"{draws} fresh draws of {result.method}: they differ by up to {spread:.3f} per pixel"
            if spread > 0 else f"{result.method} is deterministic: every draw renders the same image")
    strip = image_strip([fixed, *samples], ["render"] + [f"draw {k}" for k in range(draws)], height=128)
    return strip, note


def robustness_plot(ws: Workspace, result: InversionResult, levels: str, trials: Any, seed: Any) -> Path:
    """SPHInX Fig. 1 for one result: PSNR/SSIM(/LPIPS) to its render when its w+ is perturbed at
    each SNR of ``levels`` ("30,20,10"); returns the plot's path."""
    try:
        snr_db = [float(v) for v in str(levels).split(",") if v.strip()]
    except ValueError:
        raise GanInvertError(f"SNR levels must be comma-separated numbers, got {levels!r}") from None
    if not snr_db or int(trials) < 1:
        raise GanInvertError("give at least one SNR level and trials >= 1")
    rows = latent_robustness(ws.G, result, snr_db, trials=int(trials), seed=_seed(seed), lpips=ws.lpips)
    folder = ws.new_folder("robustness", result.method)
    write_robustness_outputs(rows, folder)
    return folder / "robustness.png"


# ----------------------------------------------------------------------------- restore
def restore_operator(ws: Workspace, task: str, *, sigma: Any = None, factor: Any = None, fraction: Any = None,
                     mask: torch.Tensor | None = None, seed: Any = 0):
    """The forward operator of ``task`` with the page's options (only the task's own are passed)."""
    if task not in RESTORE_TASKS:
        raise GanInvertError(f"unknown task {task!r}; choose one of {', '.join(RESTORE_TASKS)}")
    options: dict[str, Any] = {"denoise": {"sigma": sigma}, "cs": {"fraction": fraction}, "inpaint": {"mask": mask},
                               "sr": {"factor": factor}}[task]
    if task == "sr":
        options["factor"] = _whole(factor, "the factor")
    return make_operator(task, image_size=ws.G.resolution, seed=_seed(seed), **options)


def _whole(value: Any, what: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"\d+", value.strip()):
        return int(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    raise GanInvertError(f"{what} must be a whole number, got {value!r}")


def start_restoration(ws: Workspace, session: Session, operator: Any, method: str, steps: Any, seed: Any,
                      device: str, use_lpips: bool) -> Job:
    """Start restoring the session's clean image from its simulated measurement."""
    if session.clean is None:
        raise GanInvertError("upload an image or pick the example first")
    m = make_method(method, None, _settings(steps, use_lpips and ws.lpips is not None))
    seed = _seed(seed)
    G, lpips = ws.on(device)
    clean = session.clean.to(G.w_avg.device)
    operator = operator.to(G.w_avg.device)
    return Job(lambda callback: restore(G, operator, clean=clean, method=m, seed=seed,
                                        lpips=lpips if m.settings.lambda_lpips else None, progress=False,
                                        callback=callback),
               name=session.clean_name, device=device, task=operator.name)


def finish_restoration(ws: Workspace, session: Session, job: Job
                       ) -> tuple[str, Restoration, torch.Tensor | None, dict]:
    """Write the restoration's folder and zip; returns its label, the restoration, its measurement
    at full size (None for compressed sensing) and its metrics."""
    out: Restoration = job.outcome()
    _, lpips = ws.on(job.info["device"])
    task, name = job.info["task"], job.info["name"]
    folder = ws.new_folder(f"restore-{task}", Path(name).stem)
    metrics = write_restoration_outputs(folder, out, lpips, extra={"task": task})
    label = session.add(f"{task} " + _run_label(out.result, name), Entry(out.result, zip_folder(folder)))
    return label, out, measurement_at_full_size(out.measurement_image, ws.G.resolution), metrics
