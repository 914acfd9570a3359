"""``ganinvert reproduce``: the seed papers' claims against our numbers, as one resumable run and
one report (``REPRODUCTION.md``).

Five experiments (:data:`EXPERIMENTS`) on the bundled 64 px face generator. Each is one or more
evaluations run by :func:`ganinvert.evaluation.run_evaluation` (resumable cells, worker processes
or Ray) and, where a claim is about the solutions themselves (how much of the picture lives in
the noise maps B, how far an edit moves the image), *probes*: the cell's inversion run again with
the cell's own seed, settings and batch, which gives the same solution (the probe records whether
its render matches the cell's PNG byte for byte), then measured.

Every experiment states the paper's claim in one sentence and a rule that turns the numbers into
a verdict: *holds*, *does not hold*, *holds only at/for …*, or *undetermined* while cells are
missing. Budgets (:class:`Budget`): ``full`` (the papers' budgets: >= 2000 steps, 6 images) and
``quick`` (200 steps, 2 images, 2 shifts per evaluation: a smoke test of the pipeline and the
report, never evidence for or against a claim).

Layout of ``OUT``::

    OUT/<budget>/reproduce.json                      the budget and options of its latest run
    OUT/<budget>/<experiment>/<evaluation>/          the evaluation's own outputs (cells/, report.md, ...)
    OUT/<budget>/<experiment>/<evaluation>/probes/<kind>/<cell key>.json
    OUT/<budget>/<experiment>/timing.json            wall and CPU time of every invocation

The report is rendered from whatever cells exist: per experiment from the ``full`` budget when
it has any finished cell, else from the largest other budget run under OUT (``quick``: labelled
as a smoke test). Its figures go to ``<report folder>/reproduction/*.png``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import resource
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from ..errors import GanInvertError
from ..io import atomic_write_bytes, atomic_write_json
from .cells import cell_json_path, read_cell
from .plan import CellTask, EvaluationConfig, MethodSpec, Plan
from .report import summarise
from .runner import default_threads, plan_evaluation, run_evaluation
from .suites import ImageRef, format_number, make_suite

Log = Callable[[str], None]

PROBE_FORMAT = "ganinvert-reproduce-probe/1"
#: The editing probe: GANSpace's first principal direction of w, at +-3 standard deviations.
EDIT_DIRECTION = "pca:0"
EDIT_STRENGTHS = (-3.0, 3.0)
#: The images root of a checkout: ../shared/data/images beside the repository.
DEFAULT_IMAGES_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "images"


# ----------------------------------------------------------------------------- budgets and methods
@dataclass(frozen=True)
class Budget:
    """How much of every experiment runs.

    Attributes:
        name: folder under OUT (``full``, ``quick``, or a test's own).
        steps: steps of every optimising method in experiments 1-4 (and in 5 unless ``own_budgets``).
        images: images per shift (the first K files of each folder, sorted by name).
        few_shifts: run only each evaluation's ``quick_shifts`` (2 per evaluation).
        own_budgets: experiment 5 runs every method at its own preset's steps (the papers' budgets).
        trials: perturbation draws per SNR level (experiment 2).
        evidence: whether the numbers may count as evidence for or against a claim.
    """

    name: str
    steps: int
    images: int
    few_shifts: bool
    own_budgets: bool
    trials: int = 8
    evidence: bool = False

    def describe(self) -> str:
        scope = "2 shifts per evaluation" if self.few_shifts else "every shift"
        return f"`{self.name}`: {self.steps} steps, {self.images} image(s) per shift, {scope}"


FULL = Budget("full", steps=2000, images=6, few_shifts=False, own_budgets=True, evidence=True)
QUICK = Budget("quick", steps=200, images=2, few_shifts=True, own_budgets=False)


@dataclass(frozen=True)
class LabelledMethod(MethodSpec):
    """A :class:`MethodSpec` with a label of its own: the two SPHInX variants share name and preset."""

    tag: str = ""

    @property
    def label(self) -> str:
        return self.tag or super().label


#: label -> how the report writes it (the papers' notation).
DISPLAY = {"w+": "W+", "w+b": "(W+,B)", "w+sb": "(W+,S,B)", "z+sb": "(Z+,S,B)", "sphinx-ps": "SPHInX (Ps)",
           "sphinx": "SPHInX (Ps,Pc,B)", "ilo": "ILO", "fw+": "F/W+", "fz+": "F/Z+", "sam-opt": "SAM-opt",
           "hyperinverter-e1": "E1", "hyperinverter": "HyperInverter", "pti": "PTI"}
LATENT_BASELINES = ("w+", "w+b", "w+sb", "z+sb")
#: Methods that optimise the noise maps B.
NOISE_METHODS = ("w+b", "w+sb", "z+sb", "sphinx")
SPHINX = "sphinx"
#: PSNR lost when B is redrawn (dB) from which a reason says that part of the picture lives in B.
NOISE_DROP_DB = 0.5


def display(label: str) -> str:
    return DISPLAY.get(label, label)


def method(label: str, budget: Budget, *, own_steps: bool = False, lpips: bool = True) -> LabelledMethod:
    """The method ``label`` of :data:`DISPLAY` at ``budget``: ``budget.steps`` steps, or with
    ``own_steps`` its preset's own (W+: 1000, HyperInverter Table 1). Encoders take no steps;
    PTI's budget is split between its pivot and its tuning; ``lpips=False`` drops the LPIPS term."""
    name, preset, settings = {
        "sphinx": ("sphinx", "sphinx-official", {}),
        "sphinx-ps": ("sphinx", "sphinx-official", {"content": False, "noise": False}),
    }.get(label, (label, None, {}))
    settings = dict(settings)
    if label not in ("hyperinverter", "hyperinverter-e1"):
        if own_steps:
            settings.update({"steps": 1000} if label == "w+" else {})
        elif label == "pti":
            settings.update(pivot_steps=budget.steps // 2, steps=budget.steps - budget.steps // 2)
        else:
            settings["steps"] = budget.steps
    if not lpips:
        settings["lambda_lpips"] = 0.0
    return LabelledMethod(name, preset, tuple(sorted(settings.items())), tag=label)


# ----------------------------------------------------------------------------- experiments
@dataclass(frozen=True)
class Evaluation:
    """One evaluation of an experiment.

    Attributes:
        id: its folder under the experiment's.
        suite: the evaluation suite; options: the suite's options (``trials`` comes from the budget).
        folders: image folders under the images root (ood-domain: each is a shift).
        shifts: the shifts of the full run (None: the folders); quick_shifts: the 2 of a quick run.
        methods: method labels; own_budgets: methods at their presets' steps when the budget says so.
        probes: probe kinds run on the solutions (``noise-energy``, ``edit``); probe_methods: which.
    """

    id: str
    suite: str
    folders: tuple[str, ...]
    shifts: tuple[str, ...] | None
    quick_shifts: tuple[str, ...]
    methods: tuple[str, ...]
    options: tuple[tuple[str, Any], ...] = ()
    own_budgets: bool = False
    probes: tuple[str, ...] = ()
    probe_methods: tuple[str, ...] | None = None

    def config(self, budget: Budget, root: Path, *, use_lpips: bool, lpips_weights: str | None, seed: int,
               device: str) -> EvaluationConfig:
        shifts = self.quick_shifts if budget.few_shifts else self.shifts
        folders = self.folders
        if self.shifts is None and budget.few_shifts:  # ood-domain: the shifts are folders
            folders, shifts = self.quick_shifts, None
        options = dict(self.options)
        if self.suite == "robustness":
            options["trials"] = budget.trials
        own = self.own_budgets and budget.own_budgets
        methods = tuple(method(label, budget, own_steps=own, lpips=use_lpips) for label in self.methods)
        return EvaluationConfig(self.suite, tuple(root / f for f in folders), methods, suite_options=options,
                                shifts=shifts, max_images=budget.images, seed=seed, use_lpips=use_lpips,
                                lpips_weights=lpips_weights, device=device)


@dataclass(frozen=True)
class Experiment:
    """One claim of a paper: its evaluations and the rule that gives the verdict (see :func:`verdicts`)."""

    id: str
    number: str
    title: str
    claim: str
    evaluations: tuple[Evaluation, ...]
    notes: str = ""


FIG5_METHODS = ("w+", "w+b", "w+sb", "z+sb", "sphinx-ps", "sphinx")
RESTORE_METHODS = ("sphinx", "w+sb", "z+sb", "ilo")
SAM_METHODS = ("w+", "fw+", "sam-opt")
DOMAINS = ("afhq", "cartoon", "cxr", "retina", "isic")
SAM_DOMAINS = ("afhq", "cars", "cxr", "retina", "isic")
FACES = "celeba_hq"

EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(
        "1-fig5-geometric", "1", "SPHInX Fig. 5: geometric out-of-distribution shifts",
        "SPHInX (Subramanyam et al., ICML 2022), Fig. 5: as faces are rotated, rescaled and translated "
        "further from the aligned pose, SPHInX's PSNR and LPIPS degrade less than those of the latent-code "
        "baselines W+, (W+,B), (W+,S,B) and (Z+,S,B).",
        (Evaluation("geometric", "ood-geometric", (FACES,),
                    ("rot10", "rot20", "rot30", "scale0.75", "scale0.875", "scale1.125", "scale1.25",
                     "tx0", "tx50", "tx100", "tx150"), ("rot10", "rot30"), FIG5_METHODS),),
        "Translations are given in pixels of the 1024 px protocol and scaled to the image; uncovered "
        "borders are filled by reflection (the suite's default)."),
    Experiment(
        "2-fig1-robustness", "2", "SPHInX Fig. 1: robustness of the solution to latent perturbation",
        "SPHInX (Subramanyam et al., ICML 2022), Fig. 1: SPHInX's solutions are robust to perturbation: "
        "when Gaussian noise is added to the w+ they feed the generator (SNR 30 to 5 dB), their renders stay "
        "closer to the unperturbed one than those of the latent-code baselines.",
        (Evaluation("robustness", "robustness", (FACES,), ("snr30", "snr20", "snr10", "snr5"), ("snr20", "snr10"),
                    FIG5_METHODS, probes=("noise-energy",)),),
        "The clean faces are inverted once per method; each solution's w+ is perturbed at every SNR "
        "(8 draws per level) and the renders are compared with the unperturbed render. The noise maps B, "
        "the content S and the heads' other inputs are left as they are, so whatever a solution stores in B "
        "is untouched by the perturbation: the probe measures how much of each picture lives there."),
    Experiment(
        "3-fig9-domains", "3", "SPHInX Fig. 9: other domains",
        "SPHInX (Subramanyam et al., ICML 2022), Fig. 9: SPHInX inverts images of other domains (animal faces, "
        "cartoons, chest X-rays, retinas, skin lesions) into a face generator more faithfully than the baselines.",
        (Evaluation("domains", "ood-domain", DOMAINS, None, ("afhq", "cxr"), FIG5_METHODS),)),
    Experiment(
        "4-fig10-11-restoration", "4", "SPHInX Figs. 10-11: denoising and compressed sensing",
        "SPHInX (Subramanyam et al., ICML 2022), Figs. 10-11: SPHInX restores faces from noisy "
        "(sigma 0.1-0.4) and compressed (1-5 % measurements) observations with a higher PSNR than "
        "(W+,S,B), (Z+,S,B) and ILO.",
        (Evaluation("denoise", "denoise", (FACES,), ("sigma0.1", "sigma0.2", "sigma0.3", "sigma0.4"),
                    ("sigma0.1", "sigma0.4"), RESTORE_METHODS),
         Evaluation("cs", "cs", (FACES,), ("cs1", "cs2", "cs5"), ("cs1", "cs5"), RESTORE_METHODS)),
        "The noise std is on the [-1, 1] image scale; compressed sensing uses partial circulant "
        "measurements (after ILO). PSNR is measured against the clean image, which no method sees."),
    Experiment(
        "5a-sam", "5a", "SAM: spatially adaptive latent spaces on hard images",
        "SAM (Parmar et al., CVPR 2022), abstract and reconstruction comparison: choosing the latent space per "
        "region from predicted invertibility reconstructs misaligned and non-face images with a lower LPIPS "
        "than single-space W+ and F/W+ inversions.",
        (Evaluation("misaligned", "ood-geometric", (FACES,), ("rot20", "scale0.75", "tx100"), ("rot20", "tx100"),
                    SAM_METHODS, own_budgets=True),
         Evaluation("non-faces", "ood-domain", SAM_DOMAINS, None, ("afhq", "cars"), SAM_METHODS,
                    own_budgets=True)),
        "Each method at its paper's budget: W+ 1000 steps, F/W+ (BDInvert) 1200, SAM-opt 1001 with the "
        "bundled invertibility predictor's maps."),
    Experiment(
        "5b-hyperinverter", "5b", "HyperInverter Table 1: quality and time",
        "HyperInverter (Dinh et al., CVPR 2022), Table 1: HyperInverter reconstructs faces better than its W "
        "encoder E1 at encoder speed (over 100x faster than W+ optimisation at 1000 steps and PTI), while "
        "those optimisation methods remain more faithful.",
        (Evaluation("faces", "ood-domain", (FACES,), None, (FACES,),
                    ("hyperinverter-e1", "hyperinverter", "w+", "pti", "fw+", "fz+"), own_budgets=True,
                    probes=("edit",), probe_methods=("w+", "fw+", "fz+")),),
        "Aligned faces, scored against the image itself. PTI runs its official budget (450 pivot steps, "
        "then 350 tuning steps). The seconds are optimisation wall time per image on the run's machine "
        "(noisy on a shared CPU; only ratios of 100x count)."),
    Experiment(
        "5c-fz-editing", "5c", "F/Z+: reconstruction against editability",
        "F/Z+ (Katsumata et al., WACV 2024), abstract: the F/Z+ space keeps F/W+'s reconstruction quality while "
        "staying editable like the latent spaces (edits still change the image).",
        (), "Uses the solutions of experiment 5b. Editability proxy: LPIPS between the render moved by "
        "+-3 sigma along the first PCA direction of w (GANSpace) and the unedited render; a space whose edits "
        "barely move the image scores low. The proxy cannot see whether an edit looks natural."),
)
EXPERIMENTS_BY_ID = {e.id: e for e in EXPERIMENTS}
#: Run order: the cheap experiments first, so that a partial run has verdicts early.
RUN_ORDER = ("2-fig1-robustness", "5b-hyperinverter", "4-fig10-11-restoration", "5a-sam", "3-fig9-domains",
             "1-fig5-geometric")
EXPERIMENT_NUMBERS = {"1": "1-fig5-geometric", "2": "2-fig1-robustness", "3": "3-fig9-domains",
                      "4": "4-fig10-11-restoration", "5": "5a-sam,5b-hyperinverter,5c-fz-editing",
                      "5a": "5a-sam", "5b": "5b-hyperinverter", "5c": "5c-fz-editing"}


def select_experiments(text: str | None) -> list[Experiment]:
    """``"1,2,5b"`` (numbers or ids) -> experiments, in :data:`RUN_ORDER`; None or "" -> all."""
    if not text:
        return [EXPERIMENTS_BY_ID[i] for i in RUN_ORDER]
    wanted: set[str] = set()
    for part in (p.strip() for p in text.split(",") if p.strip()):
        ids = EXPERIMENT_NUMBERS.get(part, part).split(",")
        unknown = [i for i in ids if i not in EXPERIMENTS_BY_ID]
        if unknown:
            raise GanInvertError(f"unknown experiment {part!r}; choose from 1, 2, 3, 4, 5 (5a, 5b, 5c)")
        wanted.update(ids)
    return [EXPERIMENTS_BY_ID[i] for i in RUN_ORDER if i in wanted]


def _evaluations(experiment: Experiment) -> tuple[tuple[Experiment, Evaluation], ...]:
    """The evaluations whose data ``experiment`` reads (5c reads 5b's), with the experiment that runs each."""
    if experiment.id == "5c-fz-editing":
        owner = EXPERIMENTS_BY_ID["5b-hyperinverter"]
        return tuple((owner, ev) for ev in owner.evaluations)
    return tuple((experiment, ev) for ev in experiment.evaluations)


# ----------------------------------------------------------------------------- run options
@dataclass(frozen=True)
class RunOptions:
    """What besides the budget determines the cells (stored as OUT/<budget>/reproduce.json)."""

    images_root: Path
    use_lpips: bool = True
    lpips_weights: str | None = None
    seed: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {"images_root": str(self.images_root), "use_lpips": self.use_lpips,
                "lpips_weights": self.lpips_weights, "seed": self.seed, "device": self.device}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunOptions:
        return cls(Path(d["images_root"]), bool(d["use_lpips"]), d.get("lpips_weights"), int(d["seed"]),
                   str(d.get("device", "cpu")))


RUN_RECORD = "reproduce.json"


def write_run_record(out: Path, budget: Budget, options: RunOptions) -> None:
    """``OUT/<budget>/reproduce.json``: the budget and options of the latest run, which the report reads."""
    atomic_write_json(Path(out) / budget.name / RUN_RECORD, {"budget": asdict(budget), "options": options.to_dict()})


def read_run_record(folder: Path) -> tuple[Budget, RunOptions] | None:
    try:
        record = json.loads((Path(folder) / RUN_RECORD).read_text())
        return Budget(**record["budget"]), RunOptions.from_dict(record["options"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def discover_runs(out: Path) -> list[tuple[Budget, RunOptions]]:
    """Every budget run under ``out``: the papers' budgets first, then by steps, most first."""
    folders = sorted(p for p in Path(out).iterdir() if p.is_dir()) if Path(out).is_dir() else []
    runs = [r for folder in folders if (r := read_run_record(folder)) is not None and r[0].name == folder.name]
    return sorted(runs, key=lambda r: (not r[0].evidence, -r[0].steps, r[0].name))


def check_images_root(root: Path, experiments: Iterable[Experiment]) -> None:
    """GanInvertError naming the first image folder the experiments need that ``root`` lacks."""
    for experiment in experiments:
        for _, ev in _evaluations(experiment):
            for folder in ev.folders:
                if not (Path(root) / folder).is_dir():
                    raise GanInvertError(f"images root {root} has no folder {folder}/ (needed by experiment "
                                         f"{experiment.number}); pass --images-root")


def evaluation_out(out: Path, budget: Budget, experiment: Experiment, evaluation: Evaluation) -> Path:
    return Path(out) / budget.name / experiment.id / evaluation.id


# ----------------------------------------------------------------------------- probes
_PROBE_RESOURCES: dict[tuple, tuple[Any, Any]] = {}


def _probe_resources(generator: str, device: str, lpips_weights: str | None) -> tuple[Any, Any]:
    key = (generator, device, lpips_weights)
    if key not in _PROBE_RESOURCES:
        from ..metrics import LPIPS
        from ..models import load_generator
        _PROBE_RESOURCES.clear()
        G = load_generator(generator, device)
        _PROBE_RESOURCES[key] = (G, LPIPS(weights=lpips_weights).to(device) if lpips_weights else None)
    return _PROBE_RESOURCES[key]


def probe_fingerprint(task: CellTask, kind: str) -> str:
    identity = {"format": PROBE_FORMAT, "kind": kind, "cell": task.fingerprint,
                "edit": [EDIT_DIRECTION, list(EDIT_STRENGTHS)] if kind == "edit" else None}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def probe_path(ev_out: Path, kind: str, key: str) -> Path:
    return Path(ev_out) / "probes" / kind / f"{key}.json"


def read_probe(ev_out: Path, kind: str, task: CellTask) -> dict[str, Any] | None:
    try:
        record = json.loads(probe_path(ev_out, kind, task.key).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("fingerprint") == probe_fingerprint(task, kind) else None


def _metrics(x: torch.Tensor, y: torch.Tensor, lpips: Any) -> dict[str, float]:
    from ..metrics import psnr
    out = {"psnr": float(psnr(x, y)[0])}
    if lpips is not None:
        out["lpips"] = float(lpips(x.clamp(-1, 1), y.clamp(-1, 1))[0])
    return out


def _noise_strengths(G: Any) -> list[float]:
    """The learned strength of each noise injection, in noise-map order (conv1, then convs)."""
    return [float(G.conv1.noise.weight)] + [float(conv.noise.weight) for conv in G.convs]


def noise_energy(G: Any, single: Any, target: torch.Tensor, lpips: Any, seed: int) -> dict[str, Any]:
    """Per layer, the mean square of the noise map B the solution renders with (1 for the generator's
    own N(0, 1) maps), and the solution's metrics to the target with B as solved and with B redrawn
    from N(0, 1) (seeded): the drop is the part of the picture that lives in B."""
    inputs = single.inputs(G)
    maps = [m if m is not None else getattr(G.noises, f"noise_{i}")
            for i, m in enumerate(inputs.noise or [None] * G.num_layers)]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        solved = inputs.render(G)
        inputs.noise = [torch.randn(tuple(m.shape), generator=g).to(m) for m in maps]
        redrawn = inputs.render(G)
    strengths = _noise_strengths(G)
    layers = [{"layer": i, "resolution": int(m.shape[-1]), "energy": round(float(m.square().mean()), 6),
               "strength": round(abs(strengths[i]), 6)} for i, m in enumerate(maps)]
    solved_metrics, redrawn_metrics = _metrics(solved, target, lpips), _metrics(redrawn, target, lpips)
    return {"optimised_noise": "noise_0" in single.params, "layers": layers,
            **solved_metrics, **{f"{k}_redrawn": v for k, v in redrawn_metrics.items()},
            "psnr_redrawn_to_solution": _metrics(redrawn, solved, None)["psnr"]}


def edit_probe(G: Any, single: Any, target: torch.Tensor, lpips: Any) -> dict[str, Any]:
    """The solution's metrics to the target and, per strength of :data:`EDIT_STRENGTHS` along
    :data:`EDIT_DIRECTION`, the LPIPS (and RMSE) of the edited render to the unedited one."""
    from ..tasks.editing import edit, edit_distances, resolve_direction
    with torch.no_grad():
        solved = single.render(G)
        frames = edit(G, single, resolve_direction(G, EDIT_DIRECTION), EDIT_STRENGTHS)
    distances = edit_distances(frames, solved, lpips)
    return {**_metrics(solved, target, lpips), "direction": EDIT_DIRECTION, "strengths": list(EDIT_STRENGTHS),
            "edit_rmse": [d["rmse"] for d in distances],
            **({"edit_lpips": [d["lpips"] for d in distances]} if lpips is not None else {})}


def _same_pixels(render: torch.Tensor, png: Path) -> bool | None:
    """Whether ``render`` quantises to the pixels of the cell's PNG (None: no PNG)."""
    from PIL import Image

    from ..io import tensor_to_pil
    try:
        with Image.open(png) as img:
            stored = np.asarray(img.convert("RGB"))
    except OSError:
        return None
    return bool(np.array_equal(np.asarray(tensor_to_pil(render[:1])), stored))


def probe_unit(kind: str, unit: Sequence[CellTask], cell_pngs: Sequence[str]) -> list[dict[str, Any]]:
    """Invert ``unit`` exactly as the runner's cells were (same batch, seeds, settings, threads),
    then measure each solution with probe ``kind``; ``cell_pngs``: each cell's render PNG, to
    check that the solution is the cell's. Writes nothing; runs in any process."""
    from ..inversion import invert

    first = unit[0]
    torch.set_num_threads(first.threads)
    G, lpips = _probe_resources(first.generator, first.device, first.lpips_weights)
    suite = make_suite(first.suite, **first.suite_options)
    shift = suite.parse_shift(first.shift_names[0])
    problems = [suite.problem(ImageRef(t.image, Path(t.image_path)), shift, G.resolution, t.measurement_seed)
                for t in unit]
    if any(p.operator is not None or p.target is None for p in problems):
        raise GanInvertError(f"probes need suites that invert the image itself, not {first.suite}")
    targets = torch.cat([p.target for p in problems]).to(G.w_avg.device)
    result = invert(G, targets, first.method, preset=first.preset, settings=first.settings,
                    seed=[t.seed for t in unit], lpips=lpips, progress=False)
    records = []
    for i, task in enumerate(unit):
        single = result.select(i)
        target = targets[i:i + 1]
        matches = _same_pixels(single.render(G), Path(cell_pngs[i]))
        if kind == "noise-energy":
            measured = noise_energy(G, single, target, lpips, seed=task.seed)
        else:
            measured = edit_probe(G, single, target, lpips)
        records.append({"format": PROBE_FORMAT, "kind": kind, "fingerprint": probe_fingerprint(task, kind),
                        "key": task.key, "image": task.image, "method": task.label,
                        "matches_cell": matches, **measured})
    return records


def _cell_png(ev_out: Path, task: CellTask) -> Path:
    """The render PNG the runner wrote for ``task`` (named after the last part of its key)."""
    return cell_json_path(ev_out, task.key).parent / f"{task.key.rsplit('/', 1)[1]}.png"


def _probe_job(job: tuple[str, Sequence[CellTask], Sequence[str]]) -> list[dict[str, Any]]:
    return probe_unit(*job)


def run_probes(plan: Plan, ev_out: Path, evaluation: Evaluation, *, workers: int = 1, log: Log = print) -> int:
    """Compute the probe records of ``evaluation`` that ``ev_out`` does not hold yet (each written
    atomically as soon as its unit finishes); returns how many were computed. Runs after the
    evaluation, whose cells the probes check their solutions against."""
    computed = 0
    wanted = set(evaluation.probe_methods or evaluation.methods)
    for kind in evaluation.probes:
        todo = [unit for unit in plan.units
                if unit[0].label in wanted and any(read_probe(ev_out, kind, t) is None for t in unit)]
        cells = sum(len(unit) for unit in todo)
        log(f"probes {kind}: {cells} to run")
        jobs = [(kind, unit, [str(_cell_png(ev_out, t)) for t in unit]) for unit in todo]
        for records in _map_jobs(jobs, workers):
            for record in records:
                atomic_write_json(probe_path(ev_out, kind, record["key"]), record)
                computed += 1
                match = {True: "same solution as the cell", False: "DIFFERS from the cell's render",
                         None: "cell render missing"}[record["matches_cell"]]
                log(f"[probe {computed}/{cells}] {record['key']}: PSNR {record['psnr']:.2f} dB ({match})")
    return computed


def _map_jobs(jobs: Sequence[tuple], workers: int) -> Iterable[list[dict[str, Any]]]:
    """Each job's records as they finish: in this process, or in ``workers`` spawned processes."""
    if not jobs:
        return
    if workers <= 1:
        threads = torch.get_num_threads()
        try:
            for job in jobs:
                yield _probe_job(job)
        finally:
            torch.set_num_threads(threads)
            _PROBE_RESOURCES.clear()
        return
    import multiprocessing
    from concurrent.futures import as_completed
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_probe_job, job) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


# ----------------------------------------------------------------------------- running
def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def source_commit() -> str:
    """The commit of the checkout the package runs from (``+dirty`` with uncommitted changes), or
    ``unknown`` outside a git checkout."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def timing_path(out: Path, budget: Budget, experiment: Experiment) -> Path:
    return Path(out) / budget.name / experiment.id / "timing.json"


def read_timing(out: Path, budget: Budget, experiment: Experiment) -> list[dict[str, Any]]:
    try:
        entries = json.loads(timing_path(out, budget, experiment).read_text())
    except (OSError, ValueError):
        return []
    return entries if isinstance(entries, list) else []


def run_reproduction(out: str | Path, budget: Budget, options: RunOptions, experiments: Sequence[Experiment], *,
                     workers: int = 1, threads: int | None = None, ray_address: str | None = None,
                     log: Log = print) -> list[str]:
    """Run the missing cells and probes of ``experiments`` at ``budget`` under ``OUT/<budget>/``.

    An experiment that fails (e.g. an unreadable image) is reported and skipped, so the others
    still run; returns the failures, one line each. Every finished cell and probe stays on disk:
    running the same call again computes only what is missing.
    """
    out = Path(out)
    check_images_root(options.images_root, experiments)
    write_run_record(out, budget, options)
    threads = threads if threads is not None else default_threads(workers)
    commit = source_commit()
    failures = []
    for experiment in experiments:
        for evaluation in experiment.evaluations:
            ev_out = evaluation_out(out, budget, experiment, evaluation)
            config = evaluation.config(budget, options.images_root, use_lpips=options.use_lpips,
                                       lpips_weights=options.lpips_weights, seed=options.seed, device=options.device)
            log(f"== experiment {experiment.number} ({experiment.title}): {evaluation.id} -> {ev_out}")
            started, wall, cpu = datetime.datetime.now(datetime.timezone.utc), time.perf_counter(), _cpu_seconds()
            entry: dict[str, Any] = {"evaluation": evaluation.id, "started": started.isoformat(timespec="seconds"),
                                     "commit": commit, "workers": workers, "threads": threads,
                                     "ray": ray_address is not None}
            try:
                stats = run_evaluation(config, ev_out, workers=workers, threads=threads, batch_size=budget.images,
                                       ray_address=ray_address, grid_images=min(4, budget.images), log=log)
                entry["cells_computed"] = stats.computed
                if evaluation.probes:
                    plan = plan_evaluation(config, threads, budget.images)
                    entry["probes_computed"] = run_probes(plan, ev_out, evaluation, workers=workers, log=log)
            except GanInvertError as exc:
                entry["failed"] = str(exc)
                failures.append(f"experiment {experiment.number} ({evaluation.id}): {exc}")
                log(f"experiment {experiment.number} ({evaluation.id}) failed: {exc}")
            finally:
                entry.update(wall_s=round(time.perf_counter() - wall, 1), cpu_s=round(_cpu_seconds() - cpu, 1))
                path = timing_path(out, budget, experiment)
                atomic_write_json(path, read_timing(out, budget, experiment) + [entry])
    return failures


# ----------------------------------------------------------------------------- reading what exists
@dataclass
class EvaluationData:
    """The finished cells (and probes) of one evaluation at one budget."""

    evaluation: Evaluation
    config: EvaluationConfig
    plan: Plan
    rows: list[dict[str, Any]]
    done: int
    cell_seconds: float
    steps: dict[str, list[int]]
    probes: dict[str, dict[tuple[str, str], dict[str, Any]]]

    @property
    def total(self) -> int:
        return len(self.plan.tasks)

    @property
    def labels(self) -> list[str]:
        return [m.label for m in self.plan.methods]

    def summary(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(shift, method label) -> median / quartiles over the finished images (see ``summarise``)."""
        return {(s["shift"], s["method"]): s for s in summarise(self.rows, self.plan.shifts, self.labels)}

    def metric_names(self) -> list[str]:
        return [m for m in ("psnr", "lpips") if self.rows and all(m in r for r in self.rows)]


def load_evaluation(out: Path, budget: Budget, options: RunOptions, owner: Experiment,
                    evaluation: Evaluation) -> EvaluationData:
    """Plan ``evaluation`` as the run did and read every finished cell and probe record."""
    config = evaluation.config(budget, options.images_root, use_lpips=options.use_lpips,
                               lpips_weights=options.lpips_weights, seed=options.seed, device=options.device)
    plan = plan_evaluation(config, 1, budget.images)  # threads and batches are not part of a cell's identity
    ev_out = evaluation_out(out, budget, owner, evaluation)
    rows: list[dict[str, Any]] = []
    done, seconds = 0, 0.0
    steps: dict[str, list[int]] = {m.label: [] for m in plan.methods}
    for task in plan.tasks:
        record = read_cell(ev_out, task)
        if record is None:
            continue
        done += 1
        rows.extend(record["rows"])
        seconds += float(record["rows"][0]["seconds"])
        steps[task.label].append(int(record.get("steps", 0)))
    probes = {kind: {(t.image, t.label): r for t in plan.tasks if (r := read_probe(ev_out, kind, t)) is not None}
              for kind in evaluation.probes}
    return EvaluationData(evaluation, config, plan, rows, done, seconds, steps, probes)


@dataclass
class ExperimentData:
    """What one experiment has at one budget."""

    experiment: Experiment
    budget: Budget
    options: RunOptions
    evaluations: dict[str, EvaluationData]
    timing: list[dict[str, Any]]

    @property
    def done(self) -> int:
        return sum(e.done for e in self.evaluations.values())

    @property
    def total(self) -> int:
        return sum(e.total for e in self.evaluations.values())

    @property
    def complete(self) -> bool:
        return self.done == self.total and all(
            len(e.probes[k]) == sum(t.label in (e.evaluation.probe_methods or e.evaluation.methods)
                                    for t in e.plan.tasks)
            for e in self.evaluations.values() for k in e.evaluation.probes)


def load_experiment(out: Path, budget: Budget, options: RunOptions, experiment: Experiment) -> ExperimentData:
    """The experiment's data at ``budget`` (run with ``options``) under ``out``."""
    evaluations = {ev.id: load_evaluation(out, budget, options, owner, ev) for owner, ev in _evaluations(experiment)}
    owners = {owner.id: owner for owner, _ in _evaluations(experiment)}
    timing = [t for owner in owners.values() for t in read_timing(out, budget, owner)]
    return ExperimentData(experiment, budget, options, evaluations, timing)


def choose_data(out: Path, runs: Sequence[tuple[Budget, RunOptions]], experiment: Experiment) -> ExperimentData | None:
    """The first run (in ``runs`` order, see :func:`discover_runs`) with a finished cell for
    ``experiment``; else the first run; None when there is none."""
    loaded = [load_experiment(out, budget, options, experiment) for budget, options in runs]
    return next((d for d in loaded if d.done), loaded[0] if loaded else None)


# ----------------------------------------------------------------------------- verdicts
HOLDS, FAILS, UNDETERMINED = "holds", "does not hold", "undetermined"


@dataclass
class Verdict:
    """``status``: holds / does not hold / holds only … / undetermined; ``rule``: how it is decided;
    ``evidence``: the numbers, one line each; ``reason``: why, where the numbers say."""

    status: str
    rule: str
    evidence: list[str] = field(default_factory=list)
    reason: str = ""


def combine(parts: Sequence[tuple[str, bool | None]], only: Callable[[list[str]], str] | None = None) -> str:
    """One status from per-part outcomes (True holds, False fails, None undetermined): *holds* when
    every part holds, *does not hold* when none does, else *holds only for <parts>* (``only``
    words it); parts still undetermined are named."""
    determined = [(name, ok) for name, ok in parts if ok is not None]
    missing = [name for name, ok in parts if ok is None]
    if not determined:
        return UNDETERMINED
    held = [name for name, ok in determined if ok]
    if len(held) == len(determined):
        status = HOLDS
    elif not held:
        status = FAILS
    else:
        status = only(held) if only else "holds only for " + ", ".join(held)
    return status + (f" (undetermined for {', '.join(missing)}: cells missing)" if missing else "")


def _better(a: float, b: float, higher: bool) -> bool:
    return a > b if higher else a < b


def _value(summary: dict, shift: str, label: str, metric: str) -> float | None:
    entry = summary.get((shift, label))
    return None if entry is None or f"{metric}_median" not in entry else float(entry[f"{metric}_median"])


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f} dB" if metric == "psnr" else f"{value:.3f}"


def _wins(summary: dict, shift: str, winner: str, others: Sequence[str], metric: str) -> bool | None:
    """Whether ``winner``'s median ``metric`` at ``shift`` beats every one of ``others`` (None: a value is missing)."""
    mine = _value(summary, shift, winner, metric)
    theirs = [_value(summary, shift, o, metric) for o in others]
    if mine is None or any(v is None for v in theirs):
        return None
    return all(_better(mine, v, metric != "lpips") for v in theirs)


def _primary(data: EvaluationData) -> str:
    """LPIPS when it was measured (the papers' perceptual axis), else PSNR."""
    return "lpips" if "lpips" in data.metric_names() else "psnr"


def _line(summary: dict, shift: str, labels: Sequence[str], metric: str) -> str:
    return ", ".join(f"{display(lb)} {_fmt(metric, _value(summary, shift, lb, metric))}" for lb in labels)


def noise_facts(context: dict[str, ExperimentData]) -> dict[str, dict[str, float]]:
    """Per method of experiment 2's noise-energy probe: the median PSNR drop when B is redrawn
    (dB) and the mean B energy of the two finest layers, over the probed images."""
    data = context.get("2-fig1-robustness")
    probes = data.evaluations["robustness"].probes.get("noise-energy", {}) if data else {}
    facts: dict[str, dict[str, float]] = {}
    for label in FIG5_METHODS:
        mine = [r for (_, lb), r in probes.items() if lb == label]
        if mine:
            drops = [r["psnr"] - r["psnr_redrawn"] for r in mine]
            fine = [np.mean([layer["energy"] for layer in r["layers"][-2:]]) for r in mine]
            facts[label] = {"drop": float(np.median(drops)), "fine_energy": float(np.mean(fine)), "n": len(mine)}
    return facts


def _noise_reason(context: dict[str, ExperimentData], winners: Iterable[str]) -> str:
    facts = noise_facts(context)
    named = [w for w in dict.fromkeys(winners)
             if w in NOISE_METHODS and w != SPHINX and w in facts and facts[w]["drop"] >= NOISE_DROP_DB]
    if not named:
        return ""
    parts = [f"{display(w)} loses {facts[w]['drop']:.1f} dB when its noise maps are redrawn (finest-layer "
             f"B energy {facts[w]['fine_energy']:.3g}, 1 for the generator's own maps)" for w in named]
    return ("The methods that beat SPHInX here optimise the noise maps B, and experiment 2 measures how much of "
            "their picture lives there: " + "; ".join(parts) + ". At 64 px the B maps of the finest layers can "
            "carry pixel detail, so a high PSNR can come from memorising the image in B.")


def verdict_fig5(data: ExperimentData, context: dict[str, ExperimentData]) -> Verdict:
    ev = data.evaluations["geometric"]
    summary = ev.summary()
    rule = ("Per shift family, the least-squares slope of the median PSNR against the distance from the aligned "
            "pose (rotation: |degrees|; scaling: |log2 factor|; translation: px at 1024) is computed for every "
            "method. The claim holds for a family when SPHInX (Ps,Pc,B)'s slope is at least every latent "
            "baseline's (W+, (W+,B), (W+,S,B), (Z+,S,B)): its PSNR falls no faster.")
    parts, evidence, winners = [], [], []
    families: dict[str, list[Any]] = {}
    for shift in ev.plan.shifts:
        families.setdefault(shift.family, []).append(shift)
    for family, shifts in families.items():
        distance = {s.name: _distance(s) for s in shifts}
        slopes: dict[str, float] = {}
        for label in (SPHINX, *LATENT_BASELINES):
            points = [(distance[s.name], _value(summary, s.name, label, "psnr")) for s in shifts]
            points = [(d, v) for d, v in points if v is not None]
            if len({d for d, _ in points}) >= 2:
                slopes[label] = float(np.polyfit([d for d, _ in points], [v for _, v in points], 1)[0])
        ok = (all(slopes[SPHINX] >= slopes[b] for b in LATENT_BASELINES)
              if len(slopes) == 1 + len(LATENT_BASELINES) else None)
        parts.append((family, ok))
        unit, scale = SLOPE_UNITS.get(family, ("per unit", 1.0))
        if slopes:
            evidence.append(f"{family}: PSNR slope (dB {unit}): "
                            + ", ".join(f"{display(lb)} {slopes[lb] * scale:+.2f}" for lb in slopes)
                            + {True: " -> holds", False: " -> does not hold", None: " -> undetermined"}[ok])
        strongest = max(shifts, key=lambda s: distance[s.name]).name
        for metric in ev.metric_names():
            values = {lb: _value(summary, strongest, lb, metric) for lb in ev.labels}
            values = {lb: v for lb, v in values.items() if v is not None}
            if values:
                best = (max if metric == "psnr" else min)(values, key=values.get)
                winners.append(best)
                evidence.append(f"{family}, strongest shift {strongest}: best {metric.upper()} {display(best)} "
                                f"{_fmt(metric, values[best])} (SPHInX (Ps,Pc,B) {_fmt(metric, values.get(SPHINX))})")
    status = combine(parts)
    reason = "" if status == HOLDS else _noise_reason(context, winners)
    return Verdict(status, rule, evidence, reason)


#: family -> (slope unit, factor from the fitted slope to that unit)
SLOPE_UNITS = {"rotation": ("per 10 degrees", 10.0), "scaling": ("per octave of scale", 1.0),
               "translation": ("per 100 px", 100.0), "translation-y": ("per 100 px", 100.0)}


def _distance(shift: Any) -> float:
    """How far a geometric shift is from the aligned image (the x of the slope rule)."""
    if shift.family == "scaling":
        return abs(math.log2(shift.severity))
    return abs(float(shift.severity))


def _level_phrase(held: list[str], all_levels: Sequence[Any], unit: str, prefix: str) -> str:
    """'holds only at SNR <= 10 dB' when the levels that hold are the lowest ones, '>= ...' for the
    highest, else the list."""
    values = {s.name: float(s.severity) for s in all_levels}
    ordered = sorted(values, key=values.get)
    held_sorted = sorted(held, key=values.get)
    if held_sorted == ordered[:len(held)]:
        return f"holds only at {prefix} <= {format_number(values[held_sorted[-1]])}{unit}"
    if held_sorted == ordered[-len(held):]:
        return f"holds only at {prefix} >= {format_number(values[held_sorted[0]])}{unit}"
    return f"holds only at {prefix} " + ", ".join(f"{format_number(values[h])}{unit}" for h in held_sorted)


def verdict_fig1(data: ExperimentData, context: dict[str, ExperimentData]) -> Verdict:
    ev = data.evaluations["robustness"]
    summary = ev.summary()
    metric = _primary(ev)
    name = "LPIPS (lower)" if metric == "lpips" else "PSNR (higher)"
    rule = (f"At each SNR level, the median over images of the mean {name} of the perturbed renders to the "
            "unperturbed one is compared: the claim holds at a level when SPHInX (Ps,Pc,B) is more robust than "
            "every latent baseline (W+, (W+,B), (W+,S,B), (Z+,S,B)).")
    parts, evidence = [], []
    for shift in ev.plan.shifts:
        ok = _wins(summary, shift.name, SPHINX, LATENT_BASELINES, metric)
        parts.append((shift.name, ok))
        evidence.append(f"{shift.name}: {metric.upper()} to the unperturbed render: "
                        + _line(summary, shift.name, ev.labels, metric))
    status = combine(parts, lambda held: _level_phrase(held, ev.plan.shifts, " dB", "SNR"))
    facts = noise_facts(context)
    for label, f in facts.items():
        evidence.append(f"{display(label)}: PSNR drop when B is redrawn {f['drop']:.2f} dB, finest-layer B "
                        f"energy {f['fine_energy']:.3g} ({f['n']} image(s))")
    reason = ""
    stored = [lb for lb in NOISE_METHODS if lb in facts and facts[lb]["drop"] >= NOISE_DROP_DB]
    if stored:
        reason = ("The perturbation moves w+ only: " + ", ".join(
            f"{display(lb)} keeps {facts[lb]['drop']:.1f} dB of its PSNR in B" for lb in stored)
            + ", which the perturbation leaves in place, so their renders look more robust than their codes are.")
    return Verdict(status, rule, evidence, reason)


def verdict_fig9(data: ExperimentData, context: dict[str, ExperimentData]) -> Verdict:
    ev = data.evaluations["domains"]
    summary = ev.summary()
    metrics = ev.metric_names()
    others = [lb for lb in ev.labels if lb != SPHINX]
    rule = (f"Per domain, the claim holds when SPHInX (Ps,Pc,B) has the best median "
            f"{' and the best median '.join(m.upper() for m in metrics)} of all methods.")
    parts, evidence, winners = [], [], []
    for shift in ev.plan.shifts:
        outcomes = [_wins(summary, shift.name, SPHINX, others, m) for m in metrics]
        parts.append((shift.name, None if None in outcomes else all(outcomes)))
        for m in metrics:
            evidence.append(f"{shift.name}: {m.upper()} " + _line(summary, shift.name, ev.labels, m))
            values = {lb: _value(summary, shift.name, lb, m) for lb in ev.labels}
            values = {lb: v for lb, v in values.items() if v is not None}
            if values:
                winners.append((max if m == "psnr" else min)(values, key=values.get))
    status = combine(parts, lambda held: "holds only on " + ", ".join(held))
    return Verdict(status, rule, evidence, "" if status == HOLDS else _noise_reason(context, winners))


def verdict_restoration(data: ExperimentData, context: dict[str, ExperimentData]) -> Verdict:
    rule = ("At each noise level and measurement rate, the claim holds when SPHInX (Ps,Pc,B)'s median PSNR to "
            "the clean image is higher than that of (W+,S,B), (Z+,S,B) and ILO.")
    parts, evidence = [], []
    for ev in data.evaluations.values():
        summary = ev.summary()
        others = [lb for lb in ev.labels if lb != SPHINX]
        for shift in ev.plan.shifts:
            parts.append((shift.name, _wins(summary, shift.name, SPHINX, others, "psnr")))
            evidence.append(f"{shift.name}: PSNR " + _line(summary, shift.name, ev.labels, "psnr"))
    return Verdict(combine(parts, lambda held: "holds only at " + ", ".join(held)), rule, evidence)


def verdict_sam(data: ExperimentData, context: dict[str, ExperimentData]) -> Verdict:
    metric = _primary(next(iter(data.evaluations.values())))
    rule = (f"Per shift and per folder, the claim holds when SAM-opt's median {metric.upper()} is better than "
            "both W+'s and F/W+'s.")
    parts, evidence = [], []
    for ev in data.evaluations.values():
        summary = ev.summary()
        for shift in ev.plan.shifts:
            parts.append((shift.name, _wins(summary, shift.name, "sam-opt", ("w+", "fw+"), metric)))
            evidence.append(f"{shift.name}: {metric.upper()} " + _line(summary, shift.name, ev.labels, metric))
    return Verdict(combine(parts, lambda held: "holds only for " + ", ".join(held)), rule, evidence)


def _quality_beats(summary: dict, shift: str, a: str, b: str, metrics: Sequence[str]) -> bool | None:
    outcomes = [_wins(summary, shift, a, (b,), m) for m in metrics]
    return None if None in outcomes else all(outcomes)


def verdict_hyperinverter(data: ExperimentData, context: dict[str, ExperimentData]) -> Verdict:
    ev = data.evaluations["faces"]
    summary, metrics, shift = ev.summary(), ev.metric_names(), ev.plan.shifts[0].name
    rule = ("Three parts, on the medians over images: (i) HyperInverter beats E1 on "
            + " and ".join(m.upper() for m in metrics) + "; (ii) HyperInverter's seconds per image are at most "
            "1/100 of W+'s and of PTI's; (iii) W+ and PTI both beat HyperInverter on "
            + " and ".join(m.upper() for m in metrics) + ".")
    seconds = {lb: (summary.get((shift, lb)) or {}).get("seconds_median") for lb in ev.labels}
    fast = (None if seconds.get("hyperinverter") is None or seconds.get("w+") is None or seconds.get("pti") is None
            else 100 * seconds["hyperinverter"] <= min(seconds["w+"], seconds["pti"]))
    optimised = [_quality_beats(summary, shift, lb, "hyperinverter", metrics) for lb in ("w+", "pti")]
    parts = [("better than E1", _quality_beats(summary, shift, "hyperinverter", "hyperinverter-e1", metrics)),
             ("100x faster than optimisation", fast),
             ("optimisation more faithful", None if None in optimised else all(optimised))]
    evidence = [f"{m.upper()}: " + _line(summary, shift, ev.labels, m) for m in metrics]
    evidence.append("seconds per image: " + ", ".join(
        f"{display(lb)} {s:.3g}" for lb, s in seconds.items() if s is not None))
    return Verdict(combine(parts), rule, evidence)


def _edit_distance(record: dict[str, Any]) -> float:
    return float(np.mean(record.get("edit_lpips", record["edit_rmse"])))


def verdict_fz(data: ExperimentData, context: dict[str, ExperimentData]) -> Verdict:
    ev = data.evaluations["faces"]
    summary, shift = ev.summary(), ev.plan.shifts[0].name
    probes = ev.probes.get("edit", {})
    edit_metric = "LPIPS" if any("edit_lpips" in r for r in probes.values()) else "RMSE"
    rule = ("Two parts, on the medians over images: (i) reconstruction: F/Z+'s PSNR is within 1 dB of F/W+'s "
            "(and its LPIPS within 0.02 where measured); (ii) editability: the "
            f"{edit_metric} between F/Z+'s edited and unedited renders (+-3 sigma along pca:0, mean of both signs) "
            "is at least F/W+'s.")
    psnr_z, psnr_w = _value(summary, shift, "fz+", "psnr"), _value(summary, shift, "fw+", "psnr")
    lp_z, lp_w = _value(summary, shift, "fz+", "lpips"), _value(summary, shift, "fw+", "lpips")
    recon = None if psnr_z is None or psnr_w is None else (
        psnr_z >= psnr_w - 1.0 and (lp_z is None or lp_w is None or lp_z <= lp_w + 0.02))
    edits = {lb: [_edit_distance(r) for (_, l2), r in probes.items() if l2 == lb] for lb in ("w+", "fw+", "fz+")}
    medians = {lb: float(np.median(v)) for lb, v in edits.items() if v}
    editable = (None if "fz+" not in medians or "fw+" not in medians or len(edits["fz+"]) != len(edits["fw+"])
                else medians["fz+"] >= medians["fw+"])
    evidence = [f"{m.upper()}: " + _line(summary, shift, ("w+", "fw+", "fz+"), m) for m in ev.metric_names()]
    evidence.append(f"edit {edit_metric} to the unedited render: " + ", ".join(
        f"{display(lb)} {v:.3f}" for lb, v in medians.items()))
    mismatched = [r["key"] for r in probes.values() if r.get("matches_cell") is False]
    if mismatched:
        evidence.append(f"{len(mismatched)} probe solution(s) differ from their cell's render: {', '.join(mismatched)}")
    return Verdict(combine([("reconstruction", recon), ("editability", editable)]), rule, evidence)


VERDICTS: dict[str, Callable[[ExperimentData, dict[str, ExperimentData]], Verdict]] = {
    "1-fig5-geometric": verdict_fig5, "2-fig1-robustness": verdict_fig1, "3-fig9-domains": verdict_fig9,
    "4-fig10-11-restoration": verdict_restoration, "5a-sam": verdict_sam, "5b-hyperinverter": verdict_hyperinverter,
    "5c-fz-editing": verdict_fz}


# ----------------------------------------------------------------------------- figures
#: Every label in one order, so that a method keeps its colour in every figure.
_ALL_LABELS = ("w+", "w+b", "w+sb", "z+sb", "sphinx-ps", "sphinx", "ilo", "fw+", "fz+", "sam-opt",
               "hyperinverter-e1", "hyperinverter", "pti")
METRIC_AXES = {"psnr": "PSNR (dB) ↑", "lpips": "LPIPS ↓"}
FIGURE_DPI = 72


def _colour(label: str) -> Any:
    import matplotlib
    index = _ALL_LABELS.index(label) if label in _ALL_LABELS else len(_ALL_LABELS)
    return matplotlib.colormaps["tab20" if index >= 10 else "tab10"](index % 10 * 2 if index >= 10 else index)


def _pyplot() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig: Any, path: Path) -> Path:
    from ..inversion.report import save_figure
    fig.tight_layout()
    save_figure(fig, path)
    _pyplot().close(fig)
    return path


def _errorbar(ax: Any, xs: Sequence[float], entries: Sequence[dict], metric: str, label: str, offset: float) -> None:
    med = np.array([e[f"{metric}_median"] for e in entries])
    low = med - np.array([e[f"{metric}_p25"] for e in entries])
    high = np.array([e[f"{metric}_p75"] for e in entries]) - med
    ax.errorbar([x + offset for x in xs], med, yerr=[low, high], marker="o", ms=3.5, capsize=2, lw=1.2,
                color=_colour(label), label=display(label))


def plot_against_severity(evaluations: Sequence[EvaluationData], path: Path, *, x_label: Callable[[Any], str],
                          invert_x: bool = False) -> Path | None:
    """Median (bars: 25th-75th percentile) of each metric against shift severity: one column per
    shift family, one row per metric, one line per method (the papers' axes)."""
    columns = []
    for ev in evaluations:
        families: dict[str, list[Any]] = {}
        for shift in ev.plan.shifts:
            families.setdefault(shift.family, []).append(shift)
        columns += [(ev, family, sorted(shifts, key=lambda s: s.severity)) for family, shifts in families.items()]
    metrics = [m for m in ("psnr", "lpips") if any(m in ev.metric_names() for ev in evaluations)]
    if not metrics or not any(ev.rows for ev in evaluations):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(metrics), len(columns), figsize=(3.3 * len(columns), 2.5 * len(metrics)),
                             dpi=FIGURE_DPI, squeeze=False)
    for j, (ev, family, shifts) in enumerate(columns):
        summary = ev.summary()
        spread = (shifts[-1].severity - shifts[0].severity) or 1.0
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            for k, label in enumerate(ev.labels):
                points = [(s.severity, summary[(s.name, label)]) for s in shifts if (s.name, label) in summary]
                if points and metric in ev.metric_names():
                    offset = (k - (len(ev.labels) - 1) / 2) * 0.012 * spread
                    _errorbar(ax, [x for x, _ in points], [e for _, e in points], metric, label, offset)
            ax.set_title(family, fontsize=9)
            ax.set_xlabel(x_label(shifts[0]), fontsize=8)
            ax.set_ylabel(METRIC_AXES[metric], fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if invert_x:
                ax.invert_xaxis()
        axes[0][j].legend(fontsize=6)
    return _save(fig, path)


def plot_categories(evaluations: Sequence[EvaluationData], path: Path) -> Path | None:
    """Grouped bars (median, 25th-75th percentile whiskers) per shift or folder, one panel per metric."""
    shifts = [(ev, s) for ev in evaluations for s in ev.plan.shifts]
    metrics = [m for m in ("psnr", "lpips") if any(m in ev.metric_names() for ev in evaluations)]
    if not metrics or not any(ev.rows for ev in evaluations):
        return None
    labels = list(dict.fromkeys(lb for ev in evaluations for lb in ev.labels))
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4.5, 0.9 * len(shifts)) * len(metrics) / 1.4, 2.8),
                             dpi=FIGURE_DPI, squeeze=False)
    width = 0.8 / len(labels)
    for ax, metric in zip(axes[0], metrics):
        for k, label in enumerate(labels):
            xs, entries = [], []
            for x, (ev, shift) in enumerate(shifts):
                entry = ev.summary().get((shift.name, label))
                if entry is not None and f"{metric}_median" in entry:
                    xs.append(x + (k - (len(labels) - 1) / 2) * width)
                    entries.append(entry)
            if entries:
                med = np.array([e[f"{metric}_median"] for e in entries])
                err = [med - [e[f"{metric}_p25"] for e in entries], [e[f"{metric}_p75"] for e in entries] - med]
                ax.bar(xs, med, width, yerr=err, capsize=1.5, color=_colour(label), label=display(label))
        ax.set_xticks(range(len(shifts)))
        ax.set_xticklabels([s.name for _, s in shifts], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(METRIC_AXES[metric], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=6)
    return _save(fig, path)


def plot_noise_energy(ev: EvaluationData, path: Path) -> Path | None:
    """Left: the mean square of each layer's noise map in the solutions (mean over images; 1 for
    the generator's own maps). Right: PSNR to the image with B as solved and with B redrawn."""
    probes = ev.probes.get("noise-energy", {})
    if not probes:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 2.8), dpi=FIGURE_DPI)
    labels = [lb for lb in ev.labels if any(l2 == lb for _, l2 in probes)]
    for label in labels:
        mine = [r for (_, l2), r in probes.items() if l2 == label]
        energy = np.mean([[layer["energy"] for layer in r["layers"]] for r in mine], axis=0)
        left.plot(range(len(energy)), energy, marker="o", ms=3, color=_colour(label), label=display(label))
    resolutions = [layer["resolution"] for layer in next(iter(probes.values()))["layers"]]
    left.set_xticks(range(len(resolutions)))
    left.set_xticklabels([f"{i}\n{r}px" for i, r in enumerate(resolutions)], fontsize=6)
    left.set_yscale("log")
    left.set_ylabel("mean B² (N(0,1): 1)", fontsize=8)
    left.set_xlabel("noise layer", fontsize=8)
    left.legend(fontsize=6)
    left.grid(alpha=0.3)
    xs = np.arange(len(labels))
    solved = [np.median([r["psnr"] for (_, l2), r in probes.items() if l2 == lb]) for lb in labels]
    redrawn = [np.median([r["psnr_redrawn"] for (_, l2), r in probes.items() if l2 == lb]) for lb in labels]
    right.bar(xs - 0.2, solved, 0.4, label="B as solved", color="tab:blue")
    right.bar(xs + 0.2, redrawn, 0.4, label="B redrawn ~ N(0,1)", color="tab:gray")
    right.set_xticks(xs)
    right.set_xticklabels([display(lb) for lb in labels], rotation=30, ha="right", fontsize=7)
    right.set_ylabel("PSNR to the image (dB)", fontsize=8)
    right.set_ylim(bottom=min(redrawn + solved) - 3)
    right.legend(fontsize=6)
    right.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_quality_time(ev: EvaluationData, path: Path) -> Path | None:
    """HyperInverter Table 1 as a plot: each method's median metric against seconds per image (log)."""
    summary, shift = ev.summary(), ev.plan.shifts[0].name
    metrics = ev.metric_names()
    points = [(lb, summary[(shift, lb)]) for lb in ev.labels if (shift, lb) in summary]
    if not points or not metrics:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.8 * len(metrics), 2.8), dpi=FIGURE_DPI, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, entry in points:
            x = max(float(entry["seconds_median"]), 1e-3)
            ax.scatter([x], [entry[f"{metric}_median"]], color=_colour(label), s=25)
            ax.annotate(display(label), (x, entry[f"{metric}_median"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("seconds per image (log)", fontsize=8)
        ax.set_ylabel(METRIC_AXES[metric], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_reconstruction_editing(ev: EvaluationData, path: Path) -> Path | None:
    """F/Z+: each method's median reconstruction metric against the median size of its edits."""
    probes, summary, shift = ev.probes.get("edit", {}), ev.summary(), ev.plan.shifts[0].name
    metric = _primary(ev)
    labels = [lb for lb in ("w+", "fw+", "fz+") if any(l2 == lb for _, l2 in probes) and (shift, lb) in summary]
    if not labels:
        return None
    edit_metric = "LPIPS" if any("edit_lpips" in r for r in probes.values()) else "RMSE"
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.0), dpi=FIGURE_DPI)
    for label in labels:
        x = summary[(shift, label)][f"{metric}_median"]
        y = float(np.median([_edit_distance(r) for (_, l2), r in probes.items() if l2 == label]))
        ax.scatter([x], [y], color=_colour(label), s=30)
        ax.annotate(display(label), (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"reconstruction {METRIC_AXES[metric]}", fontsize=8)
    ax.set_ylabel(f"edit {edit_metric} to the unedited render ↑", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def experiment_figures(data: ExperimentData, folder: Path) -> list[tuple[str, Path]]:
    """The experiment's figures (caption, path), written under ``folder``."""
    exp, evs = data.experiment, list(data.evaluations.values())
    base = folder / exp.id
    figures: list[tuple[str, Path | None]] = []
    if exp.id == "1-fig5-geometric":
        figures.append(("PSNR and LPIPS against shift severity (Fig. 5's axes)", plot_against_severity(
            evs, base.with_suffix(".png"), x_label=lambda s: s.unit)))
    elif exp.id == "2-fig1-robustness":
        figures.append(("LPIPS and PSNR of the perturbed renders to the unperturbed one against the SNR of the w+ "
                        "perturbation (Fig. 1's axes; the noise grows to the right)", plot_against_severity(
                            evs, base.with_suffix(".png"), x_label=lambda s: "SNR (dB)", invert_x=True)))
        figures.append(("Noise maps B of each solution: per-layer energy, and PSNR with B redrawn",
                        plot_noise_energy(evs[0], folder / f"{exp.id}-noise.png")))
    elif exp.id == "4-fig10-11-restoration":
        figures.append(("PSNR (and LPIPS) to the clean image against noise std and measurement rate "
                        "(Figs. 10-11's axes)", plot_against_severity(evs, base.with_suffix(".png"),
                                                                      x_label=lambda s: s.unit)))
    elif exp.id in ("3-fig9-domains", "5a-sam"):
        figures.append(("Median per domain or shift (whiskers: 25th-75th percentile)",
                        plot_categories(evs, base.with_suffix(".png"))))
    elif exp.id == "5b-hyperinverter":
        figures.append(("Quality against seconds per image (Table 1 as a plot)",
                        plot_quality_time(evs[0], base.with_suffix(".png"))))
    elif exp.id == "5c-fz-editing":
        figures.append(("Reconstruction against the size of a ±3σ edit",
                        plot_reconstruction_editing(evs[0], base.with_suffix(".png"))))
    return [(caption, path) for caption, path in figures if path is not None]


# ----------------------------------------------------------------------------- the report
def duration(seconds: float) -> str:
    """``41 s``, ``12.5 min``, ``3.2 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def metric_table(ev: EvaluationData, metric: str) -> str:
    """Shifts x methods, the median over the finished images (best in bold), ``(n/N)`` where images are missing."""
    summary = ev.summary()
    higher = metric != "lpips"
    lines = ["| shift | " + " | ".join(display(lb) for lb in ev.labels) + " |", "|---|" + "---|" * len(ev.labels)]
    for shift in ev.plan.shifts:
        expected = len(ev.plan.images[shift.name])
        values = {lb: _value(summary, shift.name, lb, metric) for lb in ev.labels}
        present = [v for v in values.values() if v is not None]
        best = (max(present) if higher else min(present)) if len(present) > 1 else None
        cells = []
        for label in ev.labels:
            value = values[label]
            if value is None:
                cells.append("–")
                continue
            text = f"{value:.2f}" if metric == "psnr" else f"{value:.3f}"
            n = summary[(shift.name, label)]["n"]
            text = f"**{text}**" if value == best else text
            cells.append(text + (f" ({n}/{expected})" if n < expected else ""))
        lines.append(f"| {shift.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_table(ev: EvaluationData) -> str:
    """Per method: planned steps, the steps the finished cells ran, learning rate, schedule, LPIPS weight."""
    lines = ["| method | registry name / preset | steps | steps run | lr | schedule | LPIPS weight |",
             "|---|---|---|---|---|---|---|"]
    for m in ev.plan.methods:
        s = m.settings()
        if m.name.startswith("hyperinverter"):
            steps = "one forward pass"
        else:
            steps = str(s["steps"]) + (f" + {s['pivot_steps']} pivot" if "pivot_steps" in s else "")
            steps += " (4 rounds)" if m.name == "ilo" else ""
        ran = sorted(set(ev.steps.get(m.label, [])))
        overrides = {k: v for k, v in m.overrides if k not in ("steps", "pivot_steps", "lambda_lpips")}
        name = f"`{m.name}`" + (f" / `{m.resolved_preset()}`" if m.resolved_preset() else "")
        name += "".join(f", {k}={v}" for k, v in overrides.items())
        lines.append(f"| {display(m.label)} | {name} | {steps} | {', '.join(map(str, ran)) or '–'} | {s['lr']} | "
                     f"{s.get('schedule', 'constant')} | {s['lambda_lpips']} |")
    return "\n".join(lines)


def noise_table(ev: EvaluationData) -> str:
    probes = ev.probes.get("noise-energy", {})
    if not probes:
        return ""
    resolutions = [layer["resolution"] for layer in next(iter(probes.values()))["layers"]]
    lines = ["| method | B optimised | " + " | ".join(f"B{i} ({r} px)" for i, r in enumerate(resolutions))
             + " | PSNR | PSNR, B redrawn | drop (dB) | same solution as the cell |",
             "|---|---|" + "---|" * len(resolutions) + "---|---|---|---|"]
    for label in ev.labels:
        mine = [r for (_, l2), r in probes.items() if l2 == label]
        if not mine:
            continue
        energy = np.mean([[layer["energy"] for layer in r["layers"]] for r in mine], axis=0)
        solved = float(np.median([r["psnr"] for r in mine]))
        redrawn = float(np.median([r["psnr_redrawn"] for r in mine]))
        same = sum(r.get("matches_cell") is True for r in mine)
        lines.append(f"| {display(label)} | {'yes' if mine[0]['optimised_noise'] else 'no'} | "
                     + " | ".join(f"{e:.3g}" for e in energy)
                     + f" | {solved:.2f} | {redrawn:.2f} | {solved - redrawn:.2f} | {same}/{len(mine)} |")
    return "\n".join(lines)


def time_table(ev: EvaluationData) -> str:
    summary, shift = ev.summary(), ev.plan.shifts[0].name
    metrics = ev.metric_names()
    lines = ["| method | " + " | ".join(m.upper() for m in metrics) + " | seconds per image | images |",
             "|---|" + "---|" * len(metrics) + "---|---|"]
    for label in ev.labels:
        entry = summary.get((shift, label))
        if entry is not None:
            lines.append(f"| {display(label)} | " + " | ".join(_fmt(m, entry.get(f"{m}_median")) for m in metrics)
                         + f" | {entry['seconds_median']:.3g} | {entry['n']} |")
    return "\n".join(lines)


def edit_table(ev: EvaluationData) -> str:
    probes = ev.probes.get("edit", {})
    if not probes:
        return ""
    key = "edit_lpips" if any("edit_lpips" in r for r in probes.values()) else "edit_rmse"
    lines = [f"| method | reconstruction PSNR | edit {key[5:].upper()} at -3σ | at +3σ | same solution as the cell |",
             "|---|---|---|---|---|"]
    for label in ("w+", "fw+", "fz+"):
        mine = [r for (_, l2), r in probes.items() if l2 == label]
        if mine:
            per_strength = np.median([r[key] for r in mine], axis=0)
            lines.append(f"| {display(label)} | {np.median([r['psnr'] for r in mine]):.2f} | {per_strength[0]:.3f} | "
                         f"{per_strength[1]:.3f} | {sum(r.get('matches_cell') is True for r in mine)}/{len(mine)} |")
    return "\n".join(lines)


def _images_line(ev: EvaluationData) -> str:
    folders: dict[str, list[str]] = {}
    for refs in ev.plan.images.values():
        for ref in refs:
            names = folders.setdefault(ref.path.parent.name, [])
            if ref.path.name not in names:
                names.append(ref.path.name)
    return "; ".join(f"`{folder}/` ({len(names)}): {', '.join(names)}" for folder, names in folders.items())


def _status_line(data: ExperimentData) -> str:
    if data.complete:
        state = f"complete ({data.total} cells)"
    elif data.done:
        state = f"**incomplete: {data.done} of {data.total} cells** (the verdict is provisional)"
    else:
        state = f"**not started: 0 of {data.total} cells**"
    label = "the papers' budgets" if data.budget.evidence else "**smoke test, not the papers' budgets: no evidence**"
    return f"budget {data.budget.describe()} ({label}); {state}"


def _time_line(data: ExperimentData) -> str:
    optimisation = sum(e.cell_seconds for e in data.evaluations.values())
    wall = sum(t.get("wall_s", 0.0) for t in data.timing)
    cpu = sum(t.get("cpu_s", 0.0) for t in data.timing)
    commits = sorted({t.get("commit", "unknown") for t in data.timing})
    text = (f"optimisation time in the finished cells {duration(optimisation)} (sum over cells of the per-image "
            f"wall time); {len(data.timing)} evaluation run(s): wall {duration(wall)}, CPU {duration(cpu)}")
    if any(t.get("ray") for t in data.timing):
        text += " (CPU time of Ray workers is not counted)"
    return text + (f"; computed at commit(s) {', '.join(f'`{c}`' for c in commits)}" if commits else "")


def experiment_section(data: ExperimentData, verdict: Verdict, figures: Sequence[tuple[str, Path]],
                       report_dir: Path) -> str:
    exp = data.experiment
    lines = [f"## Experiment {exp.number}: {exp.title}", "", f"**Claim.** {exp.claim}", "",
             f"**Verdict: {verdict.status}.**" + ("" if data.budget.evidence else
                                                  f" (budget `{data.budget.name}`: smoke test only)"),
             "", f"- Status: {_status_line(data)}.", f"- Time: {_time_line(data)}."]
    for ev in data.evaluations.values():
        lines.append(f"- `{ev.evaluation.id}` ({ev.config.suite} suite; shifts "
                     f"{', '.join(f'`{s.name}`' for s in ev.plan.shifts)}): images {_images_line(ev)}.")
    if exp.notes:
        lines.append(f"- {exp.notes}")
    lines.append("")
    for caption, path in figures:
        lines += [f"![{caption}]({os.path.relpath(path, report_dir)})", "", f"*{caption}.*", ""]
    for ev in data.evaluations.values():
        if exp.id == "5c-fz-editing":
            table = edit_table(ev)
            lines += [table, ""] if table else ["No editing probe has finished yet.", ""]
            continue
        lines += [f"### {ev.evaluation.id}: medians over images", ""]
        if exp.id == "5b-hyperinverter":
            lines += [time_table(ev), ""]
        else:
            for metric in ev.metric_names():
                lines += [f"{METRIC_AXES[metric]}" + (" to the unperturbed render" if ev.config.suite == "robustness"
                                                       else ""), "", metric_table(ev, metric), ""]
        if not ev.rows:
            lines += ["No cell has finished yet.", ""]
        if "noise-energy" in ev.evaluation.probes:
            table = noise_table(ev)
            lines += ["Noise maps of the solutions (mean B² per layer over images; the generator's own maps: 1), "
                      "and the median PSNR to the image with B as solved and with B redrawn from N(0, 1):", "",
                      table or "No probe has finished yet.", ""]
        lines += ["Step budget:", "", budget_table(ev), ""]
    lines += [f"**Rule.** {verdict.rule}", ""]
    if verdict.evidence:
        lines += ["**Evidence.**", ""] + [f"- {e}" for e in verdict.evidence] + [""]
    if verdict.reason:
        lines += [f"**Reason.** {verdict.reason}", ""]
    return "\n".join(lines)


def write_reproduction_report(out: str | Path, report: str | Path,
                              log: Log = print) -> dict[str, tuple[ExperimentData | None, Verdict]]:
    """Render ``report`` (markdown) and its figures (``<report folder>/reproduction/``) from every
    cell and probe under ``out``; computes nothing. Per experiment, the papers' budget is shown
    when it has a finished cell, else the largest other budget that has one (see
    :func:`discover_runs`). Returns experiment id -> (data shown, verdict)."""
    out, report = Path(out), Path(report)
    figures_dir = report.parent / "reproduction"
    runs = discover_runs(out)
    if not runs:
        raise GanInvertError(f"{out} holds no reproduction run (no <budget>/{RUN_RECORD})")
    chosen = {exp.id: choose_data(out, runs, exp) for exp in EXPERIMENTS}
    context = {k: v for k, v in chosen.items() if v is not None}
    results: dict[str, tuple[ExperimentData | None, Verdict]] = {}
    sections = []
    for exp in EXPERIMENTS:
        data = chosen[exp.id]
        if data is None:
            verdict = Verdict(UNDETERMINED, "not run")
            sections.append(f"## Experiment {exp.number}: {exp.title}\n\n**Claim.** {exp.claim}\n\n"
                            "**Verdict: undetermined.** Not run at any budget yet.\n")
        else:
            verdict = VERDICTS[exp.id](data, context)
            sections.append(experiment_section(data, verdict, experiment_figures(data, figures_dir), report.parent))
        results[exp.id] = (data, verdict)
    text = _report_header(out, results) + "\n" + "\n".join(sections) + _report_footer()
    atomic_write_bytes(report, text.encode())
    log(f"wrote {report} and its figures in {figures_dir}")
    return results


def _report_header(out: Path, results: dict[str, tuple[ExperimentData | None, Verdict]]) -> str:
    from ..version import __version__
    shown = [d for d, _ in results.values() if d is not None]
    first = next(iter(shown[0].evaluations.values()))
    options = shown[0].options
    lpips = (f"LPIPS (AlexNet v0.1) in every loss that uses it and as a metric (`{Path(first.plan.lpips_files[0]).name}`)"
             if options.use_lpips and first.plan.lpips_files else
             "**LPIPS off**: every method ran with MSE only (lambda_lpips = 0), which is not the papers' loss")
    lines = ["# Reproducing the seed papers' claims", "",
             "Generated by `ganinvert reproduce` (`ganinvert/evaluation/reproduce.py`) from the cells under "
             f"`{out}`; do not edit by hand. Each experiment states the paper's claim, shows our plot on the paper's "
             "axes and the table, its step budget and time, and a verdict computed from the numbers by the rule "
             "given with it.", "",
             f"- Generator: the bundled 64 px face generator (`--generator default`, sha256 "
             f"`{first.plan.generator_sha256[:16]}…`, `ganinvert/assets/MODEL_CARD.md`).",
             f"- Images: `{options.images_root}` (the shared data folder, not in the repository): the first "
             "images, sorted by name, of the folders each experiment names.",
             f"- Metrics: PSNR on images in [0, 1]; {lpips}.",
             f"- Code: ganinvert {__version__}, report rendered at commit `{source_commit()}`; the commits the "
             "cells were computed at are listed per experiment.",
             "- Budgets: `full` = the papers' budgets (>= 2000 steps, or each method's own in experiment 5; "
             "6 images); `quick` = 200 steps, 2 images, 2 shifts: a smoke test of the pipeline whose numbers are "
             "never evidence.", "", "## Verdicts", "",
             "| # | claim | budget | cells | verdict |", "|---|---|---|---|---|"]
    cpu_total = 0.0
    incomplete = []
    for exp in EXPERIMENTS:
        data, verdict = results[exp.id]
        if data is None:
            lines.append(f"| {exp.number} | {exp.title} | – | not run | {verdict.status} |")
            incomplete.append(exp.number)
            continue
        if exp.id != "5c-fz-editing":  # 5c reuses 5b's run
            cpu_total += sum(t.get("cpu_s", 0.0) for t in data.timing)
        budget = data.budget.name + ("" if data.budget.evidence else " (smoke test)")
        status = verdict.status + ("" if data.complete else " (provisional)")
        lines.append(f"| {exp.number} | {exp.title} | {budget} | {data.done}/{data.total} | {status} |")
        if not (data.complete and data.budget.evidence):
            incomplete.append(exp.number)
    lines += ["", f"CPU time of the invocations shown: {duration(cpu_total)}."]
    if incomplete:
        lines += ["", f"**Incomplete at the papers' budgets: experiment(s) {', '.join(incomplete)}.** Their "
                  "verdicts are provisional (computed on the finished cells) or come from the quick smoke test, "
                  "which is not evidence for or against a claim. Re-run the command below to continue: only the "
                  "missing cells are computed."]
    return "\n".join(lines) + "\n"


def _report_footer() -> str:
    return "\n".join([
        "## How to reproduce", "",
        "```bash",
        "ganinvert reproduce --out runs/repro --workers 2             # the papers' budgets (hours on a CPU)",
        "ganinvert reproduce --out runs/repro --quick                 # smoke test: 2 images, 200 steps, 2 shifts",
        "ganinvert reproduce --out runs/repro --report-only --report docs/REPRODUCTION.md   # re-render only",
        "```", "",
        "Every (image, shift, method) cell is written to `runs/repro/<budget>/<experiment>/<evaluation>/cells/` "
        "when it finishes; a killed run continues where it stopped, and a finished one only re-renders the "
        "report. Each evaluation folder also holds the evaluation's own `report.md`, `results.csv` and example "
        "grids.", ""])
