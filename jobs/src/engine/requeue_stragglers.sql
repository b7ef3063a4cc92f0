-- requeue_stragglers: runnable jobs of queue $1, priority $2, with run_at before $3 (where
-- this process's claims start reading, docs/claim-window.md) and not before $5 (NULL: from
-- the queue's start) are moved to run_at = now(), in front of every claim; at most $4 per
-- statement.
-- Relies on jobs_claim_idx (queue, priority, run_at, id) WHERE state = 'available': the range
-- [$5, $3), which crosses every entry of a job claimed there since the last vacuum.
-- SKIP LOCKED: a claim that holds the row takes it anyway.
UPDATE jobs
SET run_at = now(),
    updated_at = now()
WHERE id = ANY(ARRAY(
    SELECT id
    FROM jobs
    WHERE state = 'available'
      AND queue = $1
      AND priority = $2
      AND run_at < $3
      AND run_at >= coalesce($5::timestamptz, '-infinity')
    ORDER BY run_at, id
    LIMIT $4
    FOR UPDATE SKIP LOCKED
))
  AND state = 'available'
