-- claim_keyed: claim_batch for a queue whose jobs of one concurrency key may run at most $6 at
-- once: move up to $2 runnable jobs of queue $1 to running under owner $3 with a lease of
-- $4 ms, the most urgent first and FIFO within a priority, skipping every job whose key
-- already has $6 running jobs, and taking no more of one key than its free places.
-- $1 queue, $2 limit, $3 owner, $4 lease ms, $5 now (NULL = now()), $6 running jobs per key
-- (at least 1), $7 candidates to read (at least $2; more lets a batch reach past the surplus
-- jobs of one key).
-- The caller holds the queue's claim lock (pg_advisory_xact_lock, taken by an earlier
-- statement of the same transaction), so this statement's snapshot sees every running row of
-- the claims before it, and two claims never count the same free place.
-- Relies on jobs_running_key_idx (queue, concurrency_key) WHERE state = 'running' AND
-- concurrency_key IS NOT NULL for the counts, and jobs_claim_idx (queue, priority, run_at, id)
-- WHERE state = 'available' for one range scan per priority; jobs of a saturated key are
-- filtered out during the scan, so a busy key's backlog never fills the candidates.
-- Each row returned carries the number of candidates read: when it equals $7 and fewer than
-- $2 jobs came back, the surplus of some key filled the candidates, and the caller claims
-- again in the same transaction (whose next statement counts what this one took).
-- Jobs without a key are not limited. A paused queue claims nothing.
WITH running AS (
    SELECT concurrency_key AS key, count(*) AS n
    FROM jobs
    WHERE state = 'running' AND queue = $1 AND concurrency_key IS NOT NULL
    GROUP BY concurrency_key
),
saturated AS (
    SELECT coalesce(array_agg(key), '{}') AS keys FROM running WHERE n >= $6
),
candidates AS (
    SELECT c.id, c.concurrency_key, p.priority, c.run_at
    FROM generate_series(0, 3) AS p(priority)
    CROSS JOIN LATERAL (
        SELECT id, concurrency_key, run_at
        FROM jobs
        WHERE state = 'available'
          AND queue = $1
          AND priority = p.priority::smallint
          AND run_at <= coalesce($5, now())
          AND (concurrency_key IS NULL
               OR concurrency_key <> ALL((SELECT keys FROM saturated)::text[]))
          AND NOT EXISTS (SELECT 1 FROM job_queues q WHERE q.name = $1 AND q.paused_at IS NOT NULL)
        ORDER BY run_at, id
        LIMIT $7
        FOR UPDATE OF jobs SKIP LOCKED
    ) c
    LIMIT $7
),
chosen AS (
    SELECT ranked.id
    FROM (
        SELECT id, concurrency_key, priority, run_at,
               row_number() OVER (PARTITION BY concurrency_key ORDER BY priority, run_at, id) AS nth
        FROM candidates
    ) ranked
    LEFT JOIN running r ON r.key = ranked.concurrency_key
    WHERE ranked.concurrency_key IS NULL OR ranked.nth + coalesce(r.n, 0) <= $6
    ORDER BY ranked.priority, ranked.run_at, ranked.id
    LIMIT $2
)
UPDATE jobs
SET state = 'running',
    attempt = attempt + 1,
    claim_token = claim_token + 1,
    lease_owner = $3,
    lease_expires_at = coalesce($5, now()) + $4::bigint * interval '1 millisecond',
    attempted_at = now(),
    updated_at = now()
WHERE id = ANY(ARRAY(SELECT id FROM chosen))
RETURNING id, queue, kind, payload, attempt, claim_token, max_attempts, backoff_base_ms, backoff_max_ms, priority, run_at,
          (SELECT count(*) FROM candidates) AS "candidates!"
