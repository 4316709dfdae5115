"""The browser page: three tabs (tokenize, generate, complete) wired to `mvq.app.views`.

Gradio is imported here only, so `import mvq` and the other commands never need it. Every
handler turns bad input into a message on the page (the status line under the button);
nothing a user uploads or types can stop the server.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

from mvq.app.uploads import MAX_UPLOAD_BYTES, prepare_upload
from mvq.app.views import completion_view, sample_grid, shows_token_order, token_order_strip, tokenize_view
from mvq.errors import UserError
from mvq.models.labels import labels_tensor
from mvq.models.sampling import SamplingConfig

if TYPE_CHECKING:
    from mvq.models.mqvae import MQVAE
    from mvq.models.vqgan import VQGAN
    from mvq.pipeline import MVQPipeline

# Errors a handler shows on the page; anything else is a bug and gets the framework's error report.
SHOWN_ERRORS = (UserError,)


def import_gradio() -> ModuleType:
    """Gradio, or a one-line error saying how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from a local demo
    try:
        import gradio
    except ImportError:
        raise UserError("the browser demo needs Gradio: pip install 'mvq[app]'") from None
    return gradio


def _error(exc: Exception) -> str:
    return f"**Error:** {exc}"


def _sentence(notes: list[str]) -> str:
    """Notes about an upload as one sentence ("" without notes)."""
    text = "; ".join(notes)
    return text[:1].upper() + text[1:] + "." if text else ""


def _sampling(temperature: float, top_k: float, top_p: float, position_temperature: float,
              position_top_k: float, position_top_p: float, cfg_scale: float) -> SamplingConfig:
    """Page controls → the sampler's validated settings (top-k 0 and top-p 1 mean off)."""
    return SamplingConfig(temperature=float(temperature), top_k=int(top_k) or None, top_p=float(top_p),
                          position_temperature=float(position_temperature),
                          position_top_k=int(position_top_k) or None, position_top_p=float(position_top_p),
                          cfg_scale=float(cfg_scale))


def _label(pipeline: MVQPipeline, value: Any) -> int | None:
    """The class chosen on the page (None: none chosen), checked against the model."""
    chosen = None if value is None or value == "" else int(value)
    checked = labels_tensor(chosen, pipeline.num_classes, 1,
                            ask=f"choose a class (0 to {pipeline.num_classes - 1})")
    return None if checked is None else int(checked[0])


# Seeds the page takes: whole numbers a browser's number field holds exactly, shown back unchanged.
MAX_SEED = 2 ** 32 - 1


def _seed(value: Any) -> int:
    if value is None or not float(value).is_integer() or not 0 <= value <= MAX_SEED:
        raise UserError(f"the seed must be a whole number from 0 to {MAX_SEED}")
    return int(value)


def _ready(path: str | None, button: str) -> str:
    """The status line once an upload changed (and the previous results were cleared)."""
    return f"New image: press {button}." if path else ""


def psnr_words(db: float) -> str:
    """What a PSNR means to the eye, roughly, for 8-bit images."""
    if db >= 35:
        return "hard to tell from the input"
    if db >= 28:
        return "close: small differences in fine detail"
    if db >= 22:
        return "recognisable, with visible loss of detail"
    return "far from the input: the shapes and colours change"


def tokenize_handler(vae: MQVAE | VQGAN) -> Callable:
    """Uploaded file → (model input, kept cells, scores, reconstruction, summary, status)."""
    def handle(path: str | None):
        empty = (None, None, None, None, "")
        if not path:
            return (*empty, "Upload an image first.")
        try:
            upload = prepare_upload(path, vae.config.resolution)
            view = tokenize_view(vae, upload.pixels)
        except SHOWN_ERRORS as exc:
            return (*empty, _error(exc))
        summary = (f"**{view.num_tokens} tokens** for {view.num_cells} cells "
                   f"({view.num_tokens / view.num_cells:.0%} kept) · PSNR of the reconstruction "
                   f"**{view.psnr:.2f} dB** ({psnr_words(view.psnr)})")
        status = _sentence(upload.notes) or "The image was used as it is."
        return view.model_input, view.kept_cells, view.scores, view.reconstruction, summary, status
    return handle


def generate_handler(pipeline: MVQPipeline) -> Callable:
    """Page controls → (grid of samples, token-order strip or None, status)."""
    ordered = shows_token_order(pipeline)

    def handle(label, seed, count, cfg_scale, temperature, top_k, top_p, position_temperature, position_top_k,
               position_top_p, show_order):
        try:
            settings = _sampling(temperature, top_k, top_p, position_temperature, position_top_k, position_top_p,
                                 cfg_scale)
            label, seed = _label(pipeline, label), _seed(seed)
            grid = sample_grid(pipeline, int(count), label, seed, settings)
            strip = token_order_strip(pipeline, label, seed, settings) if show_order and ordered else None
        except SHOWN_ERRORS as exc:
            return None, None, _error(exc)
        what = f"class {pipeline.stackformer.config.class_label(label)}" if label is not None else "unconditional"
        return grid, strip, f"{int(count)} samples ({what}, seed {seed})."
    return handle


# The Complete tab's default class: the image's own, as the Stackformer judges it.
OWN_CLASS = "own"
# Above this many classes the image's own class is predicted only when asked for (one pass per class).
MAX_CLASSES_TO_PREDICT = 64


def complete_handler(pipeline: MVQPipeline) -> Callable:
    """Uploaded file + rows to keep → (input, its kept cells and the completions in one row, status).

    With a class-conditional model the class defaults to the image's own (`OWN_CLASS`: the class
    under which the Stackformer finds the image's tokens most likely); any other is class-swap editing.
    """
    def handle(path, keep_rows, label, seed, count, cfg_scale):
        if not path:
            return None, "Upload an image first."
        try:
            upload = prepare_upload(path, pipeline.vae.config.resolution)
            # Predicting costs one pass per class: asked for, or cheap enough to name a class swap.
            predict = pipeline.num_classes and (label == OWN_CLASS or pipeline.num_classes <= MAX_CLASSES_TO_PREDICT)
            own = int(pipeline.predict_class(upload.pixels)[0]) if predict else None
            chosen = own if label == OWN_CLASS else _label(pipeline, label)
            view = completion_view(pipeline, upload.pixels, int(keep_rows), chosen, _seed(seed),
                                   int(count), SamplingConfig(cfg_scale=float(cfg_scale)))
        except SHOWN_ERRORS as exc:
            return None, _error(exc)
        done = _completion_summary(view.kept_tokens, int(keep_rows), pipeline.vae.config.grid_size, int(count))
        return view.row, " ".join(filter(None, [_sentence(upload.notes), done, _class_note(pipeline, own, chosen)]))
    return handle


def _class_note(pipeline: MVQPipeline, own: int | None, chosen: int | None) -> str:
    """Which class the completions were asked for, and whether that edits the image into another class."""
    label = pipeline.stackformer.config.class_label
    if own is None:
        return f"Completed as class {label(chosen)}." if chosen is not None else ""
    if chosen == own:
        return f"Completed as the image's own class, {label(own)} (the class its tokens are most likely under)."
    return (f"Class-swap editing: completed as class {label(chosen)}, while the image looks like class "
            f"{label(own)}.")


def _completion_summary(kept_tokens: int, keep_rows: int, grid_size: int, count: int) -> str:
    """What a completion kept and what that means, in words, the edge cases included."""
    if keep_rows == 0:
        return (f"Kept no rows, so nothing of the image: the {count} pictures are new samples from scratch, "
                "not completions.")
    if keep_rows >= grid_size:
        return (f"Kept all {grid_size} rows ({kept_tokens} tokens): nothing was left to generate, so the "
                f"{count} pictures are the image's own reconstruction. Keep fewer rows to complete it.")
    rows = "row" if keep_rows == 1 else "rows"
    return (f"Kept the image's {kept_tokens} tokens in its first {keep_rows} {rows} of the {grid_size}-row token "
            f"grid; {count} completions of the rest.")


def _class_input(gr: ModuleType, pipeline: MVQPipeline, elem_id: str, own_class: bool = False) -> Any:
    """The class choice; with `own_class` (Complete) the first choice, and the default, is the image's own."""
    if pipeline.num_classes:
        config = pipeline.stackformer.config
        choices = [(config.class_label(c), str(c)) for c in range(pipeline.num_classes)]
        if own_class:
            choices.insert(0, ("the image's own class (predicted)", OWN_CLASS))
        return gr.Dropdown(choices, value=choices[0][1], label="Class", elem_id=elem_id,
                           info="another class than the image's edits it into that class" if own_class else None)
    return gr.Dropdown([], value=None, label="Class (the model is unconditional)", interactive=False,
                       elem_id=elem_id)


def _guidance_input(gr: ModuleType, pipeline: MVQPipeline, elem_id: str) -> Any:
    if pipeline.stackformer.config.has_null_class:
        return gr.Slider(1.0, 8.0, value=3.0, step=0.5, label="Guidance scale", elem_id=elem_id,
                         info="how strongly samples follow the class: 1 = off; higher = more typical, less varied")
    return gr.Slider(1.0, 8.0, value=1.0, step=0.5, label="Guidance scale", interactive=False, elem_id=elem_id,
                     info="needs a class-conditional model trained with label dropout")


def _tokenize_tab(gr: ModuleType, vae: MQVAE | VQGAN) -> None:
    r = vae.config.resolution
    gr.Markdown(f"Upload an image of any size: it is resized (shorter side) and centre-cropped to the model's "
                f"{r}×{r} pixels. The {vae.display_name} keeps {vae.config.num_tokens} of its "
                f"{vae.config.num_cells} cells "
                f"as tokens (darkened cells are masked) and decodes the image from them.")
    with gr.Row():
        upload = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="tokenize-upload")
        button = gr.Button("Tokenize", variant="primary", elem_id="tokenize-button")
    status = gr.Markdown(elem_id="tokenize-status")
    summary = gr.Markdown(elem_id="tokenize-summary")
    with gr.Row():
        outputs = [gr.Image(label=name, type="numpy", format="png", interactive=False, elem_id=f"tokenize-{key}")
                   for key, name in [("input", "What the model sees"), ("kept", "Kept cells"),
                                     ("scores", "Importance scores (dark: 0, unimportant; bright: 1, kept first)"), ("reconstruction", "Reconstruction")]]
    button.click(tokenize_handler(vae), inputs=upload, outputs=[*outputs, summary, status])
    # A new (or removed) upload clears the results of the previous one: they never stand beside another file.
    upload.change(lambda path: (None,) * len(outputs) + ("", _ready(path, "Tokenize")), inputs=upload,
                  outputs=[*outputs, summary, status])


def _generate_tab(gr: ModuleType, pipeline: MVQPipeline) -> None:
    config = pipeline.stackformer.config
    with gr.Row():
        label = _class_input(gr, pipeline, "generate-class")
        seed = gr.Number(0, label="Seed", minimum=0, maximum=MAX_SEED, elem_id="generate-seed")
        count = gr.Slider(1, 16, value=8, step=1, label="Samples", elem_id="generate-count")
        cfg_scale = _guidance_input(gr, pipeline, "generate-cfg")
    with gr.Accordion("Sampling per stream (top-k 0 and top-p 1 turn them off)", open=False):
        gr.Markdown("Each step draws a code, then where it goes. Temperature below 1 makes the draws safer, above 1 "
                    "wilder; top-k keeps only the k likeliest choices; top-p keeps the likeliest choices that "
                    "together hold that share of the probability.")
        with gr.Row():
            temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="Code temperature")
            top_k = gr.Slider(0, config.codebook_size, value=min(100, config.codebook_size), step=1,
                              label="Code top-k")
            top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.01, label="Code top-p")
        with gr.Row():
            position_temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="Position temperature")
            position_top_k = gr.Slider(0, config.num_cells, value=min(10, config.num_cells), step=1,
                                       label="Position top-k")
            position_top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.01, label="Position top-p")
    ordered = shows_token_order(pipeline)
    show_order = gr.Checkbox(ordered, label="Show where successive tokens land (first sample)", interactive=ordered,
                             elem_id="generate-show-order",
                             info=None if ordered else "these models fill the token grid in raster order, and only "
                                                       "an MQ-VAE decodes an image from part of its tokens")
    button = gr.Button("Generate", variant="primary", elem_id="generate-button")
    status = gr.Markdown(elem_id="generate-status")
    grid = gr.Image(label="Samples", type="numpy", format="png", interactive=False, height=420,
                    elem_id="generate-grid")
    k = config.num_tokens
    strip = gr.Image(label=f"The first sample decoded from its first {k // 8 or 1}, {2 * k // 8 or 2}, …, {k} "
                           f"tokens (cells not generated yet are darkened)", type="numpy", format="png",
                     interactive=False, height=180, visible=ordered, elem_id="generate-strip")
    button.click(generate_handler(pipeline),
                 inputs=[label, seed, count, cfg_scale, temperature, top_k, top_p, position_temperature,
                         position_top_k, position_top_p, show_order],
                 outputs=[grid, strip, status])


def _complete_tab(gr: ModuleType, pipeline: MVQPipeline) -> None:
    g = pipeline.vae.config.grid_size
    gr.Markdown("Upload an image: its tokens in the first rows of the grid are kept and the Stackformer "
                "continues from them (with another class: class-swap editing).")
    with gr.Row():
        upload = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="complete-upload")
        with gr.Column():
            keep_rows = gr.Slider(0, g, value=g // 2, step=1, label="Rows of the token grid to keep",
                                  elem_id="complete-rows")
            with gr.Row():
                label = _class_input(gr, pipeline, "complete-class", own_class=True)
                seed = gr.Number(0, label="Seed", minimum=0, maximum=MAX_SEED, elem_id="complete-seed")
            with gr.Row():
                count = gr.Slider(1, 8, value=4, step=1, label="Completions", elem_id="complete-count")
                cfg_scale = _guidance_input(gr, pipeline, "complete-cfg")
    button = gr.Button("Complete", variant="primary", elem_id="complete-button")
    status = gr.Markdown(elem_id="complete-status")
    grid = gr.Image(label="Input, the cells of its kept tokens (the rest darkened), completions", type="numpy",
                    format="png", interactive=False, elem_id="complete-grid")
    button.click(complete_handler(pipeline), inputs=[upload, keep_rows, label, seed, count, cfg_scale],
                 outputs=[grid, status])
    upload.change(lambda path: (None, _ready(path, "Complete")), inputs=upload, outputs=[grid, status])


def introduction(vae: MQVAE | VQGAN, pipeline: MVQPipeline | None) -> str:
    """What the page's models do and what they are, in a few sentences for someone who has read nothing."""
    c = vae.config
    if hasattr(c, "keep_count"):
        tokenizer = (f"The **MQ-VAE** (tokenizer) turns a {c.resolution}×{c.resolution} image into {c.num_tokens} "
                     f"tokens: it scores the {c.num_cells} cells of a {c.grid_size}×{c.grid_size} grid by importance, "
                     f"keeps the best {c.num_tokens}, and stores a codebook entry and a position for each; its decoder "
                     "rebuilds the whole image from them.")
    else:
        tokenizer = (f"The **VQGAN** (tokenizer) turns a {c.resolution}×{c.resolution} image into one token for each "
                     f"of the {c.num_cells} cells of a {c.grid_size}×{c.grid_size} grid, and decodes them back.")
    parts = [tokenizer]
    if pipeline is not None:
        s = pipeline.stackformer.config
        classes = (f" It was trained on {s.num_classes} classes" + (": " + ", ".join(s.class_names) if s.class_names
                                                                    else "") + "." if s.num_classes else "")
        parts.append(f"The **Stackformer** (generator) writes new images token by token: a code, then where it "
                     f"goes.{classes}")
    parts.append(f"Images far from what the models were trained on (a photograph given to a model of "
                 f"{c.resolution}-pixel drawings, say) come back blurred or in the wrong colours: that is the "
                 "model's limit, not a fault of the page.")
    return " ".join(parts)


def build_app(vae: MQVAE | VQGAN, pipeline: MVQPipeline | None, title: str = "mvq: masked vector quantization") -> Any:
    """The page for an MQ-VAE and (optionally) a Stackformer trained on its tokens."""
    gr = import_gradio()
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"# {title}")
        gr.Markdown(introduction(vae, pipeline), elem_id="introduction")
        with gr.Tab("Tokenize", elem_id="tab-tokenize"):
            _tokenize_tab(gr, vae)
        with gr.Tab("Generate", elem_id="tab-generate"):
            if pipeline is None:
                gr.Markdown("No Stackformer loaded: start the app with `--stackformer DIR` to sample images.")
            else:
                _generate_tab(gr, pipeline)
        with gr.Tab("Complete", elem_id="tab-complete"):
            if pipeline is None:
                gr.Markdown("No Stackformer loaded: start the app with `--stackformer DIR` to complete images.")
            else:
                _complete_tab(gr, pipeline)
    return app


def serve(app: Any, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> str:
    """Start the web server (one request at a time; uploads over the size limit are refused); returns its URL."""
    app.queue(default_concurrency_limit=1)
    try:
        _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=True, share=False,
                               max_file_size=MAX_UPLOAD_BYTES, footer_links=[], quiet=True)
    except OSError:
        raise UserError(f"cannot serve on {host}:{port}: the port is in use or the address is not this "
                        f"machine's; pass another --port or --host") from None
    print(f"mvq app: serving on {url} (Ctrl-C stops it)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"mvq app: listening on {host}: other machines on the network can use the app", flush=True)
    if block:
        app.block_thread()
    return url

