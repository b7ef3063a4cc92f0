-- insert_tickets: write a batch of tickets in one statement; a payment that already has its
-- ticket (a duplicate delivery, a re-run, a racing replica) is skipped.
-- $1 payment_id[], $2 event_id[], $3 company_id[], $4 route_id[], $5 payment_code[] (NULL:
-- none), $6 passenger_phone[], $7 amount_minor[], $8 commission_minor[], $9 currency[],
-- $10 financial_transaction_reference[] (NULL: none); $11 the audit actor, $12 the audit
-- action and $13 its subject type; $14 the outbox event type; $15 code_use[] (the ticket's
-- use number of its payment code; NULL: no code).
-- Rows go in in payment_id order, so concurrent batches take the unique index's locks in the
-- same order and never deadlock on each other.
-- Each inserted ticket gets its audit event from the same statement: one INSERT … SELECT over
-- the RETURNING rows, not a statement per ticket (docs/audit-trail.md); the batch's
-- `ticket.issued` events are one outbox row holding the tickets' ids, their data built from
-- the tickets when they are delivered, so this statement builds no JSON for them
-- (docs/outbox-events.md).
-- Relies on tickets' unique payment_id index (ON CONFLICT).
WITH inserted AS (
    INSERT INTO tickets (payment_id, event_id, company_id, route_id, payment_code, passenger_phone,
                         amount_minor, commission_minor, currency, financial_transaction_reference,
                         code_use)
    SELECT payment_id, event_id, company_id, route_id, payment_code, passenger_phone,
           amount_minor, commission_minor, currency, financial_transaction_reference, code_use
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::bigint[], $8::bigint[], $9::text[], $10::text[], $15::int[])
         AS t(payment_id, event_id, company_id, route_id, payment_code, passenger_phone,
              amount_minor, commission_minor, currency, financial_transaction_reference,
              code_use)
    ORDER BY payment_id
    ON CONFLICT (payment_id) DO NOTHING
    RETURNING id, payment_id, company_id, amount_minor, currency, commission_minor
),
audited AS (
    INSERT INTO audit_events (actor, action, subject_type, subject_id, data)
    SELECT $11, $12, $13, i.id::text,
           jsonb_build_object('payment_id', i.payment_id, 'company_id', i.company_id,
                              'amount_minor', i.amount_minor, 'currency', i.currency,
                              'commission_minor', i.commission_minor)
    FROM inserted i
),
published AS (
    INSERT INTO outbox_events (type, size, subject_ids)
    SELECT $14, count(*), array_agg(i.id ORDER BY i.id)
    FROM inserted i
    HAVING count(*) > 0
)
SELECT id AS "id!", payment_id AS "payment_id!"
FROM inserted
