-- record_failed: a transfer that failed for good (Monime failed it, refused the request, or
-- the job ran out of retries); it waits for an operator (`worker retry-transfer`).
-- $1 row id, $2 the idempotency key the run used, $3 failure_code, $4 last_error,
-- $5 Monime's transfer id (NULL: keep the row's), $6 Monime's status (NULL: keep the row's),
-- $7 retries to add to retry_count (1 when the last retry is what failed, else 0).
-- Fenced like record_completed: a row whose key changed (an operator retry made a new
-- generation) or that already finished is left alone.
-- $8 the audit actor, $9 the audit action and $10 its subject type: the row failed gets its
-- `transfer.failed` audit event in this statement, and $11 (the outbox event type) its
-- outbox event (docs/outbox-events.md).
WITH failed AS (
    UPDATE commission_transfers
    SET status = 'failed', monime_transfer_id = coalesce($5, monime_transfer_id),
        monime_status = coalesce($6, monime_status), failure_code = $3, last_error = $4,
        retry_count = retry_count + $7, updated_at = now(), status_changed_at = now()
    WHERE id = $1 AND idempotency_key = $2 AND status IN ('pending', 'processing')
    RETURNING id, ticket_id, generation, failure_code, monime_status, last_error,
              amount_minor, currency
),
audited AS (
    INSERT INTO audit_events (actor, action, subject_type, subject_id, data)
    SELECT $8, $9, $10, f.ticket_id::text,
           jsonb_build_object('generation', f.generation, 'failure_code', f.failure_code,
                              'monime_status', f.monime_status, 'reason', f.last_error)
    FROM failed f
)
INSERT INTO outbox_events (type, size, data)
SELECT $11, 1,
       jsonb_build_array(jsonb_build_object('ticket_id', f.ticket_id, 'transfer_id', f.id,
                                            'generation', f.generation,
                                            'amount', jsonb_build_object('currency', f.currency,
                                                                         'value', f.amount_minor),
                                            'failure_code', f.failure_code,
                                            'monime_status', f.monime_status))
FROM failed f
