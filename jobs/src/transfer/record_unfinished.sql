-- record_unfinished: transfers Monime accepted and has not finished (pending or processing);
-- counts the poll, so the next one waits longer.
-- $1 row ids, $2 Monime transfer ids, $3 Monime's statuses, $4 the idempotency keys the runs
-- used. Returns (id, polls) for each row written; a row that moved on without the run
-- (finished, or retried by an operator under a new key) is not returned.
UPDATE commission_transfers ct
SET status = 'processing', monime_transfer_id = u.monime_transfer_id,
    monime_status = u.monime_status, polls = ct.polls + 1, updated_at = now(),
    status_changed_at = CASE WHEN ct.status = 'processing' THEN ct.status_changed_at ELSE now() END
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
     AS u(id, monime_transfer_id, monime_status, idempotency_key)
WHERE ct.id = u.id AND ct.idempotency_key = u.idempotency_key
  AND ct.status IN ('pending', 'processing')
RETURNING ct.id, ct.polls
