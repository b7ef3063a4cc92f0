-- extend_leases: push the leases of jobs this process holds to now + $4 ms.
-- $1 id[], $2 attempt[], $3 owner, $4 lease ms. Relies on the primary key.
-- SKIP LOCKED: this statement never waits, so it can never be part of a deadlock with
-- complete_many, and rows a completion holds right now are skipped (that completion ends
-- the lease anyway).
WITH held AS (
    SELECT j.id
    FROM jobs j
    JOIN unnest($1::bigint[], $2::int[]) AS h(id, attempt) ON j.id = h.id
    WHERE j.attempt = h.attempt AND j.lease_owner = $3 AND j.state = 'running'
    ORDER BY j.id
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE jobs j
SET lease_expires_at = now() + $4::bigint * interval '1 millisecond'
FROM held
WHERE j.id = held.id
