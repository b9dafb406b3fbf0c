"""plmscreen's data contract: the Arrow/Parquet schemas every writer and reader shares."""

from plmscreen.schema.arrow import (  # noqa: F401
    METADATA_KEY,
    REPEATS_SCHEMA,
    RESIDUES_SCHEMA,
    SCHEMA_VERSION,
    SEQUENCES_SCHEMA,
)
