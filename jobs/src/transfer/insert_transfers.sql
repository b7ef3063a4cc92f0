-- insert_transfers: transfer rows, written before Monime is first called for them. A row that
-- exists already (a concurrent or earlier run) is left alone and not returned.
-- $1 ticket ids, $2 company ids, $3 source accounts, $4 amounts (minor units), $5 currencies,
-- $6 idempotency keys, $7 request bodies (exact bytes as text); $8 the destination account;
-- $9 the audit actor, $10 the audit action and $11 its subject type: each row written gets its
-- `transfer.created` event in this statement.
-- Relies on the unique ticket_id of commission_transfers.
WITH inserted AS (
    INSERT INTO commission_transfers
        (ticket_id, company_id, source_account_id, destination_account_id, amount_minor, currency,
         generation, idempotency_key, request_body)
    SELECT r.ticket_id, r.company_id, r.source_account_id, $8, r.amount_minor, r.currency,
           1, r.idempotency_key, r.request_body
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                $7::text[])
         AS r(ticket_id, company_id, source_account_id, amount_minor, currency, idempotency_key,
              request_body)
    ON CONFLICT (ticket_id) DO NOTHING
    RETURNING ticket_id, id, company_id, amount_minor, currency, generation, idempotency_key
),
audited AS (
    INSERT INTO audit_events (actor, action, subject_type, subject_id, data)
    SELECT $9, $10, $11, i.ticket_id::text,
           jsonb_build_object('transfer_id', i.id, 'company_id', i.company_id,
                              'amount_minor', i.amount_minor, 'currency', i.currency,
                              'generation', i.generation,
                              'idempotency_key', i.idempotency_key)
    FROM inserted i
)
SELECT ticket_id AS "ticket_id!", id AS "id!"
FROM inserted
