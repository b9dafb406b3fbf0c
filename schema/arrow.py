"""Arrow schemas of the Parquet outputs. Column names are a contract: later stages and users rely on them.

Every file carries ``METADATA_KEY`` in its key-value metadata: a JSON object with the schema
version, plmscreen version, model name, checkpoint sha256 and the screen's parameters.
"""

import pyarrow as pa

# 2: triage mode (logp_masked and pll/pppl may be null), per-residue diagnostics for flagged
#    sequences (logp_random_comask, net_inflation, copy_following, planted_residue), sequences.mode.
# 3: sequences.reused_from_run (incremental rescreens: rows copied from the run that scored them).
# 4: the partner test. residues.logp_random_comask / net_inflation for every partnered residue of a
#    tested sequence (FlagRule.needs_test), not only of flagged ones; sequences.partner_pvalue; the
#    shard column flagged became effect_flagged (a shard cannot apply the run-wide q-value);
#    STORE/runs/<run>/verdicts.parquet (VERDICTS_SCHEMA) holds each sequence's q-value and flag.
SCHEMA_VERSION = 4
METADATA_KEY = b"plmscreen"

RESIDUES_SCHEMA = pa.schema(
    [
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("pos", pa.int32(), nullable=False),  # 1-based
        pa.field("aa", pa.string(), nullable=False),
        pa.field("logp_masked", pa.float64()),  # null where triage mode did not mask the residue
        pa.field("logp_unmasked", pa.float64(), nullable=False),
        pa.field("partner_pos", pa.list_(pa.int32()), nullable=False),  # 1-based, empty if none
        pa.field("logp_ablated", pa.float64()),  # null without partners
        pa.field("windowed", pa.bool_(), nullable=False),  # scored in a window of a longer sequence
        pa.field("inflation", pa.float64()),  # logp_masked - logp_ablated (nats), null without partners
        pa.field("partner_region", pa.list_(pa.int32()), nullable=False),  # region id of each partner
        pa.field("partner_identity", pa.list_(pa.float32()), nullable=False),  # local identity of each pair
        # The partner test (screening.score.diagnostics.null_comask): partnered residues of tested
        # sequences (FlagRule.needs_test); else null. Mean over the rule's null_draws draws.
        pa.field("logp_random_comask", pa.float64()),  # i and |partners| random non-partners masked
        pa.field("net_inflation", pa.float64()),  # logp_random_comask - logp_ablated (nats)
        # Copy-following diagnostics: partnered residues of effect-flagged sequences, with diagnostics on.
        pa.field("copy_following", pa.float64()),  # P(b at i | partners set to b) - P(b at i | ablated)
        pa.field("planted_residue", pa.string()),  # b, the residue planted in the partner copy
    ]
)

SEQUENCES_SCHEMA = pa.schema(
    [
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("length", pa.int32(), nullable=False),
        pa.field("pll", pa.float64()),  # sum of logp_masked; null in triage mode
        pa.field("pppl", pa.float64()),  # exp(-mean logp_masked); null in triage mode
        pa.field("pppl_ablated", pa.float64()),  # ablated where partners exist; null in triage mode
        pa.field("repeat_fraction", pa.float64(), nullable=False),  # residues with >= 1 partner
        pa.field("inflation_factor", pa.float64()),  # pppl_ablated / pppl = exp(sum inflation / length)
        # The rule's effect-size conditions (FlagRule.EFFECT); `flagged` also needs the run-wide
        # q-value and lives in VERDICTS_SCHEMA (the sequences view joins it).
        pa.field("effect_flagged", pa.bool_(), nullable=False),
        # One-sided Wilcoxon signed-rank p-value: partners matter more than random co-masks
        # (FlagRule, metrics.partner_pvalue); null for sequences not tested.
        pa.field("partner_pvalue", pa.float64()),
        pa.field("mean_inflation", pa.float64()),  # over residues with partners; null if none
        pa.field("max_inflation", pa.float64()),
        pa.field("pppl_unmasked", pa.float64(), nullable=False),  # exp(-mean logp_unmasked)
        pa.field("n_repeat_regions", pa.int32(), nullable=False),
        pa.field("windowed", pa.bool_(), nullable=False),
        pa.field("sequence_sha256", pa.string(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),  # "exact", or "triage" (masked scoring skipped)
        pa.field("mean_net_inflation", pa.float64()),  # mean net_inflation of tested sequences; else null
        pa.field("mean_copy_following", pa.float64()),
        # The run whose scores this sequence's rows (residues, repeats, this row) copy: an earlier
        # run of the store, or this run for a repeated copy of a sequence it scored under another
        # id; null where this run scored the sequence for this record (screening/run/reuse.py).
        pa.field("reused_from_run", pa.string()),
    ]
)

# One row per aligned region pair from the repeat detector (1-based, inclusive).
REPEATS_SCHEMA = pa.schema(
    [
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("region_id", pa.int32(), nullable=False),
        pa.field("start", pa.int32(), nullable=False),
        pa.field("end", pa.int32(), nullable=False),
        pa.field("partner_start", pa.int32(), nullable=False),
        pa.field("partner_end", pa.int32(), nullable=False),
        pa.field("identity", pa.float64(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("pvalue", pa.float64()),
    ]
)

# STORE/runs/<run>/verdicts.parquet, written when the run ends: the Benjamini-Hochberg q-value of
# each tested sequence across the run and the final flag (FlagRule.flags), one row per sequence.
VERDICTS_SCHEMA = pa.schema(
    [
        pa.field("run", pa.string(), nullable=False),
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("partner_qvalue", pa.float64()),  # null for sequences not tested
        pa.field("flagged", pa.bool_(), nullable=False),
    ]
)
