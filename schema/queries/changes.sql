-- What changed between two runs of one screen (last week's proteome release and this week's):
-- sequences added, removed, newly flagged, no longer flagged, with other residues under the same
-- id, or whose pppl or inflation factor moved by more than a relative tolerance. Unchanged
-- sequences are left out. `plmscreen changes` picks the previous run by itself.
-- param: run VARCHAR -- the newer run
-- param: since VARCHAR -- the older run it is compared with
-- param: tolerance DOUBLE = 0.01 -- relative change of pppl or inflation factor that counts as changed
WITH new AS (SELECT * FROM sequences WHERE run = $run),
old AS (SELECT * FROM sequences WHERE run = $since),
paired AS (
    SELECT coalesce(n.seq_id, o.seq_id) AS seq_id,
           CASE WHEN o.seq_id IS NULL THEN 'added'
                WHEN n.seq_id IS NULL THEN 'removed'
                WHEN n.flagged AND NOT o.flagged THEN 'newly_flagged'
                WHEN o.flagged AND NOT n.flagged THEN 'no_longer_flagged'
                WHEN n.sequence_sha256 <> o.sequence_sha256 THEN 'sequence_changed'
                WHEN coalesce(abs(n.inflation_factor - o.inflation_factor) > $tolerance * o.inflation_factor, false)
                     OR coalesce(abs(n.pppl - o.pppl) > $tolerance * o.pppl, false) THEN 'scores_changed'
           END AS change,
           n.flagged, o.flagged AS flagged_before,
           n.sequence_sha256 IS DISTINCT FROM o.sequence_sha256 AS sequence_differs,
           n.length, o.length AS length_before,
           n.pppl, o.pppl AS pppl_before,
           n.inflation_factor, o.inflation_factor AS inflation_factor_before
    FROM new AS n FULL OUTER JOIN old AS o ON n.seq_id = o.seq_id
)
SELECT * FROM paired
WHERE change IS NOT NULL
ORDER BY CASE change WHEN 'newly_flagged' THEN 0 WHEN 'no_longer_flagged' THEN 1 WHEN 'added' THEN 2
                     WHEN 'removed' THEN 3 WHEN 'sequence_changed' THEN 4 ELSE 5 END, seq_id;
