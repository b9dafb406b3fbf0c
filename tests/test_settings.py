"""ScreenSettings travels whole: one object from the CLI through the flow and the deployments, with
the only copy of every default, settable field by field (--set) or from a file (--settings)."""

import dataclasses
import json

import pytest

from plmscreen.screening.run.settings import MAX_SHARD_TOKENS, ScreenSettings, SettingsError
from plmscreen.screening.score.metrics import FlagRule
from plmscreen.screening.score.repeats import RepeatParams
from plmscreen.screening.score.scorer import ScoringOptions


def test_settings_round_trip_through_json_and_keep_nested_groups_typed():
    settings = ScreenSettings(model="m.pt", device="cpu", scoring=ScoringOptions(batch_tokens=512),
                              repeats=RepeatParams(min_identity=0.4), flag=FlagRule(min_inflation_factor=1.2),
                              shard_tokens=1234, mode="triage", diagnostics=False)
    again = ScreenSettings.from_dict(json.loads(json.dumps(settings.to_dict())))
    assert again == settings
    assert isinstance(again.repeats, RepeatParams) and again.repeats.min_identity == 0.4
    # Omitted fields keep their defaults, nested ones too.
    partial = ScreenSettings.from_dict({"model": "x", "flag": {"min_repeat_fraction": 0.2}})
    assert partial.flag == FlagRule(min_repeat_fraction=0.2) and partial.repeats == RepeatParams()


def test_overrides_are_typed_by_the_field_and_reach_every_group():
    settings = ScreenSettings().with_overrides([
        "repeats.min_identity=0.35", "repeats.max_regions=7", "flag.min_inflation_factor=1.3",
        "scoring.batch_tokens=none", "mode=triage", "diagnostics=false", "shard_tokens=5000"])
    assert settings.repeats.min_identity == 0.35 and settings.repeats.max_regions == 7
    assert isinstance(settings.repeats.max_regions, int)
    assert settings.flag.min_inflation_factor == 1.3 and settings.scoring.batch_tokens is None
    assert settings.mode == "triage" and settings.diagnostics is False and settings.shard_tokens == 5000


@pytest.mark.parametrize("assignment, words", [
    ("repeats.no_such=1", ["repeats", "no_such", "min_identity"]),
    ("nosuch.x=1", ["nosuch", "scoring, repeats, flag"]),
    ("flag.min_inflation_factor=big", ["flag.min_inflation_factor=big", "float"]),
    ("flag.min_inflation_factor=0.5", ["min_inflation_factor must be >= 1"]),
    ("mode", ["NAME=VALUE"]),
    ("repeats=1", ["no parameter 'repeats'"]),
])
def test_bad_overrides_name_the_parameter_and_the_reason(assignment, words):
    with pytest.raises(SettingsError) as caught:
        ScreenSettings().with_overrides([assignment])
    for word in words:
        assert word in str(caught.value)


def test_settings_file_and_its_errors(tmp_path):
    good = tmp_path / "s.json"
    good.write_text(json.dumps({"mode": "triage", "repeats": {"min_length": 20}}))
    assert ScreenSettings.from_file(good) == ScreenSettings(mode="triage", repeats=RepeatParams(min_length=20))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"moed": "triage"}))
    with pytest.raises(SettingsError, match="unknown parameter.*moed"):
        ScreenSettings.from_file(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(SettingsError, match="not a JSON settings file"):
        ScreenSettings.from_file(broken)
    with pytest.raises(SettingsError, match="cannot read the settings file"):
        ScreenSettings.from_file(tmp_path / "missing.json")


def test_the_shard_default_has_one_home():
    """Unset shard size: sized for the cluster, else the one fixed default."""
    assert ScreenSettings().shard_tokens is None
    assert ScreenSettings().shard_budget == MAX_SHARD_TOKENS
    assert ScreenSettings(mode="triage").shard_budget > MAX_SHARD_TOKENS
    assert ScreenSettings().parameters()["shard_tokens"] == MAX_SHARD_TOKENS
    from plmscreen.flows import resources

    assert resources.MAX_SHARD_TOKENS is MAX_SHARD_TOKENS


def test_a_new_field_needs_no_other_edit():
    """Every field of every group is reachable by --set and survives the JSON round trip."""
    for group in ("scoring", "repeats", "flag"):
        for f in dataclasses.fields(getattr(ScreenSettings(), group)):
            value = getattr(getattr(ScreenSettings(), group), f.name)
            text = "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
            assert getattr(getattr(ScreenSettings().with_overrides([f"{group}.{f.name}={text}"]), group), f.name) == value


def test_the_cli_builds_one_settings_object_and_records_it(tmp_path, tiny_checkpoint):
    """--settings, --set and the named options meet in one ScreenSettings, recorded with the run."""
    import subprocess
    import sys

    from conftest import example_fasta

    fasta = example_fasta(tmp_path / "in.fasta", 3)
    settings_file = tmp_path / "s.json"
    settings_file.write_text(json.dumps({"repeats": {"min_identity": 0.3}, "flag": {"min_repeat_fraction": 0.1}}))
    store = tmp_path / "store"
    done = subprocess.run([sys.executable, "-m", "plmscreen.cli", "screen", str(fasta), "--out", str(store),
                           "--model", str(tiny_checkpoint), "--device", "cpu", "--in-process", "--no-progress",
                           "--settings", str(settings_file), "--set", "repeats.max_regions=9",
                           "--min-repeat-fraction", "0.2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_json,) = store.glob("runs/*/run.json")
    parameters = json.loads(run_json.read_text())["parameters"]
    assert parameters["repeats"]["min_identity"] == 0.3 and parameters["repeats"]["max_regions"] == 9
    assert parameters["flag"]["min_repeat_fraction"] == 0.2  # the named option wins over the file
    bad = subprocess.run([sys.executable, "-m", "plmscreen.cli", "screen", str(fasta), "--out", str(store),
                          "--in-process", "--set", "repeats.min_identiy=0.3"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "min_identiy" in bad.stderr and "min_identity" in bad.stderr
