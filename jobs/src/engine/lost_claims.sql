-- lost_claims: which of the runs this process holds are no longer their job's claim (the job
-- is gone, or not running under that token: an operator cancelled it, or it was rescued and
-- claimed again). Read-only; the poll that finds cancellations when the engine does not LISTEN.
-- $1 id[], $2 claim token[] (as claimed). Relies on the primary key.
SELECT h.id AS "id!", h.claim_token AS "claim_token!"
FROM unnest($1::bigint[], $2::int[]) AS h(id, claim_token)
LEFT JOIN jobs j ON j.id = h.id
WHERE j.id IS NULL OR j.state <> 'running' OR j.claim_token <> h.claim_token
