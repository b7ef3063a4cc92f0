-- load_transfers: tickets with their company's account and their transfer row, if any.
-- $1 ticket ids. A ticket that does not exist has no row in the answer.
-- Relies on the primary keys of tickets and companies and on the unique ticket_id of
-- commission_transfers.
SELECT t.id                     AS ticket_id,
       t.company_id,
       t.commission_minor,
       t.currency,
       c.monime_account_id,
       ct.id                    AS "transfer_id?",
       ct.status                AS "status?: RowStatus",
       ct.idempotency_key       AS "idempotency_key?",
       ct.request_body          AS "request_body?",
       ct.monime_transfer_id,
       ct.monime_status,
       ct.last_error,
       extract(epoch FROM ct.call_not_before - now())::float8 AS slot_in_s
FROM tickets t
JOIN companies c ON c.id = t.company_id
LEFT JOIN commission_transfers ct ON ct.ticket_id = t.id
WHERE t.id = ANY($1::bigint[])
