-- count_code_uses: add the tickets a batch issued to their payment codes' usage; a code that
-- reaches its limit becomes exhausted.
-- $1 code[] (distinct), $2 uses[] (tickets issued with each code in this batch).
-- The codes were locked by lock_payment_codes earlier in the same transaction, and the batch
-- never issues more than a code has left; payment_codes_usage_within_limit backs that up.
-- Relies on the primary key of payment_codes.
UPDATE payment_codes p
SET used_count = p.used_count + u.uses,
    status = CASE WHEN p.used_count + u.uses >= p.usage_limit
                  THEN 'exhausted'::payment_code_status ELSE p.status END,
    updated_at = now()
FROM unnest($1::text[], $2::int[]) AS u(code, uses)
WHERE p.code = u.code
