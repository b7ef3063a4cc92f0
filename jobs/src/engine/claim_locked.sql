-- claim_locked: lock up to $2 runnable jobs of queue $1 for the rest of the caller's
-- transaction, which runs them and writes their outcomes (finish_locked) before it commits.
-- $1 queue, $2 limit, $3 run_at and $4 id to start after (the process's claim cursor; NULL:
-- from the start of the queue).
-- The rows stay `available`: the lock is the claim, so no running row version, no lease and
-- no index entries are written for it, and a process that dies mid-batch loses nothing (its
-- transaction rolls back and the rows are free at once). Other claimers skip locked rows.
-- Relies on jobs_claim_idx (queue, run_at, id) WHERE state = 'available', which the row
-- comparison enters at the cursor.
-- A paused queue claims nothing.
SELECT id, run_at, kind, payload::text AS "payload!", attempt, claim_token, max_attempts, backoff_base_ms, backoff_max_ms
FROM jobs
WHERE state = 'available'
  AND queue = $1
  AND run_at <= now()
  AND (run_at, id) > (coalesce($3::timestamptz, '-infinity'), coalesce($4::bigint, 0))
  AND NOT EXISTS (SELECT 1 FROM job_queues q WHERE q.name = $1 AND q.paused_at IS NOT NULL)
ORDER BY run_at, id
LIMIT $2
FOR NO KEY UPDATE SKIP LOCKED
