-- claim_batch: move up to $2 runnable jobs of queue $1 to running under owner $3, with a
-- lease of $4 ms, in one statement, the most urgent first and FIFO (run_at, id) within a
-- priority. Each claim takes the job's next claim_token (the fence of every later write of
-- this run).
-- $1 queue, $2 limit, $3 owner (uuid, unique to the process), $4 lease ms, $5 now (NULL = now()).
-- Relies on jobs_claim_idx (queue, priority, run_at, id) WHERE state = 'available': one tight
-- range scan per priority (queue, priority = p, run_at <= now), most urgent first, each stopped
-- by the LIMIT above it; a range that comes up empty costs one index descent. A single
-- ORDER BY priority, run_at, id would instead walk every future-scheduled row of a priority
-- before reaching the next one (docs/priorities.md).
-- The `id = ANY(ARRAY(...))` shape keeps the plan index scans plus primary-key lookups;
-- `UPDATE ... FROM (SELECT ...)` can turn into a hash join over the whole table.
-- A paused queue claims nothing.
UPDATE jobs
SET state = 'running',
    attempt = attempt + 1,
    claim_token = claim_token + 1,
    lease_owner = $3,
    lease_expires_at = coalesce($5, now()) + $4::bigint * interval '1 millisecond',
    attempted_at = now(),
    updated_at = now()
WHERE id = ANY(ARRAY(
    SELECT c.id
    FROM generate_series(0, 3) AS p(priority)
    CROSS JOIN LATERAL (
        SELECT id
        FROM jobs
        WHERE state = 'available'
          AND queue = $1
          AND priority = p.priority::smallint
          AND run_at <= coalesce($5, now())
          AND NOT EXISTS (SELECT 1 FROM job_queues q WHERE q.name = $1 AND q.paused_at IS NOT NULL)
        ORDER BY run_at, id
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ) c
    LIMIT $2
))
RETURNING id, queue, kind, payload, attempt, claim_token, max_attempts, backoff_base_ms, backoff_max_ms, priority, run_at
