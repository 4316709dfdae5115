"""Where a pretrained model named by the user lives: a folder, a zoo model's name, or a Hugging Face Hub id.

    resolve_pretrained("runs/mqvae/export")        # a folder: itself
    resolve_pretrained("photos-64")                # a model of the zoo (the repository's zoo/, or $MVQ_ZOO)
    resolve_pretrained("org/name", revision="v1")  # a Hub repository: downloaded into, or read from, its cache

Every loader (`from_pretrained`, `MVQPipeline.from_pretrained`, each command's --vae / --stackformer)
goes through `resolve_pretrained`, so a name works wherever a folder does. Hub repositories are
fetched by `huggingface_hub` (its cache, revisions, `local_files_only`, `HF_HUB_OFFLINE`), and only
the files of a pretrained folder: the weights are read from safetensors, never unpickled.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from mvq.errors import MissingInputError

ZOO_ENV = "MVQ_ZOO"
# The files a pretrained folder may hold; nothing else is downloaded from a Hub repository.
FOLDER_FILES = ["config.json", "model.safetensors", "tokenizer.json", "README.md", "examples/*.png"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def zoo_dirs() -> list[Path]:
    """Folders that hold zoo models, in the order they are searched: $MVQ_ZOO's, then the repository's zoo/."""
    dirs = [Path(p) for p in os.environ.get(ZOO_ENV, "").split(os.pathsep) if p]
    repository_zoo = Path(__file__).resolve().parents[3] / "zoo"
    return dirs + ([repository_zoo] if repository_zoo.is_dir() else [])


def zoo_models() -> dict[str, Path]:
    """Name → folder of every zoo model (a folder with a config.json); the first of a name wins."""
    models: dict[str, Path] = {}
    for folder in zoo_dirs():
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            if (entry / "config.json").is_file():
                models.setdefault(entry.name, entry)
    return models


def is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and ".." not in name


def resolve_pretrained(name_or_path: str | os.PathLike, revision: str | None = None,
                       local_files_only: bool | None = None) -> Path:
    """The local folder of a pretrained model: an existing folder, a zoo model, or a Hub repository's snapshot."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    name = str(name_or_path)
    zoo = zoo_models()
    if name in zoo:
        return zoo[name]
    if is_hub_id(name) and not path.exists():
        return _from_hub(name, revision, local_files_only)
    known = f"zoo models: {', '.join(zoo)}" if zoo else "no zoo models found"
    raise MissingInputError(f"pretrained model not found: {name} is not a folder, a zoo model ({known}) or a "
                            "Hugging Face Hub id (org/name)")


def _from_hub(repo_id: str, revision: str | None, local_files_only: bool | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise MissingInputError(f"{repo_id} looks like a Hugging Face Hub id, but huggingface_hub is not installed "
                                "(pip install huggingface_hub)") from None
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=FOLDER_FILES,
                                   local_files_only=bool(local_files_only))
    except LocalEntryNotFoundError:
        raise MissingInputError(f"{repo_id} is not in the Hugging Face Hub cache and cannot be downloaded now "
                                "(offline, or local_files_only): download it once with network access") from None
    except RepositoryNotFoundError:
        raise MissingInputError(f"{repo_id}: no such Hugging Face Hub repository (or it is private: log in with "
                                "`hf auth login`)") from None
    except (HfHubHTTPError, OSError) as exc:
        raise MissingInputError(f"{repo_id}: could not reach the Hugging Face Hub ({str(exc).splitlines()[0]})") \
            from None
    return Path(folder)


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool = False, message: str | None = None) -> str:
    """Upload a pretrained folder to the Hub repository `repo_id` (created if needed); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, allow_patterns=FOLDER_FILES,
                             commit_message=message or f"Upload {Path(folder).name} with mvq")
    return str(info)


def push_model(model, repo_id: str, private: bool = False, message: str | None = None, **save_kwargs) -> str:
    """save_pretrained into a temporary folder, then upload it (`push_to_hub` of every mvq model)."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, **save_kwargs)
        return push_folder(folder, repo_id, private, message)
