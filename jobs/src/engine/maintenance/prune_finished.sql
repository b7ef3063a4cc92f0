-- prune_finished: delete one keyset batch of finished jobs (completed, cancelled, failed)
-- that finished before the cutoff.
-- $1 now (NULL = now()), $2 retention ms (finished before now − retention are deleted),
-- $3 limit, $4 keyset cursor finished_at (NULL = from the start), $5 keyset cursor id,
-- $6 the operator's actor name (NULL: the maintenance leader's pass, not audited), $7 the
-- audit action and $8 its subject type: an operator's pass writes one audit event per queue
-- and batch, in this statement.
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
),
deleted AS (
    DELETE FROM jobs j
    USING doomed
    WHERE j.id = doomed.id
    RETURNING j.id, j.queue, j.finished_at
),
audited AS (
    INSERT INTO audit_events (actor, action, subject_type, subject_id, data)
    SELECT $6, $7, $8, queue,
           jsonb_build_object('deleted', count(*), 'retention_ms', $2::bigint)
    FROM deleted
    WHERE $6::text IS NOT NULL
    GROUP BY queue
)
SELECT id, queue, finished_at AS "finished_at!"
FROM deleted
