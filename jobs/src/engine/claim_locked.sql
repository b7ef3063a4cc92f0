-- claim_locked: lock up to $2 runnable jobs of queue $1 for the rest of the caller's
-- transaction, which runs them and writes their outcomes (finish_locked) before it commits;
-- the most urgent first, FIFO (run_at, id) within a priority.
-- $1 queue, $2 limit, $3 run_at[] and $4 id[]: per priority (element p + 1 for priority p),
-- the (run_at, id) to start after: the process's claim cursor in its priority, its claim
-- window elsewhere; a NULL element reads that priority from its start.
-- See docs/claim-cursor.md, docs/claim-window.md, docs/priorities.md.
-- The rows stay `available`: the lock is the claim, so no running row version, no lease and
-- no index entries are written for it, and a process that dies mid-batch loses nothing (its
-- transaction rolls back and the rows are free at once). Other claimers skip locked rows.
-- Relies on jobs_claim_idx (queue, priority, run_at, id) WHERE state = 'available': one range
-- scan per priority, most urgent first, which the row comparison enters at the cursor.
-- A paused queue claims nothing.
SELECT c.id AS "id!", c.priority AS "priority!", c.run_at AS "run_at!", c.kind AS "kind!",
       c.payload AS "payload!", c.attempt AS "attempt!", c.claim_token AS "claim_token!",
       c.max_attempts AS "max_attempts!", c.backoff_base_ms AS "backoff_base_ms!",
       c.backoff_max_ms AS "backoff_max_ms!"
FROM generate_series(0, 3) AS p(priority)
CROSS JOIN LATERAL (
    SELECT id, priority, run_at, kind, payload::text AS payload, attempt, claim_token,
           max_attempts, backoff_base_ms, backoff_max_ms
    FROM jobs
    WHERE state = 'available'
      AND queue = $1
      AND priority = p.priority::smallint
      AND run_at <= now()
      AND (run_at, id) > (coalesce(($3::timestamptz[])[p.priority + 1], '-infinity'),
                          coalesce(($4::bigint[])[p.priority + 1], 0))
      AND NOT EXISTS (SELECT 1 FROM job_queues q WHERE q.name = $1 AND q.paused_at IS NOT NULL)
    ORDER BY run_at, id
    LIMIT $2
    FOR NO KEY UPDATE SKIP LOCKED
) c
LIMIT $2
