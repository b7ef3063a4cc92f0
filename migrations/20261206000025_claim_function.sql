-- The apalis queues' claim as a function, so that it is planned once per session.
--
-- A claim is one statement per batch, and when jobs arrive one at a time it is one statement
-- per job. Planned afresh at every call (the pools' force_custom_plan, docs/plan-cache.md) it
-- cost the server more to plan than to run: a priority range per LATERAL level, the pause
-- check and the partial-index proofs for every index of `jobs`. Inside a PL/pgSQL function
-- the statement keeps one generic plan per session; sequential scans priced out keep that
-- plan on the claim index however the table has grown since it was made (the same settings
-- as the batch transactions, `INDEX_PLANS`). The statement takes no array, so a generic plan
-- cannot misjudge a batch's size.
--
-- poda_claim_batch($1 queue, $2 limit, $3 owner, $4 lease ms, $5 now (NULL = now())): move up
-- to $2 runnable jobs of queue $1 to running under owner $3 (a uuid unique to the process),
-- with a lease of $4 ms, in one statement, the most urgent first and FIFO (run_at, id) within
-- a priority. Each claim takes the job's next claim_token (the fence of every later write of
-- this run). A paused queue claims nothing.
-- Relies on jobs_claim_idx (queue, priority, run_at, id) WHERE state = 'available': one tight
-- range scan per priority (queue, priority = p, run_at <= now), most urgent first, each stopped
-- by the LIMIT above it; a range that comes up empty costs one index descent. A single
-- ORDER BY priority, run_at, id would instead walk every future-scheduled row of a priority
-- before reaching the next one (docs/priorities.md).
-- The `id = ANY(ARRAY(...))` shape keeps the plan index scans plus primary-key lookups;
-- `UPDATE ... FROM (SELECT ...)` can turn into a hash join over the whole table.
-- The body names its parameters $1 … $5 so that it reads, and is tested, as a statement of
-- its own (jobs/tests/engine/plans.rs).
CREATE FUNCTION poda_claim_batch(text, bigint, uuid, bigint, timestamptz)
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
