-- record_completed: transfers Monime reported completed.
-- $1 row ids, $2 Monime transfer ids, $3 the idempotency keys the runs used.
-- Fenced: a row whose key changed (an operator retry made a new generation) is left alone,
-- and a completed row is not written again.
-- $4 the audit actor, $5 the audit action and $6 its subject type: each row completed gets
-- its `transfer.completed` event in this statement, and $7 (the outbox event type) the
-- batch's events as one outbox row (docs/outbox-events.md).
WITH completed AS (
    UPDATE commission_transfers ct
    SET status = 'completed', monime_transfer_id = u.monime_transfer_id,
        monime_status = 'completed', completed_at = now(), updated_at = now(),
        status_changed_at = now()
    FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(id, monime_transfer_id, idempotency_key)
    WHERE ct.id = u.id AND ct.idempotency_key = u.idempotency_key AND ct.status <> 'completed'
    RETURNING ct.id, ct.ticket_id, ct.generation, ct.monime_transfer_id, ct.amount_minor,
              ct.currency
),
audited AS (
    INSERT INTO audit_events (actor, action, subject_type, subject_id, data)
    SELECT $4, $5, $6, c.ticket_id::text,
           jsonb_build_object('transfer_id', c.id, 'generation', c.generation,
                              'monime_transfer_id', c.monime_transfer_id,
                              'amount_minor', c.amount_minor, 'currency', c.currency)
    FROM completed c
)
INSERT INTO outbox_events (type, size, data)
SELECT $7, count(*),
       jsonb_agg(jsonb_build_object('ticket_id', c.ticket_id, 'transfer_id', c.id,
                                    'generation', c.generation,
                                    'monime_transfer_id', c.monime_transfer_id,
                                    'amount', jsonb_build_object('currency', c.currency,
                                                                 'value', c.amount_minor))
                 ORDER BY c.id)
FROM completed c
HAVING count(*) > 0
