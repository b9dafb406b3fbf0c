"""ScreenSettings: every parameter of a screen (model, scoring, repeats, flag rule, shards, mode),
with the only copy of each default.

The CLI builds one ScreenSettings; the flow and the deployments take it whole as one parameter
(a JSON object in ``deploy/prefect.yaml`` and in the Prefect UI), and ``prepare_run`` records it
with the run. A new parameter is one field on the dataclass it belongs to: ``--set`` and
``--settings FILE`` reach every field with no other edit.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plmscreen.screening.errors import InputError
from plmscreen.screening.score.metrics import FlagRule
from plmscreen.screening.score.repeats import RepeatParams
from plmscreen.screening.score.options import ScoringOptions

MODES = ("exact", "triage")
# Triage runs about a ninth of exact mode's tokens (9.4x fewer on an E. coli sample,
# bench/results/triage_*): its shards hold 8x the exact cost so tasks stay long enough that
# Prefect and Dask overhead remains small.
TRIAGE_SHARD_SCALE = 8
# The largest shard, as scoring cost Σ L·min(L, window): a shard is also what a crashed screen
# redoes. It is the shard size when no cluster is known to size shards for.
MAX_SHARD_TOKENS = 4_000_000
# ... unless that makes more shards than this: every shard is a Prefect task run, a catalog row and
# three part files, so an automatic size grows with the input to keep runs in the thousands of
# shards (UniRef50, ~60 M sequences, gets ~4,000 shards of ~15,000 sequences, not ~1.3 M shards).
MAX_SHARDS = 4_000

# The nested parameter groups and their classes: what --set section.field=value reaches.
SECTIONS = {"scoring": ScoringOptions, "repeats": RepeatParams, "flag": FlagRule}


class SettingsError(InputError):
    """A settings file or --set assignment that does not name a parameter or holds a bad value."""


@dataclass(frozen=True)
class ScreenSettings:
    """Everything that decides a screen's numbers; validated once, recorded with every output."""

    model: str = "plmscreen-mini"
    weights_dir: str | None = None
    # A Hugging Face hub id not found locally may be downloaded (config, tokenizer, safetensors).
    # Off by default: screens run offline. Not part of the run's identity (the files' digests are).
    hub_download: bool = False
    device: str = "auto"
    scoring: ScoringOptions = field(default_factory=ScoringOptions)
    repeats: RepeatParams = field(default_factory=RepeatParams)
    flag: FlagRule = field(default_factory=FlagRule)
    # Shard cost budget (Σ L·min(L, window) over its sequences); None: sized for the cluster the
    # screen runs on (about four shards per worker), at most MAX_SHARD_TOKENS unless that makes
    # more than MAX_SHARDS shards.
    shard_tokens: int | None = None
    mode: str = "exact"  # "triage": masked/ablated scoring only where it can change the flag
    diagnostics: bool = True  # copy-following and null co-mask columns for flagged sequences
    # Copy the rows of sequences already scored under the same reuse_key() (an earlier run in the
    # store, or another record of this input with the same residues) instead of scoring them again
    # (screening/run/reuse.py). Not part of the run's identity: the rows hold the same numbers
    # either way, so --no-reuse names the same run (add --overwrite to recompute a finished one).
    reuse: bool = True
    # Where the flag rule comes from (screening/run/calibrations.py): "auto" uses the newest
    # calibration of the checkpoint (store catalog, then $PLMSCREEN_CALIBRATIONS) unless the flag
    # thresholds differ from the defaults; "none" uses the flag rule as given; otherwise the id of
    # a calibration or the path of its JSON record. prepare_run replaces "auto" by the id it
    # applied. Not part of the run's identity: the flag rule it sets is.
    calibration: str = "auto"

    def __post_init__(self):
        # Nested groups may arrive as JSON objects (deployments, the Prefect UI, --settings FILE).
        for name, cls in SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, _build(cls, value, name))
            elif not isinstance(value, cls):
                raise SettingsError(f"settings.{name} must be a {cls.__name__} or an object of its fields, got {value!r}")
        if self.shard_tokens is not None and self.shard_tokens < 1:
            raise SettingsError(f"shard_tokens must be positive (or null: sized for the cluster), got {self.shard_tokens}")
        if not isinstance(self.calibration, str) or not self.calibration.strip():
            raise SettingsError(f"calibration must be 'auto', 'none', a calibration id or a record path, got {self.calibration!r}")
        if self.mode not in MODES:
            raise SettingsError(f"mode must be one of {MODES}, got '{self.mode}'")

    @property
    def shard_budget(self) -> int:
        """Exact-mode cost (Σ L·min(L, window)) one shard may hold in this mode."""
        return (self.shard_tokens or MAX_SHARD_TOKENS) * (TRIAGE_SHARD_SCALE if self.mode == "triage" else 1)

    def identity(self) -> dict:
        """What names a run: the settings that change its numbers or flags. Batch size, engine and
        shard size only change how fast it goes, so a rerun with another ``--batch-tokens`` after
        an out-of-memory failure resumes the same run instead of throwing its shards away."""
        return {
            "scoring": {"precision": self.scoring.precision, "masks_per_copy": self.scoring.masks_per_copy},
            "repeats": dataclasses.asdict(self.repeats),
            "flag": dataclasses.asdict(self.flag),
            "mode": self.mode,
            "diagnostics": self.diagnostics,
        }

    def reuse_key(self) -> dict:
        """What stored scores must have been computed with to be copied into this screen (with the
        same checkpoint sha256 and plmscreen version, see screening/run/reuse.py): the identity
        without the flag rule (but its ``null_draws``, which decide the stored null co-masks) and the
        diagnostics switch. The thresholds only decide the flag, recomputed from the copied numbers; diagnostics are copied, computed or left null per
        sequence. Triage masks only sequences whose repeat fraction reaches the rule's
        ``min_repeat_fraction``, so in triage mode that threshold changes the numbers: it is kept."""
        key = self.identity()
        del key["flag"], key["diagnostics"]
        key["null_draws"] = self.flag.null_draws  # decides the stored null co-masks
        if self.mode == "triage":
            key["triage_min_repeat_fraction"] = self.flag.min_repeat_fraction
        return key

    def parameters(self) -> dict:
        """The parameters recorded with a run (the model is recorded by name and checkpoint sha256)."""
        data = self.to_dict()
        for name in ("model", "weights_dir", "hub_download", "device"):
            data.pop(name)
        data["shard_tokens"] = self.shard_tokens or MAX_SHARD_TOKENS
        return data

    def to_dict(self) -> dict:
        """Plain JSON values: what the flow parameter, a settings file and run.json hold."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScreenSettings:
        return _build(cls, data, "settings")

    @classmethod
    def from_file(cls, path: str | Path) -> ScreenSettings:
        """A JSON settings file, as ``to_dict`` writes it; omitted fields keep their defaults."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise SettingsError(f"{path}: cannot read the settings file: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise SettingsError(f"{path}: not a JSON settings file: {exc}") from None
        if not isinstance(data, dict):
            raise SettingsError(f"{path}: a settings file holds one JSON object")
        return cls.from_dict(data)

    def with_overrides(self, assignments: Iterable[str]) -> ScreenSettings:
        """Apply ``field=value`` / ``section.field=value`` assignments (``--set``), typed by the field."""
        data = self.to_dict()
        for assignment in assignments:
            key, sep, text = assignment.partition("=")
            if not sep:
                raise SettingsError(f"--set {assignment!r}: expected NAME=VALUE, e.g. flag.min_inflation_factor=1.1")
            path = key.strip().split(".")
            owner, target, where = data, ScreenSettings, "settings"
            for part in path[:-1]:
                if part not in SECTIONS or target is not ScreenSettings:
                    raise SettingsError(f"--set {key}: no parameter group {part!r}; groups: {', '.join(SECTIONS)}")
                owner, target, where = owner[part], SECTIONS[part], part
            name = path[-1]
            fields = {f.name: f for f in dataclasses.fields(target)}
            if name not in fields or (target is ScreenSettings and name in SECTIONS):
                known = sorted(n for n in fields if not (target is ScreenSettings and n in SECTIONS))
                raise SettingsError(f"--set {key}: {where} has no parameter {name!r}; known: {', '.join(known)}")
            owner[name] = _parse(text.strip(), _field_type(target, name), key)
        return ScreenSettings.from_dict(data)


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _parse(text: str, kind: Any, key: str) -> Any:
    """A --set value as the field's type: int, float, bool, str, or None for optional fields."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union else (kind,)
    if type(None) in options and text.lower() in ("none", "null", ""):
        return None
    for option in options:
        if option is bool:
            if text.lower() in ("true", "yes", "1", "on"):
                return True
            if text.lower() in ("false", "no", "0", "off"):
                return False
        elif option in (int, float):
            try:
                return option(text)
            except ValueError:
                continue
        elif option is str:
            return text
    raise SettingsError(f"--set {key}={text}: not a valid {' or '.join(getattr(o, '__name__', str(o)) for o in options)}")


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """``cls(**data)`` with unknown names and bad values reported by name."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SettingsError(f"{where}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**data)
    except SettingsError:
        raise
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{where}: {exc}") from None
