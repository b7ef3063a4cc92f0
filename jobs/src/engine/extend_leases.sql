-- extend_leases: push the leases of the runs this process holds to now + $3 ms.
-- $1 id[], $2 claim token[] (as claimed), $3 lease ms. Relies on the primary key.
-- A lease that has run out but was not rescued yet is renewed too: its run is still the
-- job's current claim.
-- SKIP LOCKED: this statement never waits, so it can never be part of a deadlock with
-- complete_many, and rows a completion holds right now are skipped (that completion ends
-- the lease anyway).
WITH held AS (
    SELECT j.id
    FROM jobs j
    JOIN unnest($1::bigint[], $2::int[]) AS h(id, claim_token) ON j.id = h.id
    WHERE j.claim_token = h.claim_token AND j.state = 'running'
    ORDER BY j.id
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE jobs j
SET lease_expires_at = now() + $3::bigint * interval '1 millisecond'
FROM held
WHERE j.id = held.id
