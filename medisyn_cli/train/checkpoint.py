"""The run folder's state: options a resume must share, checkpoints (saved atomically) and their restore."""

from __future__ import annotations

import json
from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.ownership import foreign_message, holds_files, is_ours, remove_private
from medisyn_cli.core.progress import console
from medisyn_cli.train.config import FREE_ON_RESUME, TrainConfig, run_options


def check_out(out: Path, config: TrainConfig) -> None:
    """Refuse an --out that is not a folder, holds files medisyn did not write, or is a run resumed with other options."""
    if out.exists() and not out.is_dir():
        raise MedisynError(f"--out {out}: exists and is not a folder")
    if holds_files(out) and not is_ours(out) and not (out / "_work" / "config.json").is_file():
        raise MedisynError(foreign_message(out, "--out", "train"))
    if holds_files(out, lambda p: p.name.startswith(".medisyn")) and not config.resume:
        raise MedisynError(f"--out {out}: folder exists and is not empty (use --resume to continue a run)")
    saved = out / "_work" / "config.json"
    if config.resume and saved.exists():
        previous, current = json.loads(saved.read_text()), run_options(config)
        defaults = run_options(TrainConfig(data=config.data, out=config.out))
        changed = [
            k for k in current if k not in FREE_ON_RESUME and current[k] != previous.get(k, defaults[k])
        ]
        if changed:
            raise MedisynError(f"--resume: options differ from the run in {out}: {', '.join(changed)}")


def save_options(work: Path, config: TrainConfig) -> None:
    """Record the run's options (_work/config.json), what a --resume compares."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(run_options(config), indent=2))


def save_checkpoint(
    accelerator, work: Path, step: int, losses: list[float], optimizer: str = "adamw"
) -> None:
    """Save state (and the optimiser's name) to a temp folder, then rename it; keep the latest two."""
    root = work / "checkpoints"
    tmp = root / f".tmp-{step:06d}"
    remove_private(tmp)
    accelerator.save_state(str(tmp))
    (tmp / "medisyn_state.json").write_text(
        json.dumps({"step": step, "losses": losses, "optimizer": optimizer})
    )
    final = root / f"step-{step:06d}"
    remove_private(final)
    tmp.rename(final)
    for old in sorted(root.glob("step-*"))[:-2]:
        remove_private(old)


def latest_checkpoint(work: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, if any."""
    done = sorted((work / "checkpoints").glob("step-*"))
    return done[-1] if done else None


def restore(accelerator, work: Path, optimizer: str = "adamw") -> tuple[list[float], int]:
    """Load the latest checkpoint into the accelerator; returns (losses so far, step), or ([], 0) for a new run.
    A checkpoint of another optimiser is refused: its state would not load into this one."""
    checkpoint = latest_checkpoint(work)
    if checkpoint is None:
        return [], 0
    state = json.loads((checkpoint / "medisyn_state.json").read_text())
    saved = state.get("optimizer", "adamw")  # checkpoints from before --optimizer: AdamW
    if saved != optimizer:
        raise MedisynError(
            f"--optimizer {optimizer}: the checkpoint {checkpoint} holds {saved} state; resume with "
            f"--optimizer {saved}, or train into a new --out"
        )
    accelerator.load_state(str(checkpoint))
    console.print(f"resumed from {checkpoint} at step {state['step']}")
    return state["losses"], state["step"]


def legacy_train_files(folder: Path) -> set[str]:
    """An older `train` run's folder (its _work/config.json): the files it wrote are all but none known; only
    its scratch folder is taken as medisyn's."""
    work = folder / "_work"
    return (
        {p.relative_to(folder).as_posix() for p in work.rglob("*") if p.is_file()} if work.is_dir() else set()
    )
