-- lock_payment_codes: lock the payment codes a batch uses, for the rest of its transaction.
-- $1 code[] (distinct).
-- Locks in code order so that concurrent batches sharing codes queue up instead of
-- deadlocking. While a batch holds a code, no other transaction can issue a ticket with it,
-- so the last use number it reads afterwards (look_up_batch, a later statement, so a later
-- snapshot) is exact. Locking writes no new row version: the code's row stays one version
-- however many batches use it, even while a snapshot held elsewhere keeps vacuum away.
-- Relies on the primary key of payment_codes.
SELECT code,
       company_id,
       route_id,
       usage_limit,
       status::text AS "status!",
       (expires_at IS NOT NULL AND expires_at <= now()) AS "expired!"
FROM payment_codes
WHERE code = ANY($1::text[])
ORDER BY code
FOR UPDATE
