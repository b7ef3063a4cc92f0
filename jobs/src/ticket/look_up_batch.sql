-- look_up_batch: what the database knows about each ticket of a batch, in input order.
-- $1 payment_id[], $2 company_id[], $3 route_id[] (one element per ticket).
-- Returns ord (1-based input position), the company's currency and commission_bps (NULL:
-- unknown company), the route's company (NULL: unknown route) and the id of a ticket that
-- already exists for the payment (NULL: none yet).
-- Relies on the primary keys of companies and routes and on tickets' unique payment_id index.
-- The existing ticket is a scalar subquery, one index probe per payment, whatever the
-- statistics say: as a join, a large batch made the planner hash a sequential scan of every
-- ticket (on statistics taken while the table was small), once per batch.
SELECT b.ord,
       c.currency AS "currency?",
       c.commission_bps AS "commission_bps?",
       r.company_id AS "route_company_id?",
       (SELECT t.id FROM tickets t WHERE t.payment_id = b.payment_id) AS ticket_id
FROM unnest($1::text[], $2::text[], $3::text[])
     WITH ORDINALITY AS b(payment_id, company_id, route_id, ord)
LEFT JOIN companies c ON c.id = b.company_id
LEFT JOIN routes r ON r.id = b.route_id
ORDER BY b.ord
