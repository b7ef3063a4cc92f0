-- A payment code's uses are its tickets, numbered (docs/payment-code-uses.md).
--
-- Each ticket issued with a code carries its use number, 1 to the code's usage_limit, unique
-- per code. A code's usage is its highest use number: one step down the
-- (payment_code, code_use) index from the top. The code's row is locked while a batch numbers
-- its uses, and is written only when the code becomes exhausted: a counter rewritten by every
-- batch left, under a snapshot held open elsewhere, a chain of row versions that every later
-- lock and read of the code walked.
--
-- Existing tickets are numbered in the order they were issued. Until now used_count was only
-- ever raised by issuing a ticket, so it equals the number of the code's tickets; a code where
-- it does not (an edit by hand) stops the migration before anything is changed, named in the
-- error, since no numbering would keep both its count and its tickets.

DO $$
DECLARE
    bad record;
BEGIN
    SELECT c.code, c.used_count, count(t.id) AS tickets INTO bad
    FROM payment_codes c
    LEFT JOIN tickets t ON t.payment_code = c.code
    GROUP BY c.code, c.used_count
    HAVING c.used_count <> count(t.id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'payment code % has used_count % but % tickets', bad.code, bad.used_count, bad.tickets
            USING HINT = 'set used_count to the number of the code''s tickets, then migrate again',
                  ERRCODE = 'check_violation';
    END IF;
END
$$;

ALTER TABLE tickets ADD COLUMN code_use integer;

UPDATE tickets t
SET code_use = n.code_use
FROM (SELECT id, row_number() OVER (PARTITION BY payment_code ORDER BY id) AS code_use
      FROM tickets
      WHERE payment_code IS NOT NULL) n
WHERE t.id = n.id;

ALTER TABLE tickets
    ADD CONSTRAINT tickets_code_use_with_code
        CHECK ((payment_code IS NULL) = (code_use IS NULL) AND code_use > 0);

-- A use beyond the code's limit is refused as the counter's CHECK refused it, once per
-- statement like the reference check (…09_tickets_statement_reference_check.sql), whose
-- transition table it shares.
CREATE FUNCTION tickets_check_code_uses() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.payment_id, n.payment_code, n.code_use, p.usage_limit INTO bad
    FROM new_tickets n
    JOIN payment_codes p ON p.code = n.payment_code
    WHERE n.code_use > p.usage_limit
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ticket for payment % would be use % of payment code %, whose limit is %',
            bad.payment_id, bad.code_use, bad.payment_code, bad.usage_limit
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tickets_code_uses_within_limit
    AFTER INSERT ON tickets
    REFERENCING NEW TABLE AS new_tickets
    FOR EACH STATEMENT EXECUTE FUNCTION tickets_check_code_uses();

CREATE TRIGGER tickets_code_uses_within_limit_on_update
    AFTER UPDATE ON tickets
    REFERENCING NEW TABLE AS new_tickets
    FOR EACH STATEMENT EXECUTE FUNCTION tickets_check_code_uses();

-- Replaces the index on payment_code alone: the same "a code's tickets", and the use numbers.
CREATE UNIQUE INDEX tickets_code_use_key ON tickets (payment_code, code_use)
    WHERE payment_code IS NOT NULL;
DROP INDEX tickets_payment_code_idx;

ALTER TABLE payment_codes
    DROP CONSTRAINT payment_codes_usage_within_limit,
    DROP COLUMN used_count;

-- What a code's row no longer holds, for dashboards and inspection.
CREATE VIEW payment_code_usage AS
SELECT c.code,
       c.company_id,
       c.route_id,
       c.usage_limit,
       coalesce(u.used_count, 0) AS used_count,
       c.usage_limit - coalesce(u.used_count, 0) AS remaining,
       c.status,
       c.expires_at
FROM payment_codes c
LEFT JOIN LATERAL (SELECT max(t.code_use) AS used_count
                   FROM tickets t
                   WHERE t.payment_code = c.code) u ON true;
