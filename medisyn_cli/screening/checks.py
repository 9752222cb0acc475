"""Image checks inside `generate`: the near-copy screen, the label judge and plug-ins, behind one interface.

    check = get_check("near_copy")(config)       # a factory takes the run's options (GenerateConfig)
    for verdict in check.check(images, labels):  # labels: the class each image was made for
        if verdict.rejected:
            print(verdict.reason)                # "near-copy of train/a.png (similarity 0.983)"

A check is an object with `name` and `check(images, labels) -> list[Verdict]`; optional attributes:
`columns` (its rejected.parquet columns, name -> pyarrow type name, filled from `Verdict.details`), `counter`
(the per-class tally its rejections count in: run.json `classes`; default `<name>_rejected`), `keeps_image`
(rejected.parquet keeps the PNG of the images it rejects), `records_message` (default True: rejected.parquet's
`message` column holds `Verdict.reason`; medisyn's own checks say why in their columns) and
`ended_reason(verdict, image_id, label, max_attempts)` (why a class ended). `Checks` runs a run's checks in order over every image: the first that
rejects an image gives its reason, every check's details go with it.

The registry: `register_check(name, factory, help=...)`, `get_check`, `check_names`, `checks_help`; medisyn's
own are `near_copy` (this folder: --index) and `label` (judge/screening.py, named here and imported on first
use: --judge); other packages add theirs through the `medisyn.checks` entry point group (core.plugins), chosen
with `generate --check NAME`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.plugins import load_plugins
from medisyn_cli.screening.index import load_index
from medisyn_cli.screening.screener import MATCH_FIELDS, Screener

PLUGINS = "medisyn.checks"


@dataclass(frozen=True)
class Verdict:
    """One image's verdict: rejected or kept, why (one line), and the check's columns for its records."""

    rejected: bool
    reason: str = ""  # e.g. "near-copy of train/a.png (similarity 0.983)", "off-label: ..."; "" when kept
    details: dict = field(default_factory=dict)  # the check's columns (rejected.parquet, the image's row)
    check: str = ""  # the name of the check that rejected it (Checks sets it); "" when kept


# --- the registry ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckEntry:
    """A registered check: its factory (the run's options -> a check; "module:attr": imported on first use)."""

    name: str
    factory: Callable | str
    help: str

    def load(self) -> Callable:
        """The factory itself."""
        if not isinstance(self.factory, str):
            return self.factory
        from importlib import import_module

        module, _, attribute = self.factory.partition(":")
        return getattr(import_module(module), attribute)


_CHECKS: dict[str, CheckEntry] = {}


def register_check(name: str, factory: Callable | str, *, help: str = "", replace: bool = False) -> None:
    """Make `factory(config) -> check` the check `name`; ValueError if the name is taken or not a plain word."""
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"check name {name!r}: must be a non-empty word (letters, digits, - _ .)")
    if name in _CHECKS and _CHECKS[name].factory is not factory and not replace:
        raise ValueError(f"check '{name}' is already registered")
    doc = (getattr(factory, "__doc__", None) or "").strip().splitlines()
    _CHECKS[name] = CheckEntry(name, factory, " ".join((help or (doc[0] if doc else name)).split()))


def unregister_check(name: str) -> None:
    """Remove a registered check (plug-ins and tests)."""
    _CHECKS.pop(name, None)


def _entries() -> dict[str, CheckEntry]:
    load_plugins(
        PLUGINS, lambda name, factory: register_check(name, factory, help=getattr(factory, "help", ""))
    )
    return _CHECKS


def check_names() -> tuple[str, ...]:
    """The registered checks, plug-ins included, in registration order."""
    return tuple(_entries())


def checks_help() -> str:
    """One line per registered check, for --help."""
    return "\n".join(f"{entry.name}: {entry.help}" for entry in _entries().values())


def get_check(name: str) -> Callable:
    """The factory of check `name`; MedisynError listing the registered names otherwise."""
    entry = _CHECKS.get(name) or _entries().get(name)
    if entry is None:
        raise MedisynError(f"--check: '{name}' is not one of {', '.join(check_names())}")
    return entry.load()


def parse_check_list(value: str | tuple | list | None) -> tuple[str, ...]:
    """'toy,other' (or a tuple of names) -> registered names, duplicates dropped; MedisynError naming unknown ones."""
    words = value.split(",") if isinstance(value, str) else list(value or ())
    names = tuple(dict.fromkeys(w.strip() for w in words if w.strip()))
    for name in names:
        get_check(name)
    return names


# --- running a run's checks -----------------------------------------------------------------------------


class Checks:
    """A run's checks as one: every check sees every image, in order; the first that rejects names the reason."""

    def __init__(self, checks: list):
        self.checks = list(checks)
        self.by_name = {check.name: check for check in self.checks}

    @property
    def names(self) -> tuple[str, ...]:
        """The checks' names, in the order they run."""
        return tuple(self.by_name)

    def check(self, images: list, labels: list[str]) -> list[Verdict]:
        """One Verdict per image: rejected by the first check that rejects it, with every check's details."""
        each = [check.check(images, labels) for check in self.checks]
        verdicts = []
        for j in range(len(images)):
            found = [(check, results[j]) for check, results in zip(self.checks, each)]
            details = {key: value for _, verdict in found for key, value in verdict.details.items()}
            first = next(((c, v) for c, v in found if v.rejected), None)
            verdicts.append(
                Verdict(True, first[1].reason, details, first[0].name)
                if first
                else Verdict(False, "", details)
            )
        return verdicts

    def counter(self, verdict: Verdict) -> str:
        """The per-class tally a rejection counts in (rejected: near-copies; label_rejected: the judge's)."""
        return getattr(self.by_name[verdict.check], "counter", f"{verdict.check}_rejected")

    def keeps_image(self, verdict: Verdict) -> bool:
        """Whether rejected.parquet keeps the PNG of this rejected image (never a near-copy's)."""
        return bool(getattr(self.by_name[verdict.check], "keeps_image", False))

    def ended_reason(self, verdict: Verdict, image_id: str, label: str, max_attempts: int) -> str:
        """Why a class ended after `max_attempts` rejections in a row of one image (the last one's check says)."""
        check = self.by_name[verdict.check]
        if hasattr(check, "ended_reason"):
            return check.ended_reason(verdict, image_id, label, max_attempts)
        return (
            f"{max_attempts} images in a row for {image_id} were rejected, the last by the {check.name} check "
            f"({verdict.reason})"
        )

    def columns(self) -> dict[str, str]:
        """rejected.parquet's columns: the image, the near-copy columns (every screened or judged run has them), and
        with any other check `reason` (the rejecting check's name), each check's columns, `message` (the reason in
        words, where a check records it) and `image`."""
        columns = {**BASE_COLUMNS, **NearCopyCheck.columns}
        others = [check for check in self.checks if check.name != NearCopyCheck.name]
        if others:
            columns["reason"] = "string"
            for check in others:
                columns.update(getattr(check, "columns", {}))
            if any(getattr(check, "records_message", True) for check in others):
                columns["message"] = "string"
            if any(getattr(check, "keeps_image", False) for check in others):
                columns["image"] = "binary"
        return columns


# --- near-copy screening --------------------------------------------------------------------------------

MATCH_TYPES = dict(
    zip(MATCH_FIELDS, ("int64", "string", "string", "float32", "string", "string", "float32", "int32"))
)


class NearCopyCheck:
    """The near-copy screen (Screener) as a check: rejects an image at or above the index's threshold."""

    name = "near_copy"
    counter = "rejected"
    records_message = False  # its columns say why (nearest training image and similarity)
    columns = MATCH_TYPES  # the nearest training image (screener.MATCH_FIELDS)

    def __init__(self, screener: Screener):
        self.screener = screener

    def check(self, images: list, labels: list[str]) -> list[Verdict]:
        """A Verdict per image; details: its nearest training image (key, similarity, view, region...)."""
        return [
            Verdict(
                result.near_copy,
                f"near-copy of {result.nn_key} ({self.evidence(result)})" if result.near_copy else "",
                {name: getattr(result, name) for name in MATCH_TYPES},
            )
            for result in self.screener.check(images)
        ]

    def evidence(self, result) -> str:
        """Why a result is a near-copy: its similarity, and the keypoint verification where that decided."""
        screener, phrase = self.screener, f"similarity {result.nn_similarity:.3f}"
        verified = (
            screener.verify_threshold is not None and (result.inliers or 0) >= screener.verify_threshold
        )
        if verified and not result.nn_similarity >= screener.threshold:
            phrase += f"; {result.inliers} keypoints fit one affine map and the aligned images agree"
        return phrase

    def ended_reason(self, verdict: Verdict, image_id: str, label: str, max_attempts: int) -> str:
        """The model memorises the class."""
        return (
            f"{max_attempts} images in a row for {image_id} were near-copies of training images (last: "
            f"{verdict.details['nn_key']}, similarity {verdict.details['nn_similarity']:.3f}); the model "
            f"memorises this class"
        )


def near_copy_check(config) -> NearCopyCheck:
    """The near-copy check of a run's --index and --threshold."""
    if getattr(config, "index", None) is None:
        raise MedisynError("--check near_copy: needs --index (the training index to screen against)")
    return NearCopyCheck(Screener(load_index(config.index), config.threshold))


register_check("near_copy", near_copy_check, help="near-copies of training images (--index)")
register_check(  # judge/ is above this folder: named here, imported on first use
    "label",
    "medisyn_cli.judge.screening:label_check",
    help="images the judge does not recognise as their class (--judge)",
)


# --- rejected.parquet -----------------------------------------------------------------------------------

BASE_COLUMNS = {"id": "string", "label": "string", "prompt": "string", "seed": "int64", "attempt": "int32"}


class RejectedLog:
    """rejected.parquet (or one batch's part of it): a row per rejected image, with the columns of the run's checks
    (`Checks.columns`). A near-copy's pixels are never stored: it resembles a patient's image."""

    def __init__(self, path, columns: dict[str, str] | None = None, schema=None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.schema = schema or pa.schema([pa.field(k, getattr(pa, v)()) for k, v in columns.items()])
        self.handle = pq.ParquetWriter(self.tmp, self.schema)
        self.rows = 0

    def write(self, items: list, checks: Checks) -> None:
        """Log rejected `Generated` items (their Verdict in `.screen`)."""
        import pyarrow as pa

        if not items:
            return
        rows = [self.row(item, checks) for item in items]
        names = self.schema.names
        self.handle.write_table(
            pa.Table.from_pylist([{k: r.get(k) for k in names} for r in rows], schema=self.schema)
        )
        self.rows += len(rows)

    @staticmethod
    def row(item, checks: Checks) -> dict:
        """One rejected item: the image's job, every check's details, the rejecting check and (if it keeps it) the PNG."""
        verdict = item.screen
        return {
            "id": item.job.id,
            "label": item.job.label,
            "prompt": item.job.prompt,
            "seed": item.seed,
            "attempt": item.attempt,
            **verdict.details,
            "reason": verdict.check,
            "message": verdict.reason,
            "image": item.png() if checks.keeps_image(verdict) else None,
        }

    def close(self) -> dict:
        """Publish the file (one rename); its entry for run.json."""
        self.handle.close()
        self.tmp.replace(self.path)
        return {"file": self.path.name, "rows": self.rows}


def batches_log(folder: Path) -> Callable[[Path], RejectedLog] | None:
    """A RejectedLog maker with the columns the batches in `folder` were written with (None: the run checked
    nothing, so no batch wrote one)."""
    import pyarrow.parquet as pq

    first = next(iter(sorted(Path(folder).glob("b-*.parquet"))), None)
    if first is None:
        return None
    schema = pq.read_schema(first).remove_metadata()
    return lambda path: RejectedLog(path, schema=schema)
