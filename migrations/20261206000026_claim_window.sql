-- The claim starts where the process's claims have reached, not at the start of the queue
-- (docs/claim-window.md).
--
-- A claim reads jobs_claim_idx in (queue, priority, run_at, id) order. Every job claimed
-- since the last vacuum leaves its entry there, and while a transaction anywhere in the
-- database holds an old snapshot, vacuum can remove none of them: a claim that starts at the
-- beginning of the queue crosses all of them, and visits each one's row to learn it is gone.
-- Held for minutes at thousands of jobs a second, that made every claim slower than the jobs
-- arrived.
--
-- poda_claim_batch gains $6: per priority (element p + 1 for priority p), the earliest run_at
-- the claim reads; NULL (or a NULL element) reads that priority from its start. The worker
-- passes the latest run_at it has claimed in that priority less a lookback; rows that become
-- runnable behind that point are moved in front of it by the worker's straggler sweep.
DROP FUNCTION poda_claim_batch(text, bigint, uuid, bigint, timestamptz);

-- poda_claim_batch($1 queue, $2 limit, $3 owner, $4 lease ms, $5 now (NULL = now()),
-- $6 earliest run_at per priority): move up to $2 runnable jobs of queue $1 to running under
-- owner $3 (a uuid unique to the process), with a lease of $4 ms, in one statement, the most
-- urgent first and FIFO (run_at, id) within a priority. Each claim takes the job's next
-- claim_token (the fence of every later write of this run). A paused queue claims nothing.
-- Relies on jobs_claim_idx (queue, priority, run_at, id) WHERE state = 'available': one tight
-- range scan per priority (queue, priority = p, $6[p + 1] <= run_at <= now), most urgent
-- first, each stopped by the LIMIT above it; a range that comes up empty costs one index
-- descent (docs/priorities.md).
-- The `id = ANY(ARRAY(...))` shape keeps the plan index scans plus primary-key lookups;
-- `UPDATE ... FROM (SELECT ...)` can turn into a hash join over the whole table.
-- Planned once per session (a generic plan; sequential scans priced out keep it on the claim
-- index however the table has grown since, docs/plan-cache.md). The body names its
-- parameters $1 … $6 so that it reads, and is tested, as a statement of its own
-- (jobs/tests/engine/plans.rs).
CREATE FUNCTION poda_claim_batch(text, bigint, uuid, bigint, timestamptz, timestamptz[])
RETURNS TABLE (id bigint, queue text, kind text, payload jsonb, attempt integer,
               claim_token integer, max_attempts integer, backoff_base_ms integer,
               backoff_max_ms integer, priority smallint, run_at timestamptz)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $claim$
#variable_conflict use_column
BEGIN
RETURN QUERY
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
          AND run_at >= coalesce($6[p.priority + 1], '-infinity')
          AND run_at <= coalesce($5, now())
          AND NOT EXISTS (SELECT 1 FROM job_queues q WHERE q.name = $1 AND q.paused_at IS NOT NULL)
        ORDER BY run_at, id
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ) c
    LIMIT $2
))
RETURNING id, queue, kind, payload, attempt, claim_token, max_attempts, backoff_base_ms,
          backoff_max_ms, priority, run_at;
END
$claim$;
