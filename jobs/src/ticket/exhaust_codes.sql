-- exhaust_codes: mark payment codes whose last use a batch has just issued.
-- $1 code[] (distinct).
-- The codes were locked by lock_payment_codes earlier in the same transaction. A code's usage
-- is its tickets' highest use number (docs/payment-code-uses.md); this row changes only here,
-- once per code.
-- Relies on the primary key of payment_codes.
UPDATE payment_codes
SET status = 'exhausted',
    updated_at = now()
WHERE code = ANY($1::text[])
  AND status = 'active'
