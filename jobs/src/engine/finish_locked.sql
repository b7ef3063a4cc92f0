-- finish_locked: write the outcomes of jobs claimed by claim_locked, each spending its
-- attempt and its claim token here (a locked claim never marked the row).
-- $1 id[], $2 claim token[] (as claimed), $3 new state[] (job_state as text), $4 delay ms[]
-- (NULL keeps run_at), $5 error[] (NULL = none), $6 refund[] (true: the attempt is not spent).
-- Inside the claiming transaction the rows are locked and the fence below always holds. After
-- that transaction failed, the same statement records the failure from a new transaction: a
-- row another claimer has meanwhile run (its token moved on, or it is no longer available)
-- is left alone. Rows are found by id (the primary key).
-- Planned at every call (ARRAY_PLANS, set before it in the batch transaction): a generic plan
-- of this join, made while `jobs` was small, read a whole index of `jobs` for every batch once
-- the table had grown (25 s a batch at 1.3 million rows).
UPDATE jobs j
SET state = o.state::job_state,
    attempt = CASE WHEN o.refund THEN j.attempt ELSE j.attempt + 1 END,
    claim_token = j.claim_token + 1,
    run_at = CASE WHEN o.delay_ms IS NULL THEN j.run_at
                  ELSE now() + o.delay_ms * interval '1 millisecond' END,
    last_error = coalesce(o.error, j.last_error),
    errors = CASE WHEN o.error IS NULL THEN j.errors
                  ELSE j.errors || jsonb_build_array(jsonb_build_object(
                           'attempt', j.attempt + 1, 'at', now(), 'error', o.error)) END,
    attempted_at = now(),
    finished_at = CASE WHEN o.state IN ('completed', 'failed', 'cancelled') THEN now() END,
    updated_at = now()
FROM unnest($1::bigint[], $2::int[], $3::text[], $4::bigint[], $5::text[], $6::bool[])
     AS o(id, claim_token, state, delay_ms, error, refund)
WHERE j.id = o.id
  AND j.state = 'available'
  AND j.claim_token = o.claim_token
