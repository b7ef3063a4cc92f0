-- extend_leases: push the leases of the runs this process holds to now + $3 ms, and name the
-- runs that are no longer their job's claim.
-- $1 id[], $2 claim token[] (as claimed), $3 lease ms. Relies on the primary key.
-- A lease that has run out but was not rescued yet is renewed too: its run is still the
-- job's current claim.
-- SKIP LOCKED: this statement never waits, so it can never be part of a deadlock with
-- complete_many, and rows a completion holds right now are skipped (that completion ends
-- the lease anyway).
-- Returns one row per claim: whether its lease was renewed, and whether it is lost (its job
-- is gone, or no longer running under that token: cancelled by an operator, finished, or
-- rescued and claimed again), as of this statement's snapshot. A row skipped for a lock is
-- neither renewed nor lost.
WITH claims AS (
    SELECT * FROM unnest($1::bigint[], $2::int[]) AS h(id, claim_token)
),
held AS (
    SELECT j.id
    FROM jobs j
    JOIN claims h ON j.id = h.id
    WHERE j.claim_token = h.claim_token AND j.state = 'running'
    ORDER BY j.id
    FOR UPDATE OF j SKIP LOCKED
),
renewed AS (
    UPDATE jobs j
    SET lease_expires_at = now() + $3::bigint * interval '1 millisecond'
    FROM held
    WHERE j.id = held.id
    RETURNING j.id
)
SELECT h.id AS "id!", h.claim_token AS "claim_token!",
       r.id IS NOT NULL AS "renewed!",
       (j.id IS NULL OR j.state <> 'running' OR j.claim_token <> h.claim_token) AS "lost!"
FROM claims h
LEFT JOIN renewed r ON r.id = h.id
LEFT JOIN jobs j ON j.id = h.id
