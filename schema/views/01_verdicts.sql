-- verdicts: each finished run's flag and Benjamini-Hochberg q-value per sequence
-- (schema.arrow.VERDICTS_SCHEMA, STORE/runs/<run>/verdicts.parquet, written when the run ends:
-- the q-value is taken across the whole run). The sequences view joins it.
CREATE OR REPLACE VIEW verdicts AS
SELECT run, seq_id, partner_qvalue, flagged
FROM read_parquet('@STORE@/runs/*/verdicts.parquet', union_by_name = true);
