-- verdicts while no run has finished yet: no rows, the same columns and types.
CREATE OR REPLACE VIEW verdicts AS
SELECT * FROM (
    SELECT NULL::VARCHAR AS run, NULL::VARCHAR AS seq_id, NULL::DOUBLE AS partner_qvalue, NULL::BOOLEAN AS flagged
) WHERE false;
