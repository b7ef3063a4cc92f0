-- look_up_batch: what the database knows about each ticket of a batch, in input order.
-- $1 payment_id[], $2 company_id[], $3 route_id[], $4 payment_code[] (NULL: none; one
-- element per ticket).
-- Returns ord (1-based input position), the company's currency and commission_bps (NULL:
-- unknown company), the route's company (NULL: unknown route) and the id of a ticket that
-- already exists for the payment (NULL: none yet), and the highest use number of the
-- payment's code (NULL: no code, or not used yet).
-- Runs after lock_payment_codes: the uses of the batch's codes are all committed and visible.
-- Relies on the primary keys of companies and routes, on tickets' unique payment_id index
-- and on tickets_code_use_key (the last use is the index's top entry for the code).
-- The existing ticket is a scalar subquery, one index probe per payment, whatever the
-- statistics say: as a join, a large batch made the planner hash a sequential scan of every
-- ticket (on statistics taken while the table was small), once per batch.
SELECT b.ord,
       c.currency AS "currency?",
       c.commission_bps AS "commission_bps?",
       r.company_id AS "route_company_id?",
       (SELECT t.id FROM tickets t WHERE t.payment_id = b.payment_id) AS ticket_id,
       (SELECT max(t.code_use) FROM tickets t WHERE t.payment_code = b.payment_code) AS code_used
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
     WITH ORDINALITY AS b(payment_id, company_id, route_id, payment_code, ord)
LEFT JOIN companies c ON c.id = b.company_id
LEFT JOIN routes r ON r.id = b.route_id
ORDER BY b.ord
