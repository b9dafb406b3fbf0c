-- Residues of flagged sequences whose prediction follows the partner copy most: planting residue b
-- (planted_residue) in the partner copy raised P(b) at the residue by copy_following, and
-- net_inflation is the inflation left after the null co-mask control (nats).
-- param: k INTEGER = 20 -- how many residues
-- param: run VARCHAR = NULL -- only this run (default: every run)
SELECT run, model, seq_id, pos, aa, partner_pos, planted_residue, copy_following, inflation, net_inflation
FROM residues
WHERE copy_following IS NOT NULL
  AND ($run IS NULL OR run = $run)
ORDER BY copy_following DESC, run, seq_id, pos
LIMIT $k;
