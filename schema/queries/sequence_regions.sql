-- The repeat region pairs of one sequence of one run, with mean inflation over each copy.
-- param: run VARCHAR -- run id
-- param: seq_id VARCHAR -- sequence id
SELECT region_id, "start", "end", partner_start, partner_end, identity, score, pvalue,
       mean_inflation, partner_mean_inflation
FROM repeat_regions
WHERE run = $run AND seq_id = $seq_id
ORDER BY region_id;
