-- insert_transfer: the transfer row, written before Monime is first called. A row that exists
-- already (a concurrent or earlier run) is left alone and nothing is returned.
-- $1 ticket id, $2 company id, $3 source account, $4 destination account, $5 amount (minor
-- units), $6 currency, $7 idempotency key, $8 request body (exact bytes as text).
-- Relies on the unique ticket_id of commission_transfers.
INSERT INTO commission_transfers
    (ticket_id, company_id, source_account_id, destination_account_id, amount_minor, currency,
     generation, idempotency_key, request_body)
VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8)
ON CONFLICT (ticket_id) DO NOTHING
RETURNING id
