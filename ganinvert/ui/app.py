"""The page of ``ganinvert ui``: four tabs (Invert, Edit, Restore, Robustness / SPHInX draws) laid
out with Gradio and wired to :mod:`.handlers`.

Every event catches what it raises: a :class:`~ganinvert.errors.GanInvertError` becomes its
one-line message in the tab's status line; anything else becomes a one-line "internal error" there
(its traceback goes to the server's stderr, never to the page).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any, Iterator

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home, before gradio is imported

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402  (a gradio dependency)

from ..errors import GanInvertError  # noqa: E402
from ..inversion import list_methods  # noqa: E402
from . import handlers as h  # noqa: E402

# render_children on every tab: gradio 5 leaves a component type unrendered in a tab that is not
# shown first when no component of that type is on the first tab.
# System fonts: the default theme fetches Google fonts, and the page must work offline.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
CSS = """
.status p { margin: 0; }
.status-error { color: var(--error-text-color); }
img { image-rendering: pixelated; }
progress { width: 100%; }
"""
RESULT_PICKERS = 4  # edit, interpolation A and B, draws
FILE_HEIGHT = 120


def failure(exc: BaseException) -> str:
    """One line for the page: the user error's message, or "internal error" (traceback to stderr)."""
    if isinstance(exc, GanInvertError):
        message = str(exc)
    else:
        traceback.print_exception(exc, file=sys.stderr)
        message = f"internal error ({type(exc).__name__}: {exc}); the server log has the details"
    return "⚠ " + (message.strip().splitlines() or [type(exc).__name__])[0]


def progress_html(job: h.Job) -> str:
    latest = job.latest
    step, total = (latest.step, latest.total) if latest is not None else (0, 1)
    return (f'<progress value="{step}" max="{total}"></progress>'
            f'<div class="progress-line">{h.progress_line(latest, job.stopping)}</div>')


def curves(history: dict[str, list[float]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    steps = list(range(1, len(history["loss"]) + 1))
    return (pd.DataFrame({"step": steps, "loss": history["loss"]}),
            pd.DataFrame({"step": steps, "PSNR (dB)": history["psnr"]}))


def pickers(session: h.Session, latest: str | None = None) -> list[Any]:
    """Updates of the result dropdowns: every result of the session, the newest selected (the
    interpolation's A the one before it)."""
    labels = list(session.results)
    latest = latest or (labels[-1] if labels else None)
    previous = labels[-2] if len(labels) > 1 else latest
    return [gr.update(choices=labels, value=value) for value in (latest, previous, latest, latest)]


def build_app(ws: h.Workspace) -> gr.Blocks:
    """The page, on the workspace's generator."""
    methods = list(list_methods())
    G = ws.G
    with gr.Blocks(title="ganinvert", theme=THEME, css=CSS, analytics_enabled=False) as app:
        session = gr.State(h.Session())
        gr.Markdown(f"## ganinvert\n{ws.describe()}")
        with gr.Tab("Invert", render_children=True, elem_id="tab-invert"):
            with gr.Row():
                with gr.Column():
                    upload = gr.File(label="Image to invert", file_types=["image"], height=FILE_HEIGHT,
                                     elem_id="invert-upload")
                    example = gr.Button("Use the bundled example", size="sm", elem_id="invert-example")
                    target = gr.Image(label="Target (as inverted)", interactive=False, format="png",
                                      elem_id="target-image", height=256)
                with gr.Column():
                    method = gr.Dropdown(methods, value="sphinx", label="Method", elem_id="method")
                    preset = gr.Dropdown(h.presets("sphinx"), value=h.default_preset("sphinx"), label="Preset",
                                         elem_id="preset")
                    source = gr.Markdown(h.preset_source("sphinx", h.default_preset("sphinx")))
                    with gr.Row():
                        steps = gr.Number(200, precision=0, minimum=1, label="Steps", elem_id="steps")
                        seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="seed")
                    with gr.Row():
                        device = gr.Dropdown(ws.devices(), value="cpu", label="Device")
                        use_lpips = gr.Checkbox(ws.lpips is not None, interactive=ws.lpips is not None,
                                                label="LPIPS loss" + ("" if ws.lpips is not None else " (no weights)"))
                    with gr.Row():
                        run = gr.Button("Invert", variant="primary", elem_id="invert-run")
                        stop = gr.Button("Stop", variant="stop", elem_id="invert-stop")
                with gr.Column():
                    live = gr.Image(label="Reconstruction", interactive=False, format="png", elem_id="live-image",
                                    height=256)
                    progress = gr.HTML(elem_id="invert-progress")
            with gr.Row():
                loss_plot = gr.LinePlot(x="step", y="loss", height=200, label="Loss")
                psnr_plot = gr.LinePlot(x="step", y="PSNR (dB)", height=200, label="PSNR")
            metrics = gr.Markdown(elem_id="invert-metrics")
            status = gr.Markdown(elem_id="invert-status", elem_classes="status")
            with gr.Row():
                download = gr.File(label="Result folder (zip)", interactive=False, height=FILE_HEIGHT,
                                   elem_id="invert-download")
                result_upload = gr.File(label="Load a result (its zip, or .safetensors + .json)",
                                        file_count="multiple", file_types=[".zip", ".safetensors", ".json"],
                                        height=FILE_HEIGHT, elem_id="result-upload")

        with gr.Tab("Edit", render_children=True, elem_id="tab-edit"):
            with gr.Row():
                with gr.Column():
                    edit_result = gr.Dropdown([], label="Result", elem_id="edit-result")
                    strengths = [gr.Slider(-5, 5, 0, step=0.25, label=f"PCA {k} (σ)", elem_id=f"pca-{k}")
                                 for k in range(min(h.PCA_SLIDERS, G.style_dim))]
                    with gr.Row():
                        first_layer = gr.Slider(0, G.num_ws - 1, 0, step=1, label="First layer")
                        last_layer = gr.Slider(0, G.num_ws - 1, G.num_ws - 1, step=1, label="Last layer")
                    with gr.Row():
                        direction_file = gr.File(label="Direction file (.pt, .pth, .npy, .npz)",
                                                 file_types=[".pt", ".pth", ".npy", ".npz"], height=FILE_HEIGHT,
                                                 elem_id="direction-file")
                        direction_row = gr.Textbox("", label="Row (of a collection, else blank)")
                    direction_strength = gr.Slider(-5, 5, 0, step=0.25, label="Direction file strength",
                                                   elem_id="direction-strength")
                with gr.Column():
                    edited = gr.Image(label="Edited", interactive=False, format="png", elem_id="edit-image", height=256)
                    edit_status = gr.Markdown(elem_id="edit-status", elem_classes="status")
            with gr.Row():
                interp_a = gr.Dropdown([], label="Interpolate from")
                interp_b = gr.Dropdown([], label="to")
                frames = gr.Slider(2, 12, 6, step=1, label="Frames")
                interp_run = gr.Button("Interpolate", elem_id="interp-run")
            interp_strip = gr.Image(label="Interpolation", interactive=False, format="png", elem_id="interp-image")

        with gr.Tab("Restore", render_children=True, elem_id="tab-restore"):
            with gr.Row():
                with gr.Column():
                    restore_upload = gr.File(label="Clean image", file_types=["image"], height=FILE_HEIGHT,
                                             elem_id="restore-upload")
                    restore_example = gr.Button("Use the bundled example", size="sm", elem_id="restore-example")
                    painting = gr.ImageEditor(
                        label="For inpainting, paint the missing region", type="numpy", image_mode="RGBA",
                        sources=[], transforms=[], layers=False, canvas_size=(h.DISPLAY_SIZE, h.DISPLAY_SIZE),
                        brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed", default_size=16),
                        elem_id="restore-canvas")
                with gr.Column():
                    task = gr.Radio(list(h.RESTORE_TASKS), value="denoise", label="Task", elem_id="restore-task")
                    sigma = gr.Slider(0.05, 1.0, 0.3, step=0.05, label="Noise σ (on [-1, 1])")
                    factors = [f for f in (2, 4, 8) if G.resolution % f == 0 and G.resolution // f >= 4]
                    factor = gr.Dropdown(factors, value=factors[0], label="Super-resolution factor", visible=False)
                    fraction = gr.Slider(0.01, 1.0, 0.1, step=0.01, label="Kept fraction of measurements",
                                         visible=False)
                    restore_method = gr.Dropdown(methods, value="w+", label="Method")
                    with gr.Row():
                        restore_steps = gr.Number(200, precision=0, minimum=1, label="Steps", elem_id="restore-steps")
                        restore_seed = gr.Number(0, precision=0, minimum=0, label="Seed (noise, CS matrix, run)")
                    with gr.Row():
                        restore_run = gr.Button("Restore", variant="primary", elem_id="restore-run")
                        restore_stop = gr.Button("Stop", variant="stop")
            restore_progress = gr.HTML(elem_id="restore-progress")
            with gr.Row():
                measured = gr.Image(label="Measurement", interactive=False, format="png", height=256,
                                    elem_id="restore-measurement")
                restored = gr.Image(label="Restoration", interactive=False, format="png", height=256,
                                    elem_id="restore-restoration")
                clean = gr.Image(label="Clean", interactive=False, format="png", height=256, elem_id="restore-clean")
            restore_metrics = gr.Markdown(elem_id="restore-metrics")
            restore_status = gr.Markdown(elem_id="restore-status", elem_classes="status")
            restore_download = gr.File(label="Restoration folder (zip)", interactive=False, height=FILE_HEIGHT)

        with gr.Tab("Robustness / SPHInX draws", render_children=True, elem_id="tab-draws"):
            with gr.Row():
                draws_result = gr.Dropdown([], label="Result (SPHInX draws a fresh z+ each time)",
                                           elem_id="draws-result")
                draws = gr.Slider(1, 12, 6, step=1, label="Draws")
                draws_seed = gr.Number(0, precision=0, minimum=0, label="Seed")
                draws_run = gr.Button("Draw", variant="primary", elem_id="draws-run")
            draws_strip = gr.Image(label="Render and fresh draws", interactive=False, format="png",
                                   elem_id="draws-image")
            with gr.Row():
                snr = gr.Textbox("30,20,10,5,0", label="w+ perturbation SNRs (dB)")
                trials = gr.Slider(1, 16, 4, step=1, label="Trials per level")
                robust_run = gr.Button("Perturb w+ (SPHInX Fig. 1)")
            robust_plot = gr.Image(label="Distance to the clean render", interactive=False, format="png")
            draws_status = gr.Markdown(elem_id="draws-status", elem_classes="status")

        result_pickers = [edit_result, interp_a, interp_b, draws_result]

        # ---------------------------------------------------------------- Invert
        def use_image(session: h.Session, path: str | None, for_restore: bool = False,
                      example: bool = False) -> list[Any]:
            """[preview, status, upload box]: a refused upload is cleared from its box, so another can follow."""
            try:
                x = h.read_image(path, G.resolution)
                name = os.path.basename(path)
                kept = None if example else gr.skip()
                if for_restore:
                    session.clean, session.clean_name = x, name
                    return [{"background": h.canvas(x), "layers": [], "composite": None}, f"{name} loaded", kept]
                session.image, session.image_name = x, name
                return [h.display(x), f"{name} loaded: {G.resolution}×{G.resolution} px as inverted", kept]
            except Exception as exc:
                if for_restore:
                    session.clean = None
                else:
                    session.image = None
                return [None, failure(exc), None]

        upload.upload(use_image, [session, upload], [target, status, upload])
        example.click(lambda s: use_image(s, str(h.EXAMPLE_IMAGE), example=True), [session],
                      [target, status, upload])

        def method_changed(name: str) -> list[Any]:
            value = h.default_preset(name)
            return [gr.update(choices=h.presets(name), value=value), h.preset_source(name, value)]

        method.change(method_changed, [method], [preset, source])
        preset.change(lambda name, p: h.preset_source(name, p), [method, preset], [source])

        invert_outputs = [live, progress, loss_plot, psnr_plot, metrics, download, status, *result_pickers]

        def run_inversion(session: h.Session, method: str, preset: str, steps: Any, seed: Any, device: str,
                          use_lpips: bool) -> Iterator[dict]:
            try:
                session.job = job = h.start_inversion(ws, session, method, preset, steps, seed, device, use_lpips)
            except Exception as exc:
                yield {status: failure(exc)}
                return
            try:
                yield {status: "running…", metrics: "", download: None, progress: progress_html(job)}
                for update in job.updates():
                    loss_curve, psnr_curve = curves(job.history)
                    yield {live: h.display(update.image), progress: progress_html(job), loss_plot: loss_curve,
                           psnr_plot: psnr_curve}
                label, reconstruction, scores = h.finish_inversion(ws, session, job)
                stopped = session.results[label].result.extra.get("stopped_at")
                yield dict(zip(invert_outputs, [
                    h.display(reconstruction), progress_html(job), *curves(job.history), h.format_metrics(scores),
                    str(session.results[label].archive),
                    f"stopped at step {stopped}: {label}" if stopped is not None else f"done: {label}",
                    *pickers(session, label)]))
            except Exception as exc:
                yield {status: failure(exc)}
            finally:
                job.stop()  # the page went away mid-run: end the worker too

        run.click(run_inversion, [session, method, preset, steps, seed, device, use_lpips], invert_outputs,
                  show_progress="hidden")
        stop.click(lambda s: s.job.stop() if s.job is not None else None, [session], None, queue=False)

        def load_result(session: h.Session, paths: list[str] | None) -> list[Any]:
            try:
                label, image = h.load_result_upload(ws, session, paths)
                return [h.display(image), f"loaded {label}", *pickers(session, label), gr.skip()]
            except Exception as exc:
                return [gr.skip(), failure(exc), *[gr.skip()] * RESULT_PICKERS, None]

        result_upload.upload(load_result, [session, result_upload], [live, status, *result_pickers, result_upload])

        # ---------------------------------------------------------------- Edit
        edit_inputs = [session, edit_result, first_layer, last_layer, direction_strength, *strengths]

        def render_edit(session: h.Session, label: str, lo: Any, hi: Any, file_strength: float,
                        *alphas: float) -> list[Any]:
            try:
                started = time.perf_counter()
                image = h.edit_image(ws, session.result(label), alphas, lo, hi, session.direction, file_strength)
                return [h.display(image), f"rendered in {1000 * (time.perf_counter() - started):.0f} ms"]
            except Exception as exc:
                return [gr.skip(), failure(exc)]

        for control in [edit_result, first_layer, last_layer, direction_strength, *strengths]:
            control.change(render_edit, edit_inputs, [edited, edit_status], show_progress="hidden",
                           trigger_mode="always_last")

        def load_direction(session: h.Session, path: str | None, row: Any) -> list[Any]:
            session.direction = None
            if path is None:
                return ["", gr.skip()]
            try:
                session.direction = h.load_direction_upload(ws, path, row)
                return [f"direction {os.path.basename(path)} loaded: move its strength slider", gr.skip()]
            except Exception as exc:
                return [failure(exc), None]

        for event in (direction_file.upload, direction_file.clear):
            event(load_direction, [session, direction_file, direction_row], [edit_status, direction_file])

        def run_interpolation(session: h.Session, a: str, b: str, count: Any) -> list[Any]:
            try:
                return [h.interpolation_strip(ws, session.result(a), session.result(b), count), ""]
            except Exception as exc:
                return [gr.skip(), failure(exc)]

        interp_run.click(run_interpolation, [session, interp_a, interp_b, frames], [interp_strip, edit_status])

        # ---------------------------------------------------------------- Restore
        restore_upload.upload(lambda s, p: use_image(s, p, for_restore=True), [session, restore_upload],
                              [painting, restore_status, restore_upload])
        restore_example.click(lambda s: use_image(s, str(h.EXAMPLE_IMAGE), for_restore=True, example=True), [session],
                              [painting, restore_status, restore_upload])
        task.change(lambda t: [gr.update(visible=t == "denoise"), gr.update(visible=t == "sr"),
                               gr.update(visible=t == "cs")], [task], [sigma, factor, fraction])

        restore_outputs = [measured, restored, clean, restore_progress, restore_metrics, restore_download,
                           restore_status, *result_pickers]

        def run_restoration(session: h.Session, task: str, sigma: float, factor: Any, fraction: float,
                            painted: dict | None, method: str, steps: Any, seed: Any, device: str,
                            use_lpips: bool) -> Iterator[dict]:
            try:
                mask = h.mask_from_layers((painted or {}).get("layers") or [], G.resolution) \
                    if task == "inpaint" else None
                operator = h.restore_operator(ws, task, sigma=sigma, factor=factor, fraction=fraction, mask=mask,
                                              seed=seed)
                session.job = job = h.start_restoration(ws, session, operator, method, steps, seed, device,
                                                        use_lpips)
            except Exception as exc:
                yield {restore_status: failure(exc)}
                return
            try:
                yield {restore_status: "running…", restore_metrics: "", restore_download: None, measured: None,
                       clean: h.display(session.clean), restore_progress: progress_html(job)}
                for update in job.updates():
                    yield {restored: h.display(update.image), restore_progress: progress_html(job)}
                label, out, measurement, scores = h.finish_restoration(ws, session, job)
                yield dict(zip(restore_outputs, [
                    None if measurement is None else h.display(measurement), h.display(out.restoration),
                    h.display(out.clean), progress_html(job), h.format_metrics(scores),
                    str(session.results[label].archive),
                    f"done: {label}" + ("" if measurement is not None else " (compressed-sensing measurements "
                                                                         "are not an image)"),
                    *pickers(session, label)]))
            except Exception as exc:
                yield {restore_status: failure(exc)}
            finally:
                job.stop()

        restore_run.click(run_restoration, [session, task, sigma, factor, fraction, painting, restore_method,
                                            restore_steps, restore_seed, device, use_lpips], restore_outputs,
                          show_progress="hidden")
        restore_stop.click(lambda s: s.job.stop() if s.job is not None else None, [session], None, queue=False)

        # ---------------------------------------------------------------- Robustness / draws
        def run_draws(session: h.Session, label: str, count: Any, seed: Any) -> list[Any]:
            try:
                return list(h.draws_strip(ws, session.result(label), count, seed))
            except Exception as exc:
                return [gr.skip(), failure(exc)]

        draws_run.click(run_draws, [session, draws_result, draws, draws_seed], [draws_strip, draws_status])

        def run_robustness(session: h.Session, label: str, levels: str, count: Any, seed: Any) -> list[Any]:
            try:
                return [str(h.robustness_plot(ws, session.result(label), levels, count, seed)), ""]
            except Exception as exc:
                return [gr.skip(), failure(exc)]

        robust_run.click(run_robustness, [session, draws_result, snr, trials, draws_seed],
                         [robust_plot, draws_status])
    return app


def serve(ws: h.Workspace, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve the page until interrupted; the PCA directions are computed in the background."""
    import threading
    threading.Thread(target=ws.pca, name="ganinvert-pca", daemon=True).start()
    app = build_app(ws)
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, share=False, show_api=False, ssr_mode=False,
               allowed_paths=[str(ws.workdir)], max_file_size=h.MAX_UPLOAD_BYTES)
