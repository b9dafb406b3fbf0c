-- One row per run: model, input, when, and counts of sequences, residues, repeats and flags.
-- param: run VARCHAR = NULL -- only this run (default: every run)
WITH counts AS (
    SELECT run, model, count(*) AS n_sequences, sum(length)::BIGINT AS n_residues,
           count(*) FILTER (WHERE repeat_fraction > 0) AS n_with_repeats,
           count(*) FILTER (WHERE flagged) AS n_flagged,
           count(*) FILTER (WHERE partner_pvalue IS NOT NULL) AS n_tested,
           max(inflation_factor) AS max_inflation_factor
    FROM sequences GROUP BY run, model
)
SELECT c.run, c.model, r.checkpoint_sha256, r.plmscreen_version, r.input_path, r.input_sha256,
       r.created_utc, c.n_sequences, c.n_residues, c.n_with_repeats, c.n_tested, c.n_flagged,
       c.max_inflation_factor, r.n_rejected,
       (r.parameters->'flag'->>'min_inflation_factor')::DOUBLE AS min_inflation_factor,
       (r.parameters->'flag'->>'min_repeat_fraction')::DOUBLE AS min_repeat_fraction,
       (r.parameters->'flag'->>'max_qvalue')::DOUBLE AS max_qvalue,
       (r.parameters->'flag'->>'null_draws')::INTEGER AS null_draws,
       r.model_family
FROM counts AS c
LEFT JOIN runs AS r ON r.run = c.run
WHERE $run IS NULL OR c.run = $run
ORDER BY r.created_utc DESC NULLS LAST, c.run;
