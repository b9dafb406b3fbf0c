-- sequences while the store holds no sequence file yet: no rows, the same columns and types.
CREATE OR REPLACE VIEW sequences AS
SELECT * FROM (
    SELECT NULL::VARCHAR AS run, NULL::VARCHAR AS model,
           NULL::VARCHAR AS seq_id, NULL::INTEGER AS length, NULL::DOUBLE AS pll, NULL::DOUBLE AS pppl,
           NULL::DOUBLE AS pppl_ablated, NULL::DOUBLE AS repeat_fraction, NULL::DOUBLE AS inflation_factor,
           NULL::BOOLEAN AS flagged, NULL::DOUBLE AS mean_inflation, NULL::DOUBLE AS max_inflation,
           NULL::DOUBLE AS pppl_unmasked, NULL::INTEGER AS n_repeat_regions, NULL::BOOLEAN AS windowed,
           NULL::VARCHAR AS sequence_sha256, NULL::VARCHAR AS mode, NULL::DOUBLE AS mean_net_inflation,
           NULL::DOUBLE AS mean_copy_following
) WHERE false;
