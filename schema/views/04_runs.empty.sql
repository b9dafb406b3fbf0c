-- runs while the store holds no run.json yet: no rows, the same columns and types.
CREATE OR REPLACE VIEW runs AS
SELECT * FROM (
    SELECT NULL::VARCHAR AS run, NULL::VARCHAR AS model, NULL::VARCHAR AS checkpoint_sha256,
           NULL::VARCHAR AS plmscreen_version, NULL::INTEGER AS schema_version, NULL::VARCHAR AS input_path,
           NULL::VARCHAR AS input_sha256, NULL::TIMESTAMPTZ AS created_utc, NULL::BIGINT AS n_scored,
           NULL::BIGINT AS n_rejected, NULL::BIGINT AS n_shards, NULL::JSON AS failed_shards,
           NULL::VARCHAR AS checkpoint_path, NULL::JSON AS parameters, NULL::VARCHAR AS deployment,
           NULL::BIGINT AS n_reused, NULL::BIGINT AS n_duplicates, NULL::VARCHAR AS model_family,
           NULL::VARCHAR AS model_id, NULL::JSON AS weight_sha256, NULL::JSON AS model_info
) WHERE false;
