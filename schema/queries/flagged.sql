-- Flagged sequences ranked by inflation factor (most inflated first), with their repeat regions.
-- param: run VARCHAR = NULL -- only this run (default: every run in the store)
SELECT run, model, seq_id, length, pppl, pppl_ablated, inflation_factor, repeat_fraction,
       mean_net_inflation, mean_copy_following, n_repeat_regions, regions_text AS regions
FROM flagged
WHERE $run IS NULL OR run = $run
ORDER BY inflation_factor DESC, run, seq_id;
