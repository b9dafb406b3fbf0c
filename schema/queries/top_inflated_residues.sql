-- The k residues whose log-probability drops most when their repeat partners are masked.
-- param: k INTEGER = 20 -- how many residues
-- param: min_inflation DOUBLE = 0.0 -- only residues with inflation (nats) at least this
-- param: run VARCHAR = NULL -- only this run (default: every run)
SELECT run, model, seq_id, pos, aa, logp_masked, logp_ablated, inflation, partner_pos
FROM residues
WHERE inflation IS NOT NULL AND inflation >= $min_inflation
  AND ($run IS NULL OR run = $run)
ORDER BY inflation DESC, run, seq_id, pos
LIMIT $k;
