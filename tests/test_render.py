"""One flagged-table definition, three renderings (terminal, Prefect markdown, HTML report)."""

from plmscreen.screening.render.table import FLAGGED_COLUMNS, flagged_html_columns, flagged_markdown, flagged_text

ROWS = [
    {"seq_id": "pdb|2QSK|A", "length": 95, "pppl": 9.3071, "pppl_ablated": 21.91, "inflation_factor": 2.3512,
     "repeat_fraction": 0.9105, "partner_qvalue": 0.000123456, "mean_copy_following": 0.0812},
    {"seq_id": "sp|Q2EEQ3|YAHH_ECOLI_AND_A_LONG_TAIL", "length": 106, "pppl": None, "pppl_ablated": None,
     "inflation_factor": 1.9204, "repeat_fraction": 0.99, "partner_qvalue": 0.031, "mean_copy_following": None},
]


def test_terminal_table_is_fixed_width_with_dashes_for_unknowns():
    lines = flagged_text(ROWS).splitlines()
    assert lines[0].split() == ["seq_id", "length", "pppl", "pppl_abl", "infl_fac", "rep_frac", "q_value", "copy_f"]
    assert len({len(line) for line in lines}) == 1  # fixed width, the rule included
    assert lines[2].split() == ["pdb|2QSK|A", "95", "9.31", "21.91", "2.35", "0.91", "0.00012", "0.08"]
    assert lines[3].split() == ["sp|Q2EEQ3|YAHH_ECOLI_AND_A_L", "106", "-", "-", "1.92", "0.99", "0.031", "-"]
    assert flagged_text([]) == "No sequences flagged."
    assert flagged_text(ROWS * 30, limit=50).splitlines()[-1] == "... and 10 more"


def test_markdown_and_html_use_the_same_columns():
    table = flagged_markdown(ROWS).splitlines()
    assert table[0] == "| " + " | ".join(c.title for c in FLAGGED_COLUMNS) + " |"
    assert table[2] == "| pdb|2QSK|A | 95 | 9.31 | 21.91 | 2.35 | 0.91 | 0.00012 | 0.08 |"
    assert table[3].endswith("| 1.92 | 0.99 | 0.031 | - |")
    html = flagged_html_columns()
    assert html[: len(FLAGGED_COLUMNS)] == [(c.key, c.title) for c in FLAGGED_COLUMNS]
