-- repeats while the store holds no repeat file yet: no rows, the same columns and types.
CREATE OR REPLACE VIEW repeats AS
SELECT * FROM (
    SELECT NULL::VARCHAR AS run, NULL::VARCHAR AS model,
           NULL::VARCHAR AS seq_id, NULL::INTEGER AS region_id, NULL::INTEGER AS "start", NULL::INTEGER AS "end",
           NULL::INTEGER AS partner_start, NULL::INTEGER AS partner_end, NULL::DOUBLE AS identity,
           NULL::DOUBLE AS score, NULL::DOUBLE AS pvalue
) WHERE false;
