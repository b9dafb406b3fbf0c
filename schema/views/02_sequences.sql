-- sequences: one row per scored sequence of every run (schema.arrow.SEQUENCES_SCHEMA) plus the
-- hive partition columns run and model, and from the run's verdicts (01_verdicts.sql) the
-- sequence's q-value (partner_qvalue) and its flag (flagged: the whole FlagRule; null until the
-- run has finished, since the q-value is taken across the run).
CREATE OR REPLACE VIEW sequences AS
SELECT s.run, s.model, s.* EXCLUDE (run, model), v.partner_qvalue, v.flagged
FROM read_parquet('@STORE@/sequences/*/*/part-*.parquet',
                  hive_partitioning = true,
                  hive_types = {'model': VARCHAR, 'run': VARCHAR},
                  union_by_name = true) AS s
LEFT JOIN verdicts AS v ON v.run = s.run AND v.seq_id = s.seq_id;
