-- rescue_expired: jobs whose lease ran out (their worker died or hung) become runnable again
-- at once, or fail for good when that was their last attempt. The attempt that was running
-- stays spent, and the reason is kept as its error. A rescued job runs from now: in front of
-- every process's claim window (docs/claim-window.md), so no claim has to look back for it.
-- $1 now (NULL = now()), $2 limit, $3 grace after a server start (ms): for that long after
-- the server (re)started no lease counts as expired, since no worker could renew one while
-- it was down (a live worker's next renewal restores its leases); $4 lookback (ms): only
-- leases that expired at most this long before now (NULL: all, from the oldest).
-- Relies on jobs_running_idx (lease_expires_at) WHERE running: the lookback is the range's
-- lower bound, so a windowed pass does not cross the entries runs left behind before it
-- (docs/leases-and-rescue.md).
-- SKIP LOCKED: every worker runs this, and a completion holding the row wins.
WITH expired AS (
    SELECT id
    FROM jobs
    WHERE state = 'running' AND lease_expires_at < coalesce($1, now())
      AND lease_expires_at >= CASE WHEN $4::bigint IS NULL THEN '-infinity'::timestamptz
                                   ELSE coalesce($1, now()) - $4::bigint * interval '1 millisecond' END
      AND coalesce($1, now()) > pg_postmaster_start_time() + $3::bigint * interval '1 millisecond'
    ORDER BY lease_expires_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs j
SET state = CASE WHEN j.attempt >= j.max_attempts THEN 'failed' ELSE 'available' END::job_state,
    run_at = coalesce($1, now()),
    lease_owner = NULL,
    lease_expires_at = NULL,
    last_error = 'lease expired: the worker running attempt ' || j.attempt || ' stopped renewing it',
    errors = j.errors || jsonb_build_array(jsonb_build_object(
        'attempt', j.attempt, 'at', now(),
        'error', 'lease expired: the worker running attempt ' || j.attempt || ' stopped renewing it')),
    finished_at = CASE WHEN j.attempt >= j.max_attempts THEN now() END,
    updated_at = now()
FROM expired
WHERE j.id = expired.id
RETURNING j.id, j.queue, j.state::text AS "state!"
