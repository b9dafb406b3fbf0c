-- residues: one row per residue of every run (schema.arrow.RESIDUES_SCHEMA) plus the hive
-- partition columns run and model. Only complete files (part-*.parquet) are read: a writer's
-- temporary .part-*.tmp file never matches. @STORE@ is replaced by the store's absolute path.
CREATE OR REPLACE VIEW residues AS
SELECT run, model, * EXCLUDE (run, model)
FROM read_parquet('@STORE@/residues/*/*/part-*.parquet',
                  hive_partitioning = true,
                  hive_types = {'model': VARCHAR, 'run': VARCHAR},
                  union_by_name = true);
