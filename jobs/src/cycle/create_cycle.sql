-- create_cycle: a new cycle in status Initializing, with its snapshot bound.
-- $1 claim_reference, $2 tier_id, $3 deceased_member_id, $4 amount_minor, $5 currency,
-- $6 duration_days, $7 idempotency_key (NULL = none).
-- member_bound = the largest member id at this moment (members_pkey, one backward index step):
-- members created later are not swept into this cycle.
-- ON CONFLICT DO NOTHING covers the idempotency key (contribution_cycles_idempotency_key_key)
-- and the live claim (contribution_cycles_claim_idx); no row back means one of them exists and
-- the caller looks up which.
WITH new_cycle AS (
    SELECT nextval(pg_get_serial_sequence('contribution_cycles', 'id')) AS id
)
INSERT INTO contribution_cycles (id, code, claim_reference, tier_id, deceased_member_id,
                                 amount_minor, currency, duration_days, deadline, member_bound,
                                 idempotency_key)
SELECT n.id, 'CYC-' || lpad(n.id::text, 6, '0'), $1, $2, $3, $4, $5, $6,
       now() + make_interval(days => $6), (SELECT coalesce(max(id), 0) FROM members), $7
FROM new_cycle n
ON CONFLICT DO NOTHING
RETURNING id AS "id: CycleId", code, status AS "status: CycleStatus"
