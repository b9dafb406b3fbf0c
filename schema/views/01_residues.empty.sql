-- residues while the store holds no residue file yet: no rows, the same columns and types.
CREATE OR REPLACE VIEW residues AS
SELECT * FROM (
    SELECT NULL::VARCHAR AS run, NULL::VARCHAR AS model,
           NULL::VARCHAR AS seq_id, NULL::INTEGER AS pos, NULL::VARCHAR AS aa,
           NULL::DOUBLE AS logp_masked, NULL::DOUBLE AS logp_unmasked, NULL::INTEGER[] AS partner_pos,
           NULL::DOUBLE AS logp_ablated, NULL::BOOLEAN AS windowed, NULL::DOUBLE AS inflation,
           NULL::INTEGER[] AS partner_region, NULL::FLOAT[] AS partner_identity,
           NULL::DOUBLE AS logp_random_comask, NULL::DOUBLE AS net_inflation, NULL::DOUBLE AS copy_following,
           NULL::VARCHAR AS planted_residue
) WHERE false;
