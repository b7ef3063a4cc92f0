-- payment_status: one payment's events, ticket job, ticket and commission transfer.
-- $1 payment_id, $2 the tickets queue (the ticket job's unique key is the payment id).
-- One row, or none when no event carrying the payment was recorded. Each part is one index
-- probe: webhook_events_payment_idx, jobs_unique_key_idx (queue, unique_key),
-- tickets_payment_id_key, commission_transfers_ticket_id_key.
SELECT e.received_at AS "received_at!",
       e.events AS "events!: Json<Vec<PaymentEvent>>",
       j.id AS "job_id?: JobId", j.state AS "job_state?: JobState",
       j.attempt AS "job_attempts?", j.last_error AS job_last_error,
       t.id AS "ticket_id?", t.company_id AS "ticket_company_id?",
       t.route_id AS "ticket_route_id?", t.currency AS "ticket_currency?",
       t.amount_minor AS "ticket_amount_minor?",
       t.commission_minor AS "ticket_commission_minor?",
       t.created_at AS "ticket_issued_at?",
       c.status::text AS "transfer_status?", c.idempotency_key AS "transfer_key?",
       c.monime_transfer_id AS transfer_monime_id, c.currency AS "transfer_currency?",
       c.amount_minor AS "transfer_amount_minor?",
       c.failure_code AS transfer_failure_code,
       c.updated_at AS "transfer_updated_at?"
FROM (
    SELECT min(w.received_at) AS received_at,
           jsonb_agg(jsonb_build_object('id', w.event_id, 'name', w.event_name,
                                        'received_at', w.received_at)
                     ORDER BY w.received_at, w.event_id) AS events
    FROM webhook_events w
    WHERE w.payment_id = $1
) e
LEFT JOIN jobs j ON j.queue = $2 AND j.unique_key = $1
LEFT JOIN tickets t ON t.payment_id = $1
LEFT JOIN commission_transfers c ON c.ticket_id = t.id
WHERE e.received_at IS NOT NULL
