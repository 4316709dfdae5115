"""What both studies share: the fixed settings, threads, timing, stage-1 configs and result files."""

from __future__ import annotations

import json
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

REPOSITORY = Path(__file__).resolve().parents[2]
SETTINGS = Path(__file__).with_name("settings.yaml")
RESULTS = REPOSITORY / "experiments" / "results"


def load_settings(path: Path = SETTINGS) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(Path(path).read_text())


def use_threads(threads: int) -> None:
    """The same number of torch threads for every arm (the machine is shared: fewer is steadier)."""
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


class Stopwatch:
    """Wall seconds per named part."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 1)


def stage1_config(model: dict, data: dict, *, steps: int, lr: float, warmup_steps: int, perceptual_weight: float,
                  disc_start: int, seed: int) -> dict:
    """A stage-1 `mvq train` config: no validation or image grids during the run, one checkpoint at its end."""
    return {
        "model": model,
        "data": data,
        "loss": {"perceptual_weight": perceptual_weight, "disc_start": disc_start},
        "optim": {"lr": lr, "warmup_steps": warmup_steps},
        "trainer": {"max_steps": steps, "limit_val_batches": 0, "num_sanity_val_steps": 0, "log_every_n_steps": 10,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "run": {"seed": seed, "image_every_n_steps": 10 ** 9, "checkpoint_every_n_steps": steps},
    }


def train_and_export(config: dict, run_dir: Path, export_dir: Path) -> Path:
    """`mvq train` the config into `run_dir` (started afresh), then `mvq export` its last checkpoint."""
    import shutil

    import yaml

    from mvq.training.run import export, train

    for folder in (run_dir, export_dir):
        if folder.exists():
            shutil.rmtree(folder)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    config_path = run_dir.parent / f"{run_dir.name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    trained = train(str(config_path), [], run_dir=str(run_dir))
    return export(trained, export_dir)


def environment() -> dict[str, Any]:
    import torch

    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)}


def write_json(path: Path, data: dict) -> None:
    from mvq.storage.atomic import atomic_write_json

    atomic_write_json(path, data)
    print(f"wrote {path}", flush=True)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
