-- repeats: the repeat detector's aligned region pairs (schema.arrow.REPEATS_SCHEMA; 1-based,
-- inclusive) plus run and model.
CREATE OR REPLACE VIEW repeats AS
SELECT run, model, * EXCLUDE (run, model)
FROM read_parquet('@STORE@/repeats/*/*/part-*.parquet',
                  hive_partitioning = true,
                  hive_types = {'model': VARCHAR, 'run': VARCHAR},
                  union_by_name = true);
