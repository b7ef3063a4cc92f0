-- prune_finished: delete one keyset batch of finished jobs (completed, cancelled, failed)
-- that finished before the cutoff.
-- $1 now (NULL = now()), $2 retention ms (finished before now − retention are deleted),
-- $3 limit, $4 keyset cursor finished_at (NULL = from the start), $5 keyset cursor id.
-- Relies on jobs_finished_idx (finished_at) WHERE finished_at IS NOT NULL.
-- Available and running jobs have finished_at NULL and are never touched; the state test
-- guards against a row caught between states. SKIP LOCKED: an operator action holding a
-- row wins, and the row is looked at again on the next pass.
WITH doomed AS (
    SELECT id
    FROM jobs
    WHERE finished_at IS NOT NULL
      AND finished_at < coalesce($1, now()) - $2::bigint * interval '1 millisecond'
      AND state IN ('completed', 'cancelled', 'failed')
      AND ($4::timestamptz IS NULL OR (finished_at, id) > ($4, $5))
    ORDER BY finished_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
DELETE FROM jobs j
USING doomed
WHERE j.id = doomed.id
RETURNING j.id, j.queue, j.finished_at AS "finished_at!"
