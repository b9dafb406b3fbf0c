-- repeat_regions: each aligned region pair (start..end <-> partner_start..partner_end, 1-based,
-- inclusive) with its identity and the mean per-residue inflation (logp_masked - logp_ablated,
-- nats) over the residues of each copy. Residues without partners (null inflation) are ignored.
CREATE OR REPLACE VIEW repeat_regions AS
SELECT p.run, p.model, p.seq_id, p.region_id,
       p."start", p."end", p."end" - p."start" + 1 AS length,
       p.partner_start, p.partner_end, p.partner_end - p.partner_start + 1 AS partner_length,
       p.identity, p.score, p.pvalue,
       avg(r.inflation) FILTER (WHERE r.pos BETWEEN p."start" AND p."end") AS mean_inflation,
       avg(r.inflation) FILTER (WHERE r.pos BETWEEN p.partner_start AND p.partner_end) AS partner_mean_inflation
FROM repeats AS p
LEFT JOIN residues AS r
       ON r.run = p.run AND r.model = p.model AND r.seq_id = p.seq_id
      AND r.pos BETWEEN least(p."start", p.partner_start) AND greatest(p."end", p.partner_end)
GROUP BY ALL;
