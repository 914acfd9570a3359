"""Plan an evaluation as independent cells, run the missing ones (in-process, in worker processes or
on Ray) and keep every finished cell on disk.

A *cell* is one (image, shift, method): one inversion and its metrics. Grouped suites
(robustness) make one cell per (image, method) that scores every shift. Each cell

* has a seed derived from (``seed``, image name, shift, method) by SHA-256 (:func:`derive_seed`),
  and a measurement seed from (``seed``, image name, shift) so every method sees the same noisy or
  compressed measurement; nothing depends on which worker runs it or in which order;
* is written as ``OUT/cells/<suite>/<shift>/<image>/<method>.json`` (plus its PNGs) atomically by
  the driver as soon as it finishes. The JSON holds a *fingerprint* of everything that determines
  the result (suite options, shift, image bytes, method and full settings, seeds, generator and
  LPIPS weight hashes, ganinvert version; not the device, thread count or batch size); a cell
  whose JSON exists with the same fingerprint is never recomputed, so re-running the same command
  does no work, a changed input recomputes exactly the cells it affects, and a killed run loses
  only the work in flight.

Cells are run in *units*: ``batch_size`` cells of one shift and method (consecutive images of the
plan) inverted as one batch, each image with its own seed (the engine keeps images independent;
batching only amortises the generator's passes, ~1.8x faster on a CPU at 64 px, far more on a
GPU). Units are fixed by the plan, so a resumed run batches exactly as an uninterrupted one.

Workers return their outputs to the driver instead of writing them, so a Ray cluster needs no
shared output folder; the image files, the generator checkpoint and the LPIPS weights must be
readable at the same paths on every node (``--generator default`` ships with the package).

Bitwise-identical metrics between a local and a Ray run need the same torch thread count per unit
(``threads``, default ``cores // workers`` on the driver's machine, used for both paths) and the
same batch size; metrics are rounded to :data:`METRIC_DECIMALS` decimals. ``seconds`` (the
optimisation's wall time per image: a unit's time divided by its size) is the only column that
differs between runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import GanInvertError
from ..models.loading import file_sha256
from .cells import CELL_FORMAT, read_cell, write_cell
from .plan import CellTask, EvaluationConfig, Plan, RunStats, Unit
from .suites import ImageRef, Problem, make_suite, safe_name

#: Decimals of PSNR / SSIM / LPIPS in the cells and results.csv (rounded once, in the worker).
METRIC_DECIMALS = 4
SECONDS_DECIMALS = 3
#: ``--ray`` given without an address: start a local Ray instance.
RAY_LOCAL = "local"

Log = Callable[[str], None]


# ----------------------------------------------------------------------------- seeds and hashes
def derive_seed(*parts: Any) -> int:
    """A seed in [0, 2**31) from the parts' text, the same on every machine and Python process.

    >>> derive_seed(0, "img", "rot10", "w+") == derive_seed(0, "img", "rot10", "w+")
    True
    """
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def default_threads(workers: int) -> int:
    """Torch threads per worker: the cores this process may use, split evenly."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


# ----------------------------------------------------------------------------- planning
def plan_evaluation(config: EvaluationConfig, threads: int, batch_size: int = 1) -> Plan:
    """Validate ``config`` and list its cells and units (nothing heavy is loaded).

    A unit is up to ``batch_size`` cells of one shift group and method, images in plan order,
    inverted together. Units depend on the plan only, never on what is already done, so a
    resumed run batches exactly as an uninterrupted one.
    """
    from ..version import __version__
    from ..models.loading import resolve_generator_path

    suite = make_suite(config.suite, **config.suite_options)
    if config.seed < 0:
        raise GanInvertError(f"--seed must be >= 0, got {config.seed}")
    if config.max_images is not None and config.max_images <= 0:
        raise GanInvertError(f"--max-images must be > 0, got {config.max_images}")
    if threads <= 0:
        raise GanInvertError(f"--threads must be > 0, got {threads}")
    if batch_size <= 0:
        raise GanInvertError(f"--batch-size must be > 0, got {batch_size}")
    methods = list(config.methods)
    if not methods:
        raise GanInvertError("no methods given")
    settings = {m.label: m.settings() for m in methods}   # validates names, presets and overrides
    groups = suite.plan(config.images, config.shifts, config.max_images)
    generator_sha = file_sha256(resolve_generator_path(config.generator))
    lpips_files: list[str] = []
    lpips_hashes: list[str] = []
    if config.use_lpips:
        from ..metrics import resolve_lpips_weights
        files = resolve_lpips_weights(config.lpips_weights).files
        lpips_files = [str(f.absolute()) for f in files]
        lpips_hashes = [file_sha256(f) for f in files]
    image_hashes: dict[Path, str] = {}

    def image_sha(path: Path) -> str:
        if path not in image_hashes:
            image_hashes[path] = file_sha256(path)
        return image_hashes[path]

    lpips_spec = os.pathsep.join(lpips_files) if config.use_lpips else None
    # Absolute paths: Ray workers need not share the driver's working directory.
    generator = config.generator if config.generator == "default" else str(Path(config.generator).absolute())
    tasks: list[CellTask] = []
    units: list[tuple[CellTask, ...]] = []
    shifts = [shift for shift, _ in groups]
    images = {shift.name: refs for shift, refs in groups}
    # Grouped suites: one cell per (image, method) over every shift, seeded independently of the
    # shifts chosen so that the inversion is the same whichever levels are scored.
    cell_groups = ([(tuple(s.name for s in shifts), "all", groups[0][1])] if suite.grouped
                   else [((shift.name,), shift.name, refs) for shift, refs in groups])
    for shift_names, group, refs in cell_groups:
        by_method: dict[str, list[CellTask]] = {m.label: [] for m in methods}
        for ref in refs:
            for method in methods:
                seed = derive_seed(config.seed, ref.name, suite.name if suite.grouped else shift_names[0],
                                   method.label)
                measurement_seed = derive_seed(config.seed, ref.name, shift_names[0], "measurement")
                identity = {
                    "format": CELL_FORMAT, "ganinvert": __version__, "suite": suite.name,
                    "suite_options": suite.options(),
                    "shifts": list(shift_names), "image_sha256": image_sha(ref.path), "method": method.name,
                    "settings": settings[method.label], "seed": seed, "measurement_seed": measurement_seed,
                    "generator_sha256": generator_sha, "lpips_sha256": lpips_hashes}
                fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
                key = "/".join([safe_name(suite.name), safe_name(group), ref.name, safe_name(method.label)])
                by_method[method.label].append(CellTask(
                    key=key, fingerprint=fingerprint, suite=suite.name, suite_options=dict(config.suite_options),
                    shift_names=shift_names, image=ref.name, image_path=str(ref.path.absolute()),
                    method=method.name, preset=method.preset, label=method.label, settings=dict(method.overrides),
                    seed=seed, measurement_seed=measurement_seed, generator=generator, device=config.device,
                    lpips_weights=lpips_spec, threads=threads))
        for cells in by_method.values():
            units.extend(tuple(cells[i:i + batch_size]) for i in range(0, len(cells), batch_size))
        tasks.extend(t for i in range(len(refs)) for t in (cells[i] for cells in by_method.values()))
    keys: set[str] = set()
    for task in tasks:  # image names are unique by construction; method labels and shift names may still meet
        if task.key in keys:
            raise GanInvertError(f"two cells would both be written as cells/{task.key}.json; give the methods or "
                                 "shifts names that differ in letters, digits, '.', '_', '+' or '-'")
        keys.add(task.key)
    return Plan(suite, shifts, images, methods, tasks, units, generator_sha, lpips_files)


# ----------------------------------------------------------------------------- one cell (worker side)
_RESOURCES: dict[tuple, tuple[Any, Any]] = {}


def _resources(generator: str, device: str, lpips_weights: str | None) -> tuple[Any, Any]:
    """Generator and LPIPS module, loaded once per worker process."""
    key = (generator, device, lpips_weights)
    if key not in _RESOURCES:
        from ..metrics import LPIPS
        from ..models import load_generator
        G = load_generator(generator, device)
        lpips = LPIPS(weights=lpips_weights).to(device) if lpips_weights else None
        _RESOURCES[key] = (G, lpips)
    return _RESOURCES[key]


def _png_bytes(image: torch.Tensor) -> bytes:
    from ..io import tensor_to_pil
    buf = io.BytesIO()
    tensor_to_pil(image[:1]).save(buf, format="PNG")
    return buf.getvalue()


def _round(value: float, decimals: int) -> float:
    return round(float(value), decimals) if value == value and abs(value) != float("inf") else float(value)


class _PerImageOperator:
    """Applies image i's own operator to row i of a batch (e.g. one compressed-sensing matrix each)."""

    def __init__(self, operators: Sequence[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self.operators = list(operators)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([op(x[i:i + 1]) for i, op in enumerate(self.operators)])


def _stack(problems: Sequence[Problem], name: str) -> torch.Tensor | None:
    values = [getattr(p, name) for p in problems]
    return None if values[0] is None else torch.cat(values)


def run_unit(unit: Sequence[CellTask]) -> list[dict[str, Any]]:
    """Compute the cells of one unit (same shift group and method, a fixed batch of images):
    one batched inversion, then each cell's record (rows of metrics) and PNG files, as bytes.

    Runs in any process; writes nothing. Uses ``threads`` torch threads.
    """
    from ..inversion import invert

    first = unit[0]
    torch.set_num_threads(first.threads)
    G, lpips = _resources(first.generator, first.device, first.lpips_weights)
    device = G.w_avg.device
    suite = make_suite(first.suite, **first.suite_options)
    shifts = [suite.parse_shift(name) for name in first.shift_names]
    problems = []
    for task in unit:
        problem = suite.problem(ImageRef(task.image, Path(task.image_path)), shifts[0], G.resolution,
                                task.measurement_seed)
        for name in ("clean", "reference", "target", "measurement", "shown"):
            value = getattr(problem, name)
            if value is not None:
                setattr(problem, name, value.to(device))
        problems.append(problem)
    operator = problems[0].operator
    if operator is not None and len(problems) > 1:
        operator = _PerImageOperator([p.operator for p in problems])
    result = invert(G, _stack(problems, "target"), first.method, preset=first.preset, settings=first.settings,
                    operator=operator, measurement=_stack(problems, "measurement"), seed=[t.seed for t in unit],
                    lpips=lpips, progress=False)
    seconds = round(result.seconds / len(unit), SECONDS_DECIMALS)
    outputs = []
    for i, (task, problem) in enumerate(zip(unit, problems)):
        single = result.select(i)
        scores = suite.score(G, single, problem, shifts, lpips, derive_seed(task.seed, "score"))
        rows = [{"suite": suite.name, "shift": shift.name, "family": shift.family, "severity": shift.severity,
                 "image": task.image, "method": task.label,
                 **{k: _round(v, METRIC_DECIMALS) for k, v in metrics.items()},
                 "seconds": seconds, "seed": task.seed} for shift, metrics in zip(shifts, scores)]
        slug = task.key.rsplit("/", 1)[1]
        with torch.no_grad():
            files = {f"{slug}.png": _png_bytes(single.render(G)), "clean.png": _png_bytes(problem.clean)}
        if problem.shown is not None:
            files["input.png"] = _png_bytes(problem.shown)
        record = {"format": CELL_FORMAT, "fingerprint": task.fingerprint, "key": task.key, "suite": suite.name,
                  "shifts": list(task.shift_names), "image": task.image, "method": task.label, "seed": task.seed,
                  "measurement_seed": task.measurement_seed, "batch": [t.image for t in unit],
                  "steps": len(result.history.get("loss", [])), "rows": rows, "files": sorted(files)}
        outputs.append({"key": task.key, "record": record, "files": files})
    return outputs


# ----------------------------------------------------------------------------- driver side
def _describe(record: dict[str, Any]) -> str:
    rows = record["rows"]
    if len(rows) != 1:
        return f"{len(rows)} shifts ({rows[0]['seconds']:.1f} s)"
    r = rows[0]
    lp = f", LPIPS {r['lpips']:.3f}" if "lpips" in r else ""
    return f"PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}{lp} ({r['seconds']:.1f} s)"


def execute(plan: Plan, out: Path, *, workers: int = 1, ray_address: str | None = None,
            log: Log = print) -> RunStats:
    """Run every unit of ``plan`` that has a cell ``out`` does not hold yet; see the module docstring.

    ``workers`` > 1 runs units in that many spawned processes; ``ray_address`` (``"local"`` or a
    cluster address) runs them as Ray tasks instead. A unit with some cells done is recomputed
    whole (its batch must stay as planned), rewriting those cells with the same results.
    """
    if workers <= 0:
        raise GanInvertError(f"--workers must be > 0, got {workers}")
    started = time.perf_counter()
    todo = [unit for unit in plan.units if any(read_cell(out, t) is None for t in unit)]
    to_run = sum(len(unit) for unit in todo)
    log(f"{len(plan.tasks)} cells: {len(plan.tasks) - to_run} already done, {to_run} to run")
    finished = 0

    def finish(outputs: list[dict[str, Any]]) -> None:
        nonlocal finished
        for output in outputs:
            write_cell(out, output)
            finished += 1
            log(f"[{finished}/{to_run}] {output['key']}: {_describe(output['record'])}")

    if todo:
        if ray_address is not None:
            _execute_ray(todo, finish, ray_address, workers)
        elif workers == 1:
            threads_before = torch.get_num_threads()
            try:
                for unit in todo:
                    finish(run_unit(unit))
            finally:
                torch.set_num_threads(threads_before)
                _RESOURCES.clear()
        else:
            _execute_processes(todo, finish, workers)
    return RunStats(len(plan.tasks), len(plan.tasks) - to_run, finished, time.perf_counter() - started)


def _execute_processes(todo: Sequence[Unit], finish: Callable[[list], None], workers: int) -> None:
    # spawn, not fork: forking a process that already runs torch threads can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context) as pool:
        pending = {pool.submit(run_unit, unit) for unit in todo}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    finish(future.result())
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _execute_ray(todo: Sequence[Unit], finish: Callable[[list], None], address: str, workers: int) -> None:
    try:
        import ray
    except ImportError:
        raise GanInvertError("--ray needs the optional dependency Ray: pip install 'ganinvert[ray]'") from None
    first = todo[0][0]
    own_instance = not ray.is_initialized()
    if own_instance:
        if address == RAY_LOCAL:
            ray.init(num_cpus=workers * first.threads, include_dashboard=False, logging_level="WARNING",
                     log_to_driver=False)
        else:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    try:
        options: dict[str, Any] = {"num_cpus": first.threads}
        if first.device.startswith("cuda"):
            # Ray assigns each task its GPU through CUDA_VISIBLE_DEVICES; `workers` tasks share one.
            options["num_gpus"] = 1 / workers
            todo = [tuple(CellTask(**{**asdict(t), "device": "cuda"}) for t in unit) for unit in todo]
        remote = ray.remote(**options)(run_unit)
        pending = [remote.remote(unit) for unit in todo]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                try:
                    outputs = ray.get(done[0])
                except ray.exceptions.RayTaskError as exc:
                    # Report a user error (e.g. an unreadable image) as its own one line, not Ray's traceback.
                    if isinstance(getattr(exc, "cause", None), GanInvertError):
                        raise exc.cause from None
                    raise
                finish(outputs)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        if own_instance:
            ray.shutdown()


# ----------------------------------------------------------------------------- the whole evaluation
def collect_rows(plan: Plan, out: Path) -> list[dict[str, Any]]:
    """Every row of every finished cell of ``plan``, in the deterministic report order."""
    order = plan.row_order()
    rows = []
    for task in plan.tasks:
        record = read_cell(out, task)
        if record is None:
            raise GanInvertError(f"cell {task.key} has not been computed")
        rows.extend(record["rows"])
    return sorted(rows, key=lambda r: order[(r["shift"], r["image"], r["method"])])


def run_evaluation(config: EvaluationConfig, out: str | Path, *, workers: int = 1, threads: int | None = None,
                   batch_size: int = 1, ray_address: str | None = None, grid_images: int = 4,
                   log: Log = print) -> RunStats:
    """Plan, run the missing cells, and (re)build every output under ``out``.

    Example:
        >>> config = EvaluationConfig("ood-geometric", (Path("faces"),), tuple(parse_methods("w+,sphinx")),
        ...                           shifts=("rot10", "tx50"), use_lpips=False)  # doctest: +SKIP
        >>> run_evaluation(config, "eval-out", workers=2)  # doctest: +SKIP
    """
    from .report import write_report

    out = Path(out)
    threads = threads if threads is not None else default_threads(workers)
    plan = plan_evaluation(config, threads, batch_size)
    stats = execute(plan, out, workers=workers, ray_address=ray_address, log=log)
    write_report(plan, config, collect_rows(plan, out), out, grid_images=grid_images)
    log(f"ran {stats.computed} cell(s) in {stats.seconds:.1f} s; wrote {out / 'results.csv'}, "
        f"{out / 'summary.md'} and {out / 'report.md'}")
    return stats
