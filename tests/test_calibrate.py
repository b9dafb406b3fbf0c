"""`plmscreen calibrate`: constructs, the split, the threshold criterion, held-out rates against the
store, and screens that pick the calibration up (or say they are uncalibrated)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import example_fasta
from scipy.stats import beta

from plmscreen.screening.errors import CalibrationError
from plmscreen.screening.experiments import calibration as cal
from plmscreen.screening.experiments.constructs import block_shuffled, insert_copy
from plmscreen.screening.run import calibrations
from plmscreen.screening.score.metrics import FlagRule

# Small enough for 2 shared cores: 4 short proteins, short units, two identities.
SMALL = cal.CalibrationSettings(seed=3, max_null_rate=0.5, n_proteins=4, min_length=60, max_length=80,
                                doubled_length=30, unit_length=20, gap=10, identities=(1.0, 0.5),
                                residue_shuffles=2, block_shuffles=2, natural=False)


def _rng(seed=0):
    return np.random.default_rng(seed)


# -- constructs, split, statistics (no model) ---------------------------------------------


def test_block_shuffle_keeps_composition_and_pieces():
    seq = "ACDEFGHIKLMNPQRSTVWYACDEFGHIK"
    out = block_shuffled(seq, 5, _rng(1))
    assert sorted(out) == sorted(seq) and out != seq
    remaining = out
    for piece in sorted((seq[i:i + 5] for i in range(0, len(seq), 5)), key=len, reverse=True):
        assert piece in remaining  # every 5-residue piece survives whole
        remaining = remaining.replace(piece, "", 1)
    assert remaining == ""


def test_insert_copy_places_a_copy_at_the_identity():
    seq = "".join(_rng(2).choice(list("ACDEFGHIKLMNPQRSTVWY"), size=100))
    for identity in (1.0, 0.7, 0.3):
        out, start, at = insert_copy(seq, 20, identity, 10, _rng(3))
        assert len(out) == 120 and at >= start + 30
        assert out[:at] == seq[:at] and out[at + 20:] == seq[at:]
        same = sum(a == b for a, b in zip(seq[start:start + 20], out[at:at + 20]))
        assert same == round(identity * 20)
    with pytest.raises(ValueError):
        insert_copy(seq[:25], 20, 1.0, 10, _rng(0))


def test_constructs_and_split_are_seeded_and_split_by_protein():
    proteins = [(f"p{i}", "".join(_rng(i).choice(list("ACDEFGHIKLMNPQRSTVWY"), size=90))) for i in range(10)]
    first, again = cal.build_constructs(proteins, SMALL), cal.build_constructs(proteins[::-1], SMALL)
    assert sorted((c.seq_id, c.sequence) for c in first) == sorted((c.seq_id, c.sequence) for c in again)
    other = cal.build_constructs(proteins, dataclasses.replace(SMALL, seed=4))
    assert {c.sequence for c in other if c.role == "null"} != {c.sequence for c in first if c.role == "null"}
    per_protein = Counter(c.source for c in first)
    assert set(per_protein.values()) == {4 + 1 + len(SMALL.identities)}
    split = cal.split_sources([p for p, _ in proteins], SMALL)
    assert split == cal.split_sources([p for p, _ in proteins], SMALL)
    assert Counter(split.values()) == {"calibration": 5, "held_out": 5}


def test_statistics_are_exact_clopper_pearson():
    assert cal.upper_bound(0, 299) <= 0.01 < cal.upper_bound(0, 298)
    assert cal.upper_bound(3, 40) == pytest.approx(beta.ppf(0.95, 4, 37))
    r = cal.rate(3, 40)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(beta.ppf(0.025, 3, 38)), pytest.approx(beta.ppf(0.975, 4, 37)))
    assert cal.CalibrationSettings().min_nulls() == 299


def test_flag_matrix_is_the_rule():
    rows = [{"inflation_factor": f, "repeat_fraction": r, "partner_qvalue": q} for f, r, q in
            [(1.0, 0.0, None), (1.2, 0.5, 0.01), (1.04, 0.3, 0.2), (None, 0.2, None), (1.5, 0.01, 0.001),
             (1.05, 0.05, 0.05), (1.3, 0.9, 0.06), (1.3, 0.9, None)]]
    rules = [FlagRule(min_inflation_factor=t) for t in (1.0, 1.05, 1.3)] + [FlagRule(max_qvalue=0.1)]
    flags = cal.flag_matrix(rows, rules)
    expected = [[rule.flags(r["inflation_factor"], r["repeat_fraction"], r["partner_qvalue"]) for r in rows] for rule in rules]
    assert flags.tolist() == expected


def test_the_chosen_threshold_is_the_smallest_that_meets_the_bound():
    # 400 calibration nulls: at a 1% target and 95% confidence only 0 flags pass (1 of 400 bounds
    # the rate at 0.0118), so the threshold must clear the largest null factor, 1.123.
    rng = _rng(5)
    # (partner_qvalue 0: the partner test passes everywhere, so the effect size alone decides here)
    rows = [{"split": "calibration", "role": "null", "inflation_factor": float(f), "repeat_fraction": 0.5, "partner_qvalue": 0.0}
            for f in np.append(rng.uniform(1.0, 1.1, size=399), 1.123)]
    rows += [{"split": "held_out", "role": "null", "inflation_factor": 3.0, "repeat_fraction": 0.5, "partner_qvalue": 0.0}] * 50  # ignored
    grid = cal.threshold_grid()
    flags = cal.flag_matrix(rows, [FlagRule(min_inflation_factor=t) for t in grid])
    chosen = cal.choose_threshold(rows, flags, grid, cal.CalibrationSettings())
    assert chosen["min_inflation_factor"] == 1.125 and chosen["null_flags"] == 0 and chosen["n_null"] == 400
    assert chosen["checked"][-2]["min_inflation_factor"] == 1.12 and chosen["checked"][-2]["null_flags"] == 1


def test_an_unreachable_target_says_how_many_nulls_it_needs():
    rows = [{"split": "calibration", "role": "null"}] * 20
    with pytest.raises(CalibrationError, match="needs at least 299"):
        cal.choose_threshold(rows, np.zeros((3, 20), dtype=bool), [1.0, 1.1, 1.2], cal.CalibrationSettings())


# -- end to end on plmscreen-mini -----------------------------------------------------------


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    import os

    directory = tmp_path_factory.mktemp("user-calibrations")
    before = os.environ.get(calibrations.CALIBRATIONS_ENV)
    os.environ[calibrations.CALIBRATIONS_ENV] = str(directory)
    yield directory
    if before is None:
        os.environ.pop(calibrations.CALIBRATIONS_ENV, None)
    else:
        os.environ[calibrations.CALIBRATIONS_ENV] = before


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, user_dir):
    import torch

    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("calibrate")
    fasta = example_fasta(tmp / "proteins.fasta", 6)
    out = tmp / "out"
    record = cal.run_calibration("plmscreen-mini", fasta, out, SMALL, device="cpu")
    return record, out


def _python_flags(rule: FlagRule, row: dict) -> bool:
    return rule.flags(row["inflation_factor"], row["repeat_fraction"], row["partner_qvalue"])


def test_record_is_written_registered_and_read_back(calibrated, user_dir):
    from plmscreen.screening.run.catalog import Catalog

    record, out = calibrated
    on_disk = calibrations.load_record(out / "calibration.json")
    assert on_disk == {k: v for k, v in json.loads(json.dumps(record)).items() if k != "installed"}
    assert calibrations.load_record(out / "store" / "calibrations" / f"{record['id']}.json") == on_disk
    assert calibrations.load_record(user_dir / f"{record['id']}.json") == on_disk
    assert record["checkpoint_sha256"] == record["model"]["checkpoint_sha256"] and len(record["checkpoint_sha256"]) == 64
    assert set(record["flag_rule"]) == {f.name for f in dataclasses.fields(FlagRule)}
    assert record["seed"] == SMALL.seed and record["settings"]["identities"] == list(SMALL.identities)
    with Catalog.open(None, out / "store") as catalog:
        rows = calibrations.catalog_records(catalog, checkpoint_sha256=record["checkpoint_sha256"])
    assert [r["id"] for r in rows] == [record["id"]]
    assert rows[0]["flag_rule"] == record["flag_rule"] and rows[0]["held_out"] == on_disk["held_out"]
    assert "sequences" not in rows[0]


def test_split_is_disjoint_by_protein(calibrated):
    record, _ = calibrated
    cal_half, held = set(record["split"]["calibration"]), set(record["split"]["held_out"])
    assert cal_half and held and not cal_half & held
    assert cal_half | held == {row["source"] for row in record["sequences"]}
    side = {s: "calibration" for s in cal_half} | {s: "held_out" for s in held}
    for row in record["sequences"]:
        assert row["split"] == side[row["source"]]
    assert len(record["sequences"]) == 4 * (4 + 1 + len(SMALL.identities))


def test_threshold_meets_its_criterion_on_the_calibration_half_and_is_the_smallest(calibrated):
    record, _ = calibrated
    target, confidence = record["criterion"]["max_null_rate"], record["criterion"]["confidence"]
    nulls = [r for r in record["sequences"] if r["split"] == "calibration" and r["role"] == "null"]

    def bound(threshold: float) -> tuple[int, float]:
        rule = dataclasses.replace(FlagRule(**record["flag_rule"]), min_inflation_factor=threshold)
        k = sum(_python_flags(rule, r) for r in nulls)
        return k, (1.0 if k == len(nulls) else float(beta.ppf(confidence, k + 1, len(nulls) - k)))

    chosen = record["flag_rule"]["min_inflation_factor"]
    k, upper = bound(chosen)
    assert (k, len(nulls)) == (record["criterion"]["null_flags"], record["criterion"]["n_null"])
    assert upper <= target and upper == pytest.approx(record["criterion"]["null_upper_bound"])
    grid = cal.threshold_grid()
    below = [t for t in grid if t < chosen]
    assert not below or bound(below[-1])[1] > target  # the next more sensitive threshold fails
    assert all(_python_flags(FlagRule(**record["flag_rule"]), r) == r["flagged_at_rule"] for r in record["sequences"])


def test_held_out_rates_recomputed_from_the_store_equal_the_reported_ones(calibrated):
    from plmscreen.screening.store.connection import open_store

    record, out = calibrated
    with open_store(out / "store") as st:
        stored = {r["seq_id"]: r for r in st.sql(
            f"SELECT seq_id, inflation_factor, repeat_fraction, partner_qvalue FROM sequences WHERE run = '{record['run_id']}'").to_pylist()}
    labels = {r["seq_id"]: r for r in record["sequences"]}
    assert set(stored) == set(labels)
    rule = FlagRule(**record["flag_rule"])
    held = [(labels[s], _python_flags(rule, row)) for s, row in stored.items() if labels[s]["split"] == "held_out"]

    def check(reported: dict, chosen: list[bool]) -> None:
        k, n = sum(chosen), len(chosen)
        assert (reported["k"], reported["n"]) == (k, n) and n > 0
        assert reported["rate"] == pytest.approx(k / n)
        low = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
        high = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
        assert (reported["ci_low"], reported["ci_high"]) == (pytest.approx(low), pytest.approx(high))

    rates = record["held_out"]
    check(rates["null"], [f for lab, f in held if lab["role"] == "null"])
    check(rates["carriers"], [f for lab, f in held if lab["role"] == "carrier"])
    check(rates["carriers_by_construct"]["doubled"], [f for lab, f in held if lab["kind"] == "doubled"])
    for identity in SMALL.identities:
        check(rates["carriers_by_construct"][f"inserted_{round(identity * 100)}"],
              [f for lab, f in held if lab["kind"] == "inserted" and lab["identity"] == identity])
    assert rates["null"]["n"] == 2 * (SMALL.residue_shuffles + SMALL.block_shuffles)


# Later screens only need a run to read the calibration note from: one short protein, triage
# mode, no diagnostics (seconds, not minutes, on 2 shared cores).
SHORT_PROTEIN = "MSKGEELFTGVVPILVELDGDVNGHKFSVSGEGEGDATYGKLTLKFICTTGKLPVPWPTLVTTF"


def _fasta(tmp: Path) -> Path:
    path = tmp / "short.fasta"
    path.write_text(f">gfp_fragment\n{SHORT_PROTEIN}\n")
    return path


def _screen(tmp: Path, store: Path, settings):
    from plmscreen.screening.run.lifecycle import run_screen

    return run_screen(_fasta(tmp), store, dataclasses.replace(settings, diagnostics=False))


def _run_facts(store: Path, summary) -> tuple[dict, dict | None, str]:
    from plmscreen.screening.render.report import build_report
    from plmscreen.screening.run.catalog import Catalog

    run_json = json.loads((store / "runs" / summary.run_id / "run.json").read_text())
    with Catalog.open(None, store) as catalog:
        row = catalog.run_status(summary.run_id)
    page, _ = build_report(store, summary.run_id)
    return run_json, row.calibration, page


def test_a_later_screen_with_that_model_uses_the_calibration(calibrated, tmp_path):
    import html

    from plmscreen.screening.run.settings import ScreenSettings

    record, out = calibrated
    store = tmp_path / "store"  # a new store: found in the user's calibration directory
    summary = _screen(tmp_path, store, ScreenSettings(model="plmscreen-mini", device="cpu", mode="triage"))
    run_json, catalog_note, page = _run_facts(store, summary)
    for note in (run_json["calibration"], catalog_note, summary.calibration):
        assert note["id"] == record["id"] and note["created_utc"] == record["created_utc"]
        assert note["held_out"]["null"] == record["held_out"]["null"]
        assert note["note"].startswith(f"calibrated by {record['id']}")
    assert run_json["parameters"]["flag"] == record["flag_rule"] and run_json["parameters"]["calibration"] == record["id"]
    assert html.escape(summary.calibration["note"]) in page

    # In the calibration's own store it is found in the catalog, even without the user directory.
    import os

    os.environ[calibrations.CALIBRATIONS_ENV] = str(tmp_path / "empty")
    try:
        again = _screen(tmp_path, out / "store", ScreenSettings(model="plmscreen-mini", device="cpu", mode="triage"))
    finally:
        os.environ[calibrations.CALIBRATIONS_ENV] = str(Path(record["installed"]).parent)
    assert again.calibration["id"] == record["id"] and again.calibration["source"] == "catalog"


def test_explicit_thresholds_and_other_checkpoints_are_not_calibrated(calibrated, tmp_path, tiny_checkpoint):
    from plmscreen.screening.run.settings import ScreenSettings

    record, _ = calibrated
    explicit = _screen(tmp_path, tmp_path / "explicit", ScreenSettings(
        model="plmscreen-mini", device="cpu", mode="triage", flag=FlagRule(min_inflation_factor=1.3)))
    assert explicit.calibration == {"id": None, "note": calibrations.EXPLICIT_NOTE}

    store = tmp_path / "other"
    other = _screen(tmp_path, store, ScreenSettings(model=str(tiny_checkpoint), device="cpu"))
    run_json, catalog_note, page = _run_facts(store, other)
    for note in (run_json["calibration"], catalog_note, other.calibration):
        assert note == {"id": None, "note": "uncalibrated model: flag thresholds are the defaults tuned for plmscreen-mini"}
    assert "uncalibrated model: flag thresholds are the defaults tuned for plmscreen-mini" in page
    assert run_json["parameters"]["flag"] == dataclasses.asdict(FlagRule())

    # Naming this calibration for another checkpoint is refused before anything is scored.
    with pytest.raises(CalibrationError, match="was made for checkpoint"):
        _screen(tmp_path, tmp_path / "refused", ScreenSettings(
            model=str(tiny_checkpoint), device="cpu", calibration=str(Path(record["installed"]))))


def test_the_bundled_control_without_a_record_names_what_its_defaults_rest_on(tmp_path, monkeypatch):
    """The default thresholds were chosen on plmscreen-mini itself, so its screens say so (with the
    figures of bench/results/calibration_plmscreen-mini.json), not "uncalibrated"."""
    from plmscreen.screening.model.checkpoints import BUNDLED_MODELS, file_sha256
    from plmscreen.screening.run.settings import ScreenSettings

    defaults = calibrations.bundled_defaults()
    assert defaults["checkpoint_sha256"] == file_sha256(BUNDLED_MODELS["plmscreen-mini"])
    bench = json.loads((Path(__file__).resolve().parents[1] / defaults["record"].replace(".md", ".json")).read_text())
    assert bench["checkpoint_sha256"] == defaults["checkpoint_sha256"]
    chosen, sizes = bench["chosen"], bench["set_sizes"]
    assert (chosen["min_inflation_factor"], chosen["min_repeat_fraction"]) == (
        FlagRule().min_inflation_factor, FlagRule().min_repeat_fraction)
    free = defaults["repeat_free"]
    assert free["n"] == bench["n_null"] == sizes["ecoli_shuffled"] + sizes["decoys"]
    assert free["k"] == round(chosen["ecoli_shuffled"] * sizes["ecoli_shuffled"] + chosen["decoys"] * sizes["decoys"])
    assert free["upper_95_one_sided"] == pytest.approx(beta.ppf(0.95, free["k"] + 1, free["n"] - free["k"]), abs=1e-4)
    assert defaults["doubled"]["k"] / defaults["doubled"]["n"] == chosen["doubled"]

    monkeypatch.setenv(calibrations.CALIBRATIONS_ENV, str(tmp_path / "no-records"))
    store = tmp_path / "store"
    summary = _screen(tmp_path, store, ScreenSettings(model="plmscreen-mini", device="cpu", mode="triage"))
    note = calibrations.bundled_defaults_note(defaults)
    assert note.startswith("default thresholds, chosen for this checkpoint (bundled plmscreen-mini v5): 0/320 ")
    run_json, catalog_note, page = _run_facts(store, summary)
    for recorded in (run_json["calibration"], catalog_note, summary.calibration):
        assert recorded == {"id": None, "source": "bundled defaults", "note": note}
    assert note in page


def test_cli_summary_names_the_calibration_and_explicit_set_skips_it(calibrated, tmp_path):
    from plmscreen.cli.main import app
    from typer.testing import CliRunner

    record, _ = calibrated
    runner = CliRunner()
    common = ["screen", str(_fasta(tmp_path)), "--model", "plmscreen-mini", "--device", "cpu", "--mode", "triage",
              "--no-diagnostics", "--in-process", "--no-progress"]
    result = runner.invoke(app, [*common, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert f"Flag rule: calibrated by {record['id']}" in result.output
    result = runner.invoke(app, [*common, "--out", str(tmp_path / "b"), "--set", "flag.min_inflation_factor=1.05"])
    assert result.exit_code == 0, result.output
    assert f"Flag rule: {calibrations.EXPLICIT_NOTE}" not in result.output  # explicit defaults: said plainly
    # plmscreen-mini at the defaults, its calibration refused: the defaults' own measurement is named
    assert f"Flag rule: {calibrations.bundled_defaults_note(calibrations.bundled_defaults())}" in result.output
    result = runner.invoke(app, [*common, "--out", str(tmp_path / "c"), "--calibration", record["id"],
                                 "--min-inflation-factor", "1.2"])
    assert result.exit_code == 2 and "exclude each other" in result.output


def test_a_flow_planning_the_run_again_applies_the_same_calibration(calibrated, tmp_path):
    """The CLI plans the run, then the flow plans it again from plan.settings.to_dict() (a JSON
    object, as deployments pass it): the same calibration, rule and run."""
    from plmscreen.screening.run.plan import prepare_run
    from plmscreen.screening.run.settings import ScreenSettings

    record, _ = calibrated
    first = prepare_run(_fasta(tmp_path), tmp_path / "store", ScreenSettings(model="plmscreen-mini", device="cpu"))
    assert first.settings.calibration == record["id"] and first.metadata["calibration"]["id"] == record["id"]
    again = prepare_run(_fasta(tmp_path), tmp_path / "store",
                        ScreenSettings.from_dict(json.loads(json.dumps(first.settings.to_dict()))))
    assert again.run_id == first.run_id and again.metadata["calibration"] == first.metadata["calibration"]
    assert dataclasses.asdict(again.settings.flag) == record["flag_rule"]
