-- lock_payment_codes: lock the payment codes a batch uses, for the rest of its transaction.
-- $1 code[] (distinct).
-- Locks in code order so that concurrent batches sharing codes queue up instead of
-- deadlocking. While a batch holds a code, no other transaction can issue a ticket with it,
-- so the usage it counts against the limit is exact.
-- Relies on the primary key of payment_codes.
SELECT code,
       company_id,
       route_id,
       usage_limit,
       used_count,
       status::text AS "status!",
       (expires_at IS NOT NULL AND expires_at <= now()) AS "expired!"
FROM payment_codes
WHERE code = ANY($1::text[])
ORDER BY code
FOR UPDATE
