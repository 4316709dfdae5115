"""The browser page: three tabs (tokenize, generate, complete) wired to `mvq.app.views`.

Gradio is imported here only, so `import mvq` and the other commands never need it. Every
handler turns bad input into a message on the page (the status line under the button);
nothing a user uploads or types can stop the server.
"""

from __future__ import annotations

import os
import base64
import io
from pathlib import Path
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from mvq.app.uploads import MAX_UPLOAD_BYTES, prepare_upload
from mvq.app.views import (completion_view, sample_pictures, score_colour_scale, shown,
                           shows_token_order, token_order_frames, tokenize_view)
from mvq.errors import UserError
from mvq.evaluation.image_metrics import from_uint8_hwc
from mvq.models.labels import labels_tensor
from mvq.models.sampling import SamplingConfig

if TYPE_CHECKING:
    from mvq.models.card import ModelCard
    from mvq.models.mqvae import MQVAE
    from mvq.models.vqgan import VQGAN
    from mvq.inference.pipeline import MVQPipeline


@dataclass
class ExtraTokenizer:
    """A further tokenizer served in a Tokenize tab of its own (a zoo tokenizer beside the pair's)."""

    name: str
    vae: MQVAE | VQGAN
    card: ModelCard | None = None
    examples: Sequence[Path] = ()

    @property
    def prefix(self) -> str:
        """The start of its tab's element ids."""
        return "tokenize-" + "".join(ch if ch.isalnum() else "-" for ch in self.name)

    @property
    def tab(self) -> str:
        return f"Tokenize with {self.name}"


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
              position_top_k: float, position_top_p: float, cfg_scale: float,
              num_tokens: float | None = None) -> SamplingConfig:
    """Page controls → the sampler's validated settings (top-k 0 and top-p 1 mean off; no token count: the model's)."""
    return SamplingConfig(temperature=float(temperature), top_k=int(top_k) or None, top_p=float(top_p),
                          position_temperature=float(position_temperature),
                          position_top_k=int(position_top_k) or None, position_top_p=float(position_top_p),
                          cfg_scale=float(cfg_scale), num_tokens=None if num_tokens is None else int(num_tokens))


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


# A picture on the page and its caption (shown under it, never over it).
Captioned = tuple[np.ndarray, str]


def tokenize_handler(vae: MQVAE | VQGAN) -> Callable:
    """Uploaded file (+ an MQ-VAE's token budget, or a PSNR target that picks it) → (captioned pictures:
    input, kept cells, scores, reconstruction; summary; status)."""
    def handle(path: str | None, keep: float | None = None, psnr_target: float | None = None):
        if not path:
            return None, "", "Upload an image first, or click an example."
        try:
            upload = prepare_upload(path, vae.config.resolution)
            target = float(psnr_target) if psnr_target else None  # 0 or empty: no target
            view = tokenize_view(vae, upload.pixels, None if keep is None else int(keep), target)
        except SHOWN_ERRORS as exc:
            return None, "", _error(exc)
        r = vae.config.resolution
        pictures = [(view.model_input, f"What the model sees ({r}×{r})"),
                    (view.kept_cells, f"Kept cells: {view.num_tokens} of {view.num_cells} (the rest darkened)"),
                    (view.scores, "Importance scores (colour scale below)"),
                    (view.reconstruction, f"Reconstruction from {view.num_tokens} tokens: {view.psnr:.1f} dB")]
        summary = (f"**{view.num_tokens} tokens** for {view.num_cells} cells "
                   f"({view.num_tokens / view.num_cells:.0%} kept) · PSNR of the reconstruction "
                   f"**{view.psnr:.2f} dB** ({psnr_words(view.psnr)})")
        if target is not None:
            summary += (f" · the fewest tokens that reach {target:g} dB" if view.psnr >= target else
                        f" · {target:g} dB is out of reach: every cell kept gives {view.psnr:.2f} dB")
        status = _sentence(upload.notes) or "The image was used as it is."
        return pictures, summary, status
    return handle


def generate_handler(pipeline: MVQPipeline) -> Callable:
    """Page controls → (captioned samples, captioned token-order frames or None, status)."""
    ordered = shows_token_order(pipeline)
    class_label = pipeline.stackformer.config.class_label

    def handle(label, seed, count, cfg_scale, temperature, top_k, top_p, position_temperature, position_top_k,
               position_top_p, show_order, num_tokens=None):
        if num_tokens is not None and int(num_tokens) >= pipeline.stackformer.config.num_tokens:
            num_tokens = None  # the model's own count (a variable-length model then chooses each image's)
        try:
            settings = _sampling(temperature, top_k, top_p, position_temperature, position_top_k, position_top_p,
                                 cfg_scale, num_tokens)
            label, seed = _label(pipeline, label), _seed(seed)
            samples = sample_pictures(pipeline, int(count), label, seed, settings)
            frames = token_order_frames(pipeline, label, seed, settings) if show_order and ordered else None
        except SHOWN_ERRORS as exc:
            return None, None, _error(exc)
        what = f"class {class_label(label)}" if label is not None else "unconditional"
        pictures = [(picture, f"sample {i + 1}" + (f" · class {class_label(label)}" if label is not None else ""))
                    for i, picture in enumerate(samples)]
        tokens = "" if num_tokens is None else f", {int(num_tokens)} tokens each"
        return (pictures, frames and _token_order_captions(frames),
                f"{int(count)} samples ({what}, seed {seed}{tokens}).")
    return handle


def _token_order_captions(frames) -> list[Captioned]:
    """Each frame with the tokens it holds; the last says why cells stay dark."""
    k, n = frames.tokens[-1], frames.num_cells
    captions = [f"first {t} of {k} tokens" for t in frames.tokens[:-1]]
    captions.append(f"all {k} tokens: the other {n - k} cells never get one (the decoder fills them in)"
                    if n > k else f"all {k} tokens")
    return list(zip(frames.pictures, captions))


# The Complete tab's default class: the image's own, as the Stackformer judges it.
OWN_CLASS = "own"
# Above this many classes the image's own class is predicted only when asked for (one pass per class).
MAX_CLASSES_TO_PREDICT = 64


def complete_handler(pipeline: MVQPipeline) -> Callable:
    """Uploaded file + rows to keep → (captioned input, its kept cells and the completions; status).

    With a class-conditional model the class defaults to the image's own (`OWN_CLASS`: the class
    under which the Stackformer finds the image's tokens most likely); any other is class-swap editing.
    """
    def handle(path, keep_rows, label, seed, count, cfg_scale):
        if not path:
            return None, "Upload an image first, or click an example."
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
        as_class = "" if chosen is None else f" · class {pipeline.stackformer.config.class_label(chosen)}"
        captions = ["Input", f"Kept: {view.kept_tokens} tokens in the first {int(keep_rows)} rows",
                    *[f"completion {i + 1}{as_class}" for i in range(int(count))]]
        return (list(zip(view.pictures, captions)),
                " ".join(filter(None, [_sentence(upload.notes), done, _class_note(pipeline, own, chosen)])))
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


# Pictures are enlarged by whole numbers; the browser must not smooth them when it fits them to a tile.
# Captions go under their picture, never over it.
CSS = """
.mvq-pictures img { image-rendering: pixelated; }
.mvq-pictures .thumbnail-item { display: flex; flex-direction: column; height: auto; }
.mvq-pictures .grid-wrap.fixed-height { height: auto; min-height: 0; max-height: none; }
.mvq-pictures .caption-label { position: static; max-width: 100%; white-space: normal; text-align: center;
                               background: none; padding: 2px 0; }
"""


def _pictures(gr: ModuleType, title: str, elem_id: str, columns: int, visible: bool = True) -> Any:
    """A gallery of captioned result pictures under a heading (no label badge over the first picture)."""
    heading = gr.Markdown(f"**{title}**", visible=visible)
    gallery = gr.Gallery(show_label=False, columns=columns, object_fit="contain", height="auto", format="png",
                         allow_preview=True, interactive=False, elem_id=elem_id, elem_classes=["mvq-pictures"],
                         visible=visible)
    return heading, gallery


def _examples(gr: ModuleType, examples: Sequence[Path], resolution: int, elem_id: str) -> Any | None:
    """Clickable thumbnails of example images (None without examples)."""
    if not examples:
        return None
    thumbnails = [(shown(from_uint8_hwc(prepare_upload(p, resolution).pixels[None]))[0], p.stem) for p in examples]
    gr.Markdown("**Examples**: click one to try it")
    return gr.Gallery(thumbnails, show_label=False, columns=8, fit_columns=False, height="auto", object_fit="contain", format="png",
                      allow_preview=False, interactive=False, elem_id=elem_id, elem_classes=["mvq-pictures"])


def _run_example(gr: ModuleType, examples: Sequence[Path], handler: Callable) -> Callable:
    """A click on example i → (its path for the upload box, the handler's outputs for it): one round trip."""
    def run(selected, *controls):
        path = str(examples[selected.index])
        return (path, *handler(path, *controls))
    run.__annotations__["selected"] = gr.SelectData  # Gradio passes the click to the parameter annotated so
    return run


def colour_scale_html(width: int = 256) -> str:
    """The score heat-map's colour scale as an inline picture with its two ends named."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(score_colour_scale(width)).save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<div style="display:flex;align-items:center;gap:8px;font-size:0.9em">'
            f"<span>0: least important (masked first)</span>"
            f'<img alt="colour scale of the importance scores" src="data:image/png;base64,{data}" '
            f'width="{width}" height="14" style="image-rendering:pixelated">'
            f"<span>1: most important (kept first)</span></div>"
            "<div style=\"font-size:0.85em;color:#666\">Scores are scaled per image from its lowest to its highest."
            "</div>")


def _clear_on_new_upload(upload: Any, outputs: list, button: str) -> None:
    """A new (or removed) upload clears the previous results: they never stand beside another file."""
    def clear(path):
        return (None,) * (len(outputs) - 1) + (_ready(path, button),)
    upload.upload(clear, inputs=upload, outputs=outputs)
    upload.clear(clear, inputs=upload, outputs=outputs)


# The Tokenize tab's status line once the page has loaded.
FIRST_STEP = "Upload an image or click an example."


def _budget_inputs(gr: ModuleType, vae: MQVAE | VQGAN, prefix: str = "tokenize") -> list:
    """An MQ-VAE's token budget (a slider) and a PSNR target that picks it per image; none for a VQGAN."""
    c = vae.config
    if not hasattr(c, "keep_count"):
        return []
    trained = ("trained for any budget up to K" if c.any_k else
               f"trained to keep {c.num_tokens}: other budgets work outside what it learned")
    return [gr.Slider(1, c.num_cells, value=c.num_tokens, step=1, label="Tokens to keep", elem_id=f"{prefix}-keep",
                      info=f"the best-ranked cells; this model was {trained}"),
            gr.Number(0, label="Or a PSNR target in dB (0: off)", minimum=0, maximum=100, elem_id=f"{prefix}-target",
                      info="keeps the fewest tokens whose reconstruction reaches it (overrides the slider)")]


def _tokenize_tab(gr: ModuleType, vae: MQVAE | VQGAN, examples: Sequence[Path], prefix: str = "tokenize") -> Any:
    """A Tokenize tab (its elements' ids start with `prefix`); returns its status line."""
    r = vae.config.resolution
    gr.Markdown(f"Upload an image of any size, or click an example: it is resized (shorter side) and "
                f"centre-cropped to the model's {r}×{r} pixels. The {vae.display_name} keeps "
                f"{vae.config.num_tokens} of its {vae.config.num_cells} cells as tokens and decodes the image "
                "from them.")
    with gr.Row():
        upload = gr.File(label="Image", file_types=["image"], type="filepath", elem_id=f"{prefix}-upload")
        with gr.Column():
            budget = _budget_inputs(gr, vae, prefix)
            button = gr.Button("Tokenize", variant="primary", elem_id=f"{prefix}-button")
    picks = _examples(gr, examples, r, f"{prefix}-examples")
    status = gr.Markdown(elem_id=f"{prefix}-status")
    summary = gr.Markdown(elem_id=f"{prefix}-summary")
    _, pictures = _pictures(gr, "Results", f"{prefix}-results", columns=4)
    gr.HTML(colour_scale_html(), elem_id=f"{prefix}-score-scale")
    outputs = [pictures, summary, status]
    button.click(tokenize_handler(vae), inputs=[upload, *budget], outputs=outputs)
    if budget:  # a new budget or target shows its result at once
        keep, target = budget
        keep.release(tokenize_handler(vae), inputs=[upload, *budget], outputs=outputs)
        target.submit(tokenize_handler(vae), inputs=[upload, *budget], outputs=outputs)
    if picks is not None:
        picks.select(_run_example(gr, examples, tokenize_handler(vae)), inputs=budget, outputs=[upload, *outputs])
    _clear_on_new_upload(upload, outputs, "Tokenize")
    return status


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
    budget = ordered and config.token_order == "rank"
    num_tokens = gr.Slider(1, config.num_tokens, value=config.num_tokens, step=1, label="Tokens per image",
                           interactive=budget, elem_id="generate-num-tokens",
                           info="stop after this many tokens: its rank-order tokens make every prefix a whole image"
                           if budget else "a Stackformer trained on rank-order tokens (mvq tokenize --order rank) "
                                          "can stop after any count; this one lists tokens by position")
    show_order = gr.Checkbox(ordered, label="Show where successive tokens land (first sample)", interactive=ordered,
                             elem_id="generate-show-order",
                             info=None if ordered else "these models fill the token grid in raster order, and only "
                                                       "an MQ-VAE decodes an image from part of its tokens")
    button = gr.Button("Generate", variant="primary", elem_id="generate-button")
    example = gr.Examples([[_class_input_value(pipeline), 0, 8, 3.0 if config.has_null_class else 1.0]],
                          inputs=[label, seed, count, cfg_scale], label="Example setting: click it to generate",
                          elem_id="generate-examples")
    status = gr.Markdown(elem_id="generate-status")
    _, samples = _pictures(gr, "Samples", "generate-samples", columns=4)
    order_heading, order = _pictures(gr, "The first sample, decoded from its first tokens: cells without a token "
                                         "yet are darkened", "generate-order", columns=4, visible=ordered)
    handle = generate_handler(pipeline)

    def generate(*controls):
        pictures, frames, message = handle(*controls)
        shows = frames is not None
        return pictures, gr.update(visible=shows), gr.update(value=frames, visible=shows), message

    controls = [label, seed, count, cfg_scale, temperature, top_k, top_p, position_temperature, position_top_k,
                position_top_p, show_order, num_tokens]
    outputs = [samples, order_heading, order, status]
    button.click(generate, inputs=controls, outputs=outputs)
    example.load_input_event.then(generate, inputs=controls, outputs=outputs)


def _class_input_value(pipeline: MVQPipeline) -> str | None:
    """The first class's value in the class choice (None for an unconditional model)."""
    return "0" if pipeline.num_classes else None


def _complete_tab(gr: ModuleType, pipeline: MVQPipeline, examples: Sequence[Path]) -> None:
    g = pipeline.vae.config.grid_size
    gr.Markdown("Upload an image, or click an example: its tokens in the first rows of the grid are kept and the "
                "Stackformer continues from them (with another class: class-swap editing).")
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
    picks = _examples(gr, examples, pipeline.vae.config.resolution, "complete-examples")
    button = gr.Button("Complete", variant="primary", elem_id="complete-button")
    status = gr.Markdown(elem_id="complete-status")
    _, pictures = _pictures(gr, "The input, the cells of its kept tokens (the rest darkened), the completions",
                            "complete-results", columns=6)
    inputs, outputs = [upload, keep_rows, label, seed, count, cfg_scale], [pictures, status]
    button.click(complete_handler(pipeline), inputs=inputs, outputs=outputs)
    if picks is not None:
        picks.select(_run_example(gr, examples, complete_handler(pipeline)), inputs=inputs[1:],
                     outputs=[upload, *outputs])
    _clear_on_new_upload(upload, outputs, "Complete")


def introduction(vae: MQVAE | VQGAN, pipeline: MVQPipeline | None,
                 cards: dict[str, ModelCard | None] | None = None, more_tokenizers: Sequence[ExtraTokenizer] = ()) -> str:
    """What the page's models do and what they are, in a few sentences for someone who has read nothing.

    `cards` ("tokenizer", "generator") are the models' cards: what each was trained on is said from them;
    each of `more_tokenizers` gets a sentence naming its tab.
    """
    c, cards = vae.config, cards or {}
    tokenizer = _tokenizer_sentence(vae)
    tokenizer_card, generator_card = cards.get("tokenizer"), cards.get("generator")
    same_data = (pipeline is not None and tokenizer_card and generator_card
                 and tokenizer_card.training_data == generator_card.training_data)
    parts = [tokenizer + ("" if same_data else _trained_on(tokenizer_card))]
    if pipeline is not None:
        s = pipeline.stackformer.config
        classes = (f" It was trained on {s.num_classes} classes" + (": " + ", ".join(s.class_names) if s.class_names
                                                                    else "") + "." if s.num_classes else "")
        parts.append(f"The **Stackformer** (generator) writes new images token by token: a code, then where it "
                     f"goes.{classes}" + ("" if same_data else _trained_on(generator_card)))
    if same_data:
        parts.append(f"Both were trained on {tokenizer_card.training_data}")
    for extra in more_tokenizers:
        parts.append(f"The tab *{extra.tab}* serves another tokenizer, **{extra.name}**, on "
                     f"{extra.vae.config.resolution}×{extra.vae.config.resolution} images." + _trained_on(extra.card))
    parts.append(f"Images far from what the models were trained on (a photograph given to a model of "
                 f"{c.resolution}-pixel drawings, say) come back blurred or in the wrong colours: that is the "
                 "model's limit, not a fault of the page.")
    return "\n\n".join(parts)


def _tokenizer_sentence(vae: MQVAE | VQGAN) -> str:
    """What a tokenizer does with an image, in its own numbers."""
    c = vae.config
    if hasattr(c, "keep_count"):
        return (f"The **MQ-VAE** (tokenizer) turns a {c.resolution}×{c.resolution} image into {c.num_tokens} "
                f"tokens: it scores the {c.num_cells} cells of a {c.grid_size}×{c.grid_size} grid by importance, "
                f"keeps the best {c.num_tokens}, and stores a codebook entry and a position for each; its decoder "
                "rebuilds the whole image from them.")
    return (f"The **VQGAN** (tokenizer) turns a {c.resolution}×{c.resolution} image into one token for each "
            f"of the {c.num_cells} cells of a {c.grid_size}×{c.grid_size} grid, and decodes them back.")


def _trained_on(card: ModelCard | None) -> str:
    if card is None:
        return " Its folder has no model card, so what it was trained on is not known here."
    return f" Training data: {card.training_data}"


def warm_up(vae: MQVAE | VQGAN, pipeline: MVQPipeline | None) -> None:
    """Run each model once before serving, so that a newcomer's first click pays no one-time start-up costs."""
    blank = np.zeros((vae.config.resolution,) * 2 + (3,), dtype=np.uint8)
    tokenize_view(vae, blank)
    if pipeline is not None:
        sample_pictures(pipeline, 1, 0 if pipeline.num_classes else None, 0, SamplingConfig())
        completion_view(pipeline, blank, 1, 0 if pipeline.num_classes else None, 0, 1, SamplingConfig())


def build_app(vae: MQVAE | VQGAN, pipeline: MVQPipeline | None, title: str = "mvq: masked vector quantization",
              cards: dict[str, ModelCard | None] | None = None, examples: Sequence[Path] = (),
              more_tokenizers: Sequence[ExtraTokenizer] = ()) -> Any:
    """The page for an MQ-VAE and (optionally) a Stackformer trained on its tokens.

    `cards`: the models' cards ("tokenizer", "generator"), for the introduction; `examples`: images
    to click on in Tokenize and Complete (a few of the tokenizer's validation images);
    `more_tokenizers`: further tokenizers, each in a Tokenize tab of its own.
    """
    gr = import_gradio()
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"# {title}")
        gr.Markdown(introduction(vae, pipeline, cards, more_tokenizers), elem_id="introduction")
        with gr.Tab("Tokenize", elem_id="tab-tokenize"):
            statuses = [_tokenize_tab(gr, vae, examples)]
        for extra in more_tokenizers:
            with gr.Tab(extra.tab, elem_id=f"tab-{extra.prefix}"):
                gr.Markdown(_tokenizer_sentence(extra.vae) + _trained_on(extra.card))
                statuses.append(_tokenize_tab(gr, extra.vae, extra.examples, extra.prefix))
        with gr.Tab("Generate", elem_id="tab-generate"):
            if pipeline is None:
                gr.Markdown("No Stackformer loaded: start the app with `--stackformer DIR` to sample images.")
            else:
                _generate_tab(gr, pipeline)
        with gr.Tab("Complete", elem_id="tab-complete"):
            if pipeline is None:
                gr.Markdown("No Stackformer loaded: start the app with `--stackformer DIR` to complete images.")
            else:
                _complete_tab(gr, pipeline, examples)
        # An event at page load opens the page's connection to the event queue, which the first event would
        # otherwise wait for (about 2 s here): a newcomer's first click answers as fast as any later one.
        app.load(lambda: {status: FIRST_STEP for status in statuses}, outputs=statuses)
    served = [*examples, *(path for extra in more_tokenizers for path in extra.examples)]
    app.mvq_examples = [str(p) for p in served]  # served as files: `serve` allows exactly these
    return app


def serve(app: Any, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> str:
    """Start the web server (one request at a time; uploads over the size limit are refused); returns its URL."""
    app.queue(default_concurrency_limit=1)
    try:
        _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=True, share=False,
                               max_file_size=MAX_UPLOAD_BYTES, footer_links=[], quiet=True, css=CSS,
                               allowed_paths=getattr(app, "mvq_examples", []))
    except OSError:
        raise UserError(f"cannot serve on {host}:{port}: the port is in use or the address is not this "
                        f"machine's; pass another --port or --host") from None
    print(f"mvq app: serving on {url} (Ctrl-C stops it)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"mvq app: listening on {host}: other machines on the network can use the app", flush=True)
    if block:
        app.block_thread()
    return url

