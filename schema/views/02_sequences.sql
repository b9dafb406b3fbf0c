-- sequences: one row per scored sequence of every run (schema.arrow.SEQUENCES_SCHEMA) plus the
-- hive partition columns run and model.
CREATE OR REPLACE VIEW sequences AS
SELECT run, model, * EXCLUDE (run, model)
FROM read_parquet('@STORE@/sequences/*/*/part-*.parquet',
                  hive_partitioning = true,
                  hive_types = {'model': VARCHAR, 'run': VARCHAR},
                  union_by_name = true);
