-- Re-flag a run under other flag-rule thresholds without rescoring (the rule is FlagRule's one
-- definition). With no thresholds given it uses the run's own and reproduces its `flagged` column.
-- param: run VARCHAR -- the run to re-flag
-- param: min_inflation_factor DOUBLE = NULL -- default: the run's own threshold
-- param: min_repeat_fraction DOUBLE = NULL -- default: the run's own threshold
WITH rule AS (
    SELECT coalesce($min_inflation_factor, (parameters->'flag'->>'min_inflation_factor')::DOUBLE) AS min_inflation_factor,
           coalesce($min_repeat_fraction, (parameters->'flag'->>'min_repeat_fraction')::DOUBLE) AS min_repeat_fraction
    FROM runs WHERE run = $run
)
SELECT s.run, s.seq_id, s.length, s.inflation_factor, s.repeat_fraction, s.pppl,
       @FLAG_RULE(s, rule)@ AS flagged, s.flagged AS flagged_in_run,
       rule.min_inflation_factor, rule.min_repeat_fraction
FROM sequences AS s CROSS JOIN rule
WHERE s.run = $run
ORDER BY flagged DESC, s.inflation_factor DESC NULLS LAST, s.seq_id;
