"""Flag calibrations: the records ``plmscreen calibrate`` writes, where a screen finds them, and how
a screen applies one.

A record (JSON, ``format`` 1) holds the chosen ``flag_rule`` (``dataclasses.asdict`` of FlagRule,
whatever fields it has), the checkpoint's sha256 it was measured with, the model description, the
seed, the split of source proteins, the criterion and the rates measured on the held-out half with
Clopper-Pearson intervals, and one row per scored construct (``sequences``). It is built by
``plmscreen.screening.experiments.calibration``.

Where a screen looks, when ``settings.calibration`` is ``"auto"`` and its flag thresholds are the
defaults (not set with ``--set flag.…``, ``--settings`` or the threshold options):

1. the run catalog of the screen (``STORE/catalog.sqlite`` or ``--catalog``): table
   ``calibrations``, by checkpoint sha256, newest first;
2. the user's calibration directory, ``$PLMSCREEN_CALIBRATIONS`` (default
   ``${XDG_DATA_HOME:-~/.local/share}/plmscreen/calibrations``): ``*.json`` records, newest first.

``settings.calibration`` may also name a calibration id (looked up in the same two places) or the
path of a record; a record made for another checkpoint is refused. Every run records which
calibration set its rule, or why none did (``calibration_note``): run.json, the catalog's run row,
the CLI summary and the report.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from plmscreen.screening.errors import CalibrationError
from plmscreen.screening.score.metrics import FlagRule

CALIBRATIONS_ENV = "PLMSCREEN_CALIBRATIONS"
RECORD_FORMAT = 1
RECORD_FILENAME = "calibration.json"
UNCALIBRATED_NOTE = "uncalibrated model: flag thresholds are the defaults tuned for plmscreen-mini"
EXPLICIT_NOTE = "flag thresholds set explicitly: no calibration applied"
# The default thresholds were chosen on the bundled control itself (bench/calibrate_flag.py), so a
# screen with that checkpoint and no calibration record is not "uncalibrated": the note says which
# measurement the defaults rest on. The figures ship next to the checkpoint (the package has no
# bench/); tests/test_calibrate.py checks them against bench/results/calibration_plmscreen-mini.json.
BUNDLED_DEFAULTS_PATH = Path(__file__).resolve().parent.parent / "models" / "plmscreen-mini.defaults.json"
_REQUIRED = ("format", "id", "checkpoint_sha256", "created_utc", "flag_rule", "held_out")


def user_calibrations_dir() -> Path:
    """``$PLMSCREEN_CALIBRATIONS``, else ``${XDG_DATA_HOME:-~/.local/share}/plmscreen/calibrations``."""
    if os.environ.get(CALIBRATIONS_ENV):
        return Path(os.environ[CALIBRATIONS_ENV]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "plmscreen" / "calibrations"


def summary_of(record: dict) -> dict:
    """The record without its per-sequence rows: what the catalog keeps."""
    return {k: v for k, v in record.items() if k != "sequences"}


def save_record(record: dict, path: str | Path) -> Path:
    """Write a record atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=float) + "\n")
    tmp.replace(path)
    return path


def load_record(path: str | Path) -> dict:
    """A record read and checked: a CalibrationError says what is wrong with it."""
    try:
        record = json.loads(Path(path).read_text())
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot read the calibration record: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{path}: not a calibration record (invalid JSON: {exc})") from None
    _check(record, str(path))
    return record


def _check(record, where: str) -> None:
    if not isinstance(record, dict) or any(key not in record for key in _REQUIRED):
        missing = [k for k in _REQUIRED if not isinstance(record, dict) or k not in record]
        raise CalibrationError(f"{where}: not a calibration record (missing {', '.join(missing)})")
    if record["format"] != RECORD_FORMAT:
        raise CalibrationError(f"{where}: calibration record format {record['format']}, this plmscreen reads {RECORD_FORMAT}")


def flag_rule_of(record: dict) -> FlagRule:
    """The record's FlagRule; fields this plmscreen's FlagRule lacks are refused, missing ones keep their defaults."""
    known = {f.name for f in dataclasses.fields(FlagRule)}
    unknown = sorted(set(record["flag_rule"]) - known)
    if unknown:
        raise CalibrationError(f"calibration {record['id']}: flag rule field(s) {', '.join(unknown)} unknown to this "
                               f"plmscreen (made by a newer version?)")
    try:
        return FlagRule(**record["flag_rule"])
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"calibration {record['id']}: invalid flag rule: {exc}") from None


# -- registering --------------------------------------------------------------------------


def register_record(record: dict, catalog, record_path: str | Path | None = None) -> None:
    """Insert or replace the record's row in ``catalog`` (a Catalog) under its id."""
    import datetime as dt

    from plmscreen.schema.catalog import Calibration
    from sqlalchemy import delete, insert

    created = dt.datetime.fromisoformat(record["created_utc"])
    row = dict(id=record["id"], checkpoint_sha256=record["checkpoint_sha256"],
               model_name=(record.get("model") or {}).get("model_name"), created_at=created,
               plmscreen_version=record.get("plmscreen_version"), run_id=record.get("run_id"),
               flag_rule=record["flag_rule"], summary=summary_of(record),
               record_path=None if record_path is None else str(Path(record_path).resolve()))
    with catalog.engine.begin() as conn:
        conn.execute(delete(Calibration).where(Calibration.id == record["id"]))
        conn.execute(insert(Calibration).values(**row))


def install_record(record: dict, directory: str | Path | None = None) -> Path:
    """Copy the record into the user's calibration directory as ``<id>.json``."""
    return save_record(record, Path(directory or user_calibrations_dir()) / f"{record['id']}.json")


# -- finding ------------------------------------------------------------------------------


def catalog_records(catalog, *, checkpoint_sha256: str | None = None, calibration_id: str | None = None) -> list[dict]:
    """Record summaries in ``catalog``, newest first."""
    from plmscreen.schema.catalog import Calibration
    from sqlalchemy import select

    query = select(Calibration.summary, Calibration.record_path).order_by(Calibration.created_at.desc(), Calibration.id)
    if checkpoint_sha256 is not None:
        query = query.where(Calibration.checkpoint_sha256 == checkpoint_sha256)
    if calibration_id is not None:
        query = query.where(Calibration.id == calibration_id)
    with catalog.engine.connect() as conn:
        return [{**summary, "record_path": path} for summary, path in conn.execute(query)]


def directory_records(directory: str | Path | None = None, *, checkpoint_sha256: str | None = None,
                      calibration_id: str | None = None) -> list[dict]:
    """Records in a calibration directory (default: the user's), newest first; unreadable files are skipped."""
    directory = Path(directory or user_calibrations_dir())
    found = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            record = load_record(path)
        except CalibrationError:
            continue
        if checkpoint_sha256 is not None and record["checkpoint_sha256"] != checkpoint_sha256:
            continue
        if calibration_id is not None and record["id"] != calibration_id:
            continue
        found.append({**summary_of(record), "record_path": str(path)})
    return sorted(found, key=lambda r: r["created_utc"], reverse=True)


def _catalog_lookup(store: Path | None, catalog_url: str | None, **key) -> list[dict]:
    """From the screen's catalog; a store without a catalog yet has no calibrations (nothing is created)."""
    from plmscreen.schema.catalog import CATALOG_FILENAME
    from plmscreen.screening.run.catalog import Catalog

    if catalog_url is None and (store is None or not (Path(store) / CATALOG_FILENAME).is_file()):
        return []
    with Catalog.open(catalog_url, store) as catalog:
        return catalog_records(catalog, **key)


def find_calibration(checkpoint_sha256: str, choice: str = "auto", store: str | Path | None = None,
                     catalog_url: str | None = None) -> tuple[dict | None, str | None]:
    """(record summary, where it was found) for a screen with this checkpoint, or (None, None).

    ``choice`` is ``"auto"`` (the newest for the checkpoint: the catalog first, then the user's
    directory), a calibration id, or a record's path; an id or path that cannot be found, or a
    record of another checkpoint, is a CalibrationError."""
    store = Path(store) if store is not None else None
    if choice == "auto":
        for where, records in (("catalog", lambda: _catalog_lookup(store, catalog_url, checkpoint_sha256=checkpoint_sha256)),
                               ("user directory", lambda: directory_records(checkpoint_sha256=checkpoint_sha256))):
            found = records()
            if found:
                return found[0], "catalog" if where == "catalog" else f"{where}: {found[0]['record_path']}"
        return None, None
    path = Path(choice).expanduser()
    if path.suffix == ".json" or path.is_file() or os.sep in choice:
        if not path.is_file():
            raise CalibrationError(f"calibration record {choice} not found")
        record, where = summary_of(load_record(path)), f"file: {path.resolve()}"
    else:
        found = _catalog_lookup(store, catalog_url, calibration_id=choice)
        where = "catalog"
        if not found:
            found = directory_records(calibration_id=choice)
            where = f"user directory: {found[0]['record_path']}" if found else None
        if not found:
            raise CalibrationError(f"calibration {choice} is neither in the screen's catalog nor in "
                                   f"{user_calibrations_dir()} (${CALIBRATIONS_ENV}); pass its record's path")
        record = found[0]
    if record["checkpoint_sha256"] != checkpoint_sha256:
        raise CalibrationError(f"calibration {record['id']} was made for checkpoint sha256 {record['checkpoint_sha256']}, "
                               f"not this screen's {checkpoint_sha256}: calibrate this model (plmscreen calibrate)")
    return record, where


# -- applying -----------------------------------------------------------------------------


def held_out_line(record: dict) -> str:
    """'held-out false-flag rate 0/150 (95% CI 0-0.024), sensitivity 120/135 = 0.89 (0.82-0.94)'."""
    held = record["held_out"]

    def part(label: str, rate: dict) -> str:
        return (f"{label} {rate['k']}/{rate['n']} = {rate['rate']:.3f} "
                f"(95% CI {rate['ci_low']:.3f}-{rate['ci_high']:.3f})")

    return f"{part('held-out false-flag rate', held['null'])}, {part('sensitivity', held['carriers'])}"


def bundled_defaults() -> dict:
    """What the default thresholds were measured on: the bundled control's checkpoint and figures."""
    return json.loads(BUNDLED_DEFAULTS_PATH.read_text())


def bundled_defaults_note(defaults: dict) -> str:
    """'default thresholds, chosen for this checkpoint (bundled plmscreen-mini v5): 0/320 repeat-free ... flagged ...'."""
    free, doubled = defaults["repeat_free"], defaults["doubled"]
    return (f"default thresholds, chosen for this checkpoint (bundled {defaults['model']}): "
            f"{free['k']}/{free['n']} repeat-free sequences flagged (one-sided 95% upper bound "
            f"{free['upper_95_one_sided']:.3g}), doubled proteins {doubled['k']}/{doubled['n']}; {defaults['record']}")


def calibration_note(record: dict | None, where: str | None = None, explicit: bool = False,
                     checkpoint_sha256: str | None = None) -> dict:
    """What a run records about where its flag rule came from; ``note`` is the sentence users read."""
    if record is None:
        if explicit:
            return {"id": None, "note": EXPLICIT_NOTE}
        defaults = bundled_defaults()
        if checkpoint_sha256 is not None and checkpoint_sha256 == defaults["checkpoint_sha256"]:
            return {"id": None, "source": "bundled defaults", "note": bundled_defaults_note(defaults)}
        return {"id": None, "note": UNCALIBRATED_NOTE}
    return {
        "id": record["id"],
        "created_utc": record["created_utc"],
        "source": where,
        "model_name": (record.get("model") or {}).get("model_name"),
        "checkpoint_sha256": record["checkpoint_sha256"],
        "flag_rule": record["flag_rule"],
        "held_out": {k: record["held_out"][k] for k in ("null", "carriers")},
        "note": f"calibrated by {record['id']} ({record['created_utc'][:10]}): {held_out_line(record)}",
    }


def apply_calibration(settings, checkpoint_sha256: str, store: str | Path | None = None,
                      catalog_url: str | None = None):
    """(settings with the calibration's flag rule, the run's calibration note).

    ``settings.calibration``: ``"none"`` keeps the rule as given; ``"auto"`` keeps a rule whose
    thresholds differ from the defaults (set explicitly) and otherwise applies the newest
    calibration of the checkpoint, if any (``calibration`` then names it, so a flow that plans
    the same run again applies the same record); an id or path applies that record."""
    choice = settings.calibration
    explicit = settings.flag != FlagRule()
    if choice == "none" or (choice == "auto" and explicit):
        return settings, calibration_note(None, explicit=explicit, checkpoint_sha256=checkpoint_sha256)
    record, where = find_calibration(checkpoint_sha256, choice, store, catalog_url)
    if record is None:
        return settings, calibration_note(None, checkpoint_sha256=checkpoint_sha256)
    applied = dataclasses.replace(settings, flag=flag_rule_of(record),
                                  calibration=record["id"] if choice == "auto" else choice)
    return applied, calibration_note(record, where)
