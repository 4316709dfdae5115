"""A run's state kept in the repository, so that a run longer than a machine's life continues on any clone.

Such a run trains in spans that end before the machine does. What the next span needs, the run
folder's config.yaml, checkpoints/last.ckpt and logs/, is a few MB and can be committed; the rest of
the run folder (best.ckpt, images) stays out of git. `keep_run` copies it out after a span,
`restore_run` copies it back into a missing or older run folder before the next one.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from mvq.training.checkpoints import read_checkpoint

LAST = Path("checkpoints") / "last.ckpt"


def trained_steps(run: Path) -> int:
    """The optimizer steps of a run folder's last.ckpt (0 without one)."""
    return int(read_checkpoint(run / LAST)["global_step"]) if (run / LAST).is_file() else 0


def require_committable(kept: Path) -> None:
    """Refuse a KEPT folder whose last.ckpt git would ignore: committing KEPT would silently leave the run
    behind, and the next clone would start it again from step 0. Outside a git work tree there is nothing to check."""
    checkpoint = (kept / LAST).resolve()
    existing = next(folder for folder in checkpoint.parents if folder.is_dir())
    try:
        ignored = subprocess.run(["git", "check-ignore", "--quiet", "--no-index", str(checkpoint)], cwd=existing,
                                 capture_output=True).returncode == 0
    except FileNotFoundError:  # no git on this machine
        return
    if ignored:
        raise SystemExit(f"{kept / LAST} is ignored by git, so committing {kept} would not keep the run: "
                         f"add a '!' rule for it to .gitignore (as for zoo/training/*/{LAST.as_posix()})")


def keep_run(run: Path, kept: Path) -> None:
    """RUN's config.yaml, checkpoints/last.ckpt and every logs/ file into KEPT (replacing those)."""
    (kept / "checkpoints").mkdir(parents=True, exist_ok=True)
    (kept / "logs").mkdir(exist_ok=True)
    for name in ("config.yaml", str(LAST)):
        shutil.copy2(run / name, kept / name)
    for log in (run / "logs").iterdir():
        if log.is_file():
            shutil.copy2(log, kept / "logs" / log.name)


def restore_run(run: Path, kept: Path) -> bool:
    """RUN from KEPT when KEPT is further along (a fresh clone has no RUN); never a RUN that is ahead."""
    if not (kept / LAST).is_file() or trained_steps(run) >= trained_steps(kept):
        return False
    keep_run(kept, run)
    return True
