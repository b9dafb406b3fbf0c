-- Re-flag a run under other flag-rule thresholds without rescoring (the rule is FlagRule's one
-- definition). With no thresholds given it uses the run's own and reproduces its `flagged` column.
-- param: run VARCHAR -- the run to re-flag
-- param: min_inflation_factor DOUBLE = NULL -- default: the run's own threshold
-- param: min_repeat_fraction DOUBLE = NULL -- default: the run's own threshold
-- param: max_qvalue DOUBLE = NULL -- default: the run's own bound
-- The q-values are the run's own: Benjamini-Hochberg over every sequence the run tested, a
-- family fixed when the run ended that does not depend on the effect-size or q thresholds. A
-- min_repeat_fraction other than the run's changes which sequences a rescreen would test; here
-- the run's q-values are kept, and sequences the run did not test have none (not flagged).
WITH rule AS (
    SELECT coalesce($min_inflation_factor, (parameters->'flag'->>'min_inflation_factor')::DOUBLE) AS min_inflation_factor,
           coalesce($min_repeat_fraction, (parameters->'flag'->>'min_repeat_fraction')::DOUBLE) AS min_repeat_fraction,
           coalesce($max_qvalue, (parameters->'flag'->>'max_qvalue')::DOUBLE) AS max_qvalue
    FROM runs WHERE run = $run
)
SELECT s.run, s.seq_id, s.length, s.inflation_factor, s.repeat_fraction, s.partner_pvalue, s.partner_qvalue, s.pppl,
       @FLAG_RULE(s, rule)@ AS flagged, s.flagged AS flagged_in_run,
       rule.min_inflation_factor, rule.min_repeat_fraction, rule.max_qvalue
FROM sequences AS s CROSS JOIN rule
WHERE s.run = $run
ORDER BY flagged DESC, s.inflation_factor DESC NULLS LAST, s.seq_id;
