-- Score distribution of the sequences without any detected repeat (repeat_fraction = 0), per run:
-- the baseline to calibrate flag thresholds against. Quantiles are continuous (interpolated).
-- param: run VARCHAR = NULL -- only this run (default: every run)
SELECT run, model,
       count(*) AS n_sequences,
       sum(length)::BIGINT AS n_residues,
       avg(pppl) AS pppl_mean,
       quantile_cont(pppl, 0.05) AS pppl_q05,
       quantile_cont(pppl, 0.25) AS pppl_q25,
       quantile_cont(pppl, 0.50) AS pppl_median,
       quantile_cont(pppl, 0.75) AS pppl_q75,
       quantile_cont(pppl, 0.95) AS pppl_q95,
       quantile_cont(pppl_unmasked, 0.50) AS pppl_unmasked_median,
       quantile_cont(pll / length, 0.50) AS mean_logp_median
FROM sequences
WHERE repeat_fraction = 0 AND ($run IS NULL OR run = $run)
GROUP BY run, model
ORDER BY run, model;
