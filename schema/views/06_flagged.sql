-- flagged: the sequences the screen's flag rule flagged, with their repeat regions as a list of
-- structs (regions) and as text (regions_text: "start-end~partner_start-partner_end id=.. infl=..").
-- partner_pvalue / partner_qvalue: the partner test (partners vs random co-masks) and its
-- Benjamini-Hochberg q-value across the run. mean_net_inflation is the mean of logp_random_comask -
-- logp_ablated over partnered residues; mean_copy_following the diagnostics' mean (null without them).
CREATE OR REPLACE VIEW flagged AS
SELECT s.run, s.model, s.seq_id, s.length, s.pppl, s.pppl_ablated, s.inflation_factor,
       s.repeat_fraction, s.mean_inflation, s.max_inflation, s.n_repeat_regions,
       s.partner_pvalue, s.partner_qvalue, s.mean_net_inflation, s.mean_copy_following, s.mode,
       coalesce(list({'region_id': rr.region_id, 'start': rr."start", 'end': rr."end",
                      'partner_start': rr.partner_start, 'partner_end': rr.partner_end,
                      'identity': rr.identity, 'mean_inflation': rr.mean_inflation,
                      'partner_mean_inflation': rr.partner_mean_inflation}
                     ORDER BY rr.region_id) FILTER (WHERE rr.region_id IS NOT NULL), []) AS regions,
       coalesce(string_agg(printf('%d-%d~%d-%d id=%.2f infl=%.3f', rr."start", rr."end", rr.partner_start,
                                  rr.partner_end, rr.identity, coalesce(rr.mean_inflation, 'nan'::DOUBLE)),
                           '; ' ORDER BY rr.region_id), '') AS regions_text
FROM sequences AS s
LEFT JOIN repeat_regions AS rr ON rr.run = s.run AND rr.model = s.model AND rr.seq_id = s.seq_id
WHERE s.flagged
GROUP BY ALL;
