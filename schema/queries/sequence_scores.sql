-- Every scored sequence of one run with its summary scores (the report's histogram input).
-- param: run VARCHAR -- run id
SELECT seq_id, length, pppl, pppl_ablated, inflation_factor, repeat_fraction, partner_pvalue, partner_qvalue, flagged, n_repeat_regions
FROM sequences
WHERE run = $run
ORDER BY seq_id;
