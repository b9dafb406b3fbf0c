"""Arrow schemas of the Parquet outputs. Column names are a contract: later stages and users rely on them.

Every file carries ``METADATA_KEY`` in its key-value metadata: a JSON object with the schema
version, plmscreen version, model name, checkpoint sha256 and the screen's parameters.
"""

import pyarrow as pa

SCHEMA_VERSION = 1
METADATA_KEY = b"plmscreen"

RESIDUES_SCHEMA = pa.schema(
    [
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("pos", pa.int32(), nullable=False),  # 1-based
        pa.field("aa", pa.string(), nullable=False),
        pa.field("logp_masked", pa.float64(), nullable=False),
        pa.field("logp_unmasked", pa.float64(), nullable=False),
        pa.field("partner_pos", pa.list_(pa.int32()), nullable=False),  # 1-based, empty if none
        pa.field("logp_ablated", pa.float64()),  # null without partners
        pa.field("windowed", pa.bool_(), nullable=False),  # scored in a window of a longer sequence
        pa.field("inflation", pa.float64()),  # logp_masked - logp_ablated (nats), null without partners
        pa.field("partner_region", pa.list_(pa.int32()), nullable=False),  # region id of each partner
        pa.field("partner_identity", pa.list_(pa.float32()), nullable=False),  # local identity of each pair
    ]
)

SEQUENCES_SCHEMA = pa.schema(
    [
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("length", pa.int32(), nullable=False),
        pa.field("pll", pa.float64(), nullable=False),  # sum of logp_masked
        pa.field("pppl", pa.float64(), nullable=False),  # exp(-mean logp_masked)
        pa.field("pppl_ablated", pa.float64(), nullable=False),  # ablated where partners exist
        pa.field("repeat_fraction", pa.float64(), nullable=False),  # residues with >= 1 partner
        pa.field("inflation_factor", pa.float64(), nullable=False),  # pppl_ablated / pppl
        pa.field("flagged", pa.bool_(), nullable=False),
        pa.field("mean_inflation", pa.float64()),  # over residues with partners; null if none
        pa.field("max_inflation", pa.float64()),
        pa.field("pppl_unmasked", pa.float64(), nullable=False),  # exp(-mean logp_unmasked)
        pa.field("n_repeat_regions", pa.int32(), nullable=False),
        pa.field("windowed", pa.bool_(), nullable=False),
        pa.field("sequence_sha256", pa.string(), nullable=False),
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
