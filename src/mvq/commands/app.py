"""`mvq app`: an interactive browser demo (tokenize / generate / complete) on local models."""

from __future__ import annotations

import argparse
from pathlib import Path

# Where `mvq demo` (default --out) exports its models.
DEMO_VAE = Path("demo-output") / "mqvae"
DEMO_STACKFORMER = Path("demo-output") / "stackformer"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "app", help="interactive browser demo: tokenize, generate and complete images",
        description="Serve a web page (Gradio; install with pip install 'mvq[app]') with three tabs: Tokenize "
                    "(upload an image → kept cells, importance scores, reconstruction, token count, PSNR), "
                    "Generate (class, seed, guidance and per-stream sampling settings → samples) and Complete. "
                    "Without --vae and --stackformer it serves the first zoo tokenizer and the zoo Stackformer "
                    "trained on its tokens, and every other zoo tokenizer in a Tokenize tab of its own; else the "
                    f"models of `mvq demo` ({DEMO_VAE} and {DEMO_STACKFORMER}) when they exist.")
    parser.add_argument("--vae", metavar="DIR", help=f"pretrained MQ-VAE or VQGAN folder (default: {DEMO_VAE})")
    parser.add_argument("--stackformer", metavar="DIR",
                        help="pretrained Stackformer folder trained on that MQ-VAE's tokens (default with no "
                             f"--vae: {DEMO_STACKFORMER}; without one only the Tokenize tab works)")
    parser.add_argument("--examples", metavar="DIR",
                        help="folder of example images (PNG) to click on in Tokenize and Complete (default: the "
                             "tokenizer folder's examples/, written by `mvq demo` and kept with zoo models)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it "
                             "to the network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1, ...")
    parser.set_defaults(func=run)


def model_folders(vae: str | None, stackformer: str | None) -> tuple[Path, Path | None, dict[str, Path]]:
    """The folders to load, and further tokenizers (name → folder) for tabs of their own: the ones given;
    else a zoo tokenizer and its Stackformer, with the zoo's other tokenizers; else the demo's."""
    from mvq.errors import UserError
    from mvq.models.hub import resolve_pretrained

    if vae is None and stackformer is not None:
        raise UserError("--stackformer needs --vae DIR, the MQ-VAE whose tokens it was trained on")
    if vae is not None:
        return resolve_pretrained(vae), None if stackformer is None else resolve_pretrained(stackformer), {}
    from mvq.models.zoo import first_pair, zoo_tokenizers

    zoo = first_pair()
    if zoo is not None:
        tokenizer, generator = zoo
        others = {name: folder for name, folder in zoo_tokenizers().items() if folder.resolve() != tokenizer.resolve()}
        return tokenizer, generator, others
    if not DEMO_VAE.is_dir():
        raise UserError(f"no models to serve: pass --vae DIR (and --stackformer DIR), or run `mvq demo` first, "
                        f"which writes {DEMO_VAE} and {DEMO_STACKFORMER}")
    return DEMO_VAE, DEMO_STACKFORMER if DEMO_STACKFORMER.is_dir() else None, {}


def check_port_free(host: str, port: int) -> None:
    """A one-line error when `host:port` cannot be served on (in use, or not this machine's address)."""
    import socket

    from mvq.errors import UserError

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError:
        raise UserError(f"cannot serve on {host}:{port}: the port is in use or the address is not this "
                        f"machine's; pass another --port or --host") from None


def run(args: argparse.Namespace) -> None:
    from mvq.errors import UserError

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    check_port_free(args.host, args.port)  # before any model loads: a port in use answers at once
    vae_dir, stackformer_dir, other_dirs = model_folders(args.vae, args.stackformer)
    from mvq.app.page import ExtraTokenizer, build_app, import_gradio, serve, warm_up

    import_gradio()  # fail on a missing extra before loading any model
    from mvq.distributed import resolve_device
    from mvq.models.tokenizer import load_tokenizer
    from mvq.inference.pipeline import MVQPipeline

    from mvq.models.card import ModelCard, example_images

    examples = example_images(Path(args.examples), "") if args.examples else example_images(vae_dir)
    if args.examples and not examples:
        raise UserError(f"--examples {args.examples}: no PNG images there; give a folder of .png files")
    device = resolve_device(args.device)
    if stackformer_dir is None:
        vae, pipeline = load_tokenizer(vae_dir, map_location=device).eval(), None
        print(f"mvq app: {vae.display_name} {vae_dir}; no Stackformer (pass --stackformer DIR to generate)",
              flush=True)
    else:
        pipeline = MVQPipeline.from_pretrained(stackformer_dir, vae_dir, device=device)
        vae = pipeline.vae
        print(f"mvq app: {vae.display_name} {vae_dir}, Stackformer {stackformer_dir}", flush=True)
    cards = {"tokenizer": ModelCard.load(vae_dir),
             "generator": None if stackformer_dir is None else ModelCard.load(stackformer_dir)}
    more = [ExtraTokenizer(name, load_tokenizer(folder, map_location=device).eval(), ModelCard.load(folder),
                           example_images(folder)) for name, folder in other_dirs.items()]
    for extra in more:
        print(f"mvq app: {extra.vae.display_name} {other_dirs[extra.name]} in the tab \"{extra.tab}\"", flush=True)
    app = build_app(vae, pipeline, cards=cards, examples=examples, more_tokenizers=more)
    warm_up(vae, pipeline)
    for extra in more:
        warm_up(extra.vae, None)
    serve(app, host=args.host, port=args.port)
