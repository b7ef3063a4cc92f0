-- complete_many: apply a batch of run outcomes, fenced by each run's claim token.
-- $1 id[], $2 claim token[] (as claimed), $3 new state[] (job_state as text), $4 delay ms[]
-- (NULL keeps run_at), $5 error[] (NULL = none), $6 refund[] (true gives the attempt back:
-- snooze, release).
-- Only rows still running under the same claim change: a late outcome of a run whose lease
-- was taken over, or that was cancelled and claimed again (even by the same process at the
-- same attempt number), changes nothing. Rows are found by id (the primary key).
-- Returns the ids that changed, their queue, and whether the job is runnable again (retry,
-- snooze, release) so the caller can wake its idle workers.
--
-- No separate `SELECT … FOR UPDATE` step: it wrote a lock record per row (a fifth of this
-- statement's WAL) to order locks against writers that never wait. Every other multi-row
-- writer of running jobs (claim, lease renewal, rescue) uses SKIP LOCKED and so never waits, a
-- process writes its outcome batches one at a time, and two processes' batches only meet on a
-- job whose lease was taken over, which the fence then skips (the WHERE is re-checked on the
-- row version a concurrent commit left). A
-- deadlock would need two such takeovers crossing at once; Postgres breaks it and the caller
-- writes the batch again.
UPDATE jobs j
SET state = o.state::job_state,
    attempt = CASE WHEN o.refund THEN j.attempt - 1 ELSE j.attempt END,
    run_at = CASE WHEN o.delay_ms IS NULL THEN j.run_at
                  ELSE now() + o.delay_ms * interval '1 millisecond' END,
    lease_owner = NULL,
    lease_expires_at = NULL,
    last_error = coalesce(o.error, j.last_error),
    errors = CASE WHEN o.error IS NULL THEN j.errors
                  ELSE j.errors || jsonb_build_array(jsonb_build_object(
                           'attempt', j.attempt, 'at', now(), 'error', o.error)) END,
    finished_at = CASE WHEN o.state IN ('completed', 'failed', 'cancelled') THEN now() END,
    updated_at = now()
FROM unnest($1::bigint[], $2::int[], $3::text[], $4::bigint[], $5::text[], $6::bool[])
     AS o(id, claim_token, state, delay_ms, error, refund)
WHERE j.id = o.id
  AND j.state = 'running'
  AND j.claim_token = o.claim_token
RETURNING j.id, j.queue, j.state = 'available' AS "runnable_again!"
