-- record_completed: transfers Monime reported completed.
-- $1 row ids, $2 Monime transfer ids, $3 the idempotency keys the runs used.
-- Fenced: a row whose key changed (an operator retry made a new generation) is left alone,
-- and a completed row is not written again.
UPDATE commission_transfers ct
SET status = 'completed', monime_transfer_id = u.monime_transfer_id,
    monime_status = 'completed', completed_at = now(), updated_at = now(),
    status_changed_at = now()
FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(id, monime_transfer_id, idempotency_key)
WHERE ct.id = u.id AND ct.idempotency_key = u.idempotency_key AND ct.status <> 'completed'
