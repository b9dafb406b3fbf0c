-- runs: one row per finished screen, from STORE/runs/<run>/run.json. parameters and model_info
-- are JSON (e.g. parameters->'flag'->>'min_inflation_factor', model_info->>'num_parameters').
-- n_reused / n_duplicates: of the n_scored sequences, how many were copied from earlier runs or
-- from identical sequences of the same input (null for runs made before reuse existed).
-- model_family (the backend: fair-esm, hf-esm, hf-esmc, carp), model_id (--model as given) and
-- weight_sha256 (weight file name -> sha256) are null for runs made before model families.
CREATE OR REPLACE VIEW runs AS
SELECT run_id AS run, model_name AS model, * EXCLUDE (run_id, model_name, model), model AS model_info
FROM read_json('@STORE@/runs/*/run.json',
               format = 'auto',
               columns = {
                   run_id: 'VARCHAR', model_name: 'VARCHAR', checkpoint_sha256: 'VARCHAR',
                   plmscreen_version: 'VARCHAR', schema_version: 'INTEGER', input_path: 'VARCHAR',
                   input_sha256: 'VARCHAR', created_utc: 'TIMESTAMPTZ', n_scored: 'BIGINT',
                   n_rejected: 'BIGINT', n_shards: 'BIGINT', failed_shards: 'JSON', checkpoint_path: 'VARCHAR',
                   parameters: 'JSON', model: 'JSON', deployment: 'VARCHAR',
                   n_reused: 'BIGINT', n_duplicates: 'BIGINT',
                   model_family: 'VARCHAR', model_id: 'VARCHAR', weight_sha256: 'JSON'
               });
