-- The same sequences (same seq_id and sequence) in two runs, e.g. two models: score deltas
-- (b - a) and flag changes (gained: flagged in b only; lost: flagged in a only).
-- param: run_a VARCHAR -- first run id
-- param: run_b VARCHAR -- second run id
SELECT a.seq_id, a.length,
       a.model AS model_a, b.model AS model_b,
       a.pppl AS pppl_a, b.pppl AS pppl_b, b.pppl - a.pppl AS delta_pppl,
       a.inflation_factor AS inflation_factor_a, b.inflation_factor AS inflation_factor_b,
       b.inflation_factor - a.inflation_factor AS delta_inflation_factor,
       a.repeat_fraction AS repeat_fraction_a, b.repeat_fraction AS repeat_fraction_b,
       a.flagged AS flagged_a, b.flagged AS flagged_b,
       CASE WHEN b.flagged AND NOT a.flagged THEN 'gained'
            WHEN a.flagged AND NOT b.flagged THEN 'lost'
            WHEN a.flagged THEN 'both'
            ELSE 'neither' END AS flag_change
FROM sequences AS a
JOIN sequences AS b ON b.seq_id = a.seq_id AND b.sequence_sha256 = a.sequence_sha256
WHERE a.run = $run_a AND b.run = $run_b
ORDER BY abs(b.inflation_factor - a.inflation_factor) DESC, a.seq_id;
