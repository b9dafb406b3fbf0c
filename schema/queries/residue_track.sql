-- Per-residue scores of one sequence of one run, in sequence order (the report's tracks).
-- param: run VARCHAR -- run id
-- param: seq_id VARCHAR -- sequence id
SELECT pos, aa, logp_masked, logp_ablated, inflation, partner_pos, net_inflation, copy_following, planted_residue
FROM residues
WHERE run = $run AND seq_id = $seq_id
ORDER BY pos;
