-- Commission transfers check their ticket and company once per statement instead of once
-- per row, as tickets do (20261121000009).
--
-- The row-level foreign keys ran two lookups per transfer and took a KEY SHARE lock on its
-- ticket and its company. Locking the ticket rewrote the ticket's row header (a page dirtied
-- and a WAL record per transfer); every concurrent batch locked the same few company rows, so
-- each lock became a MultiXact. Under the tickets soak the batch insert of transfers was the
-- statement with the most time of all.
--
-- Instead:
-- * tickets are never deleted and never re-keyed (companies already are not), so a
--   reference that was valid when a transfer was written stays valid without a lock;
-- * a transfer's ticket and company never change;
-- * one statement-level trigger checks all the rows an INSERT wrote with a single anti-join
--   and refuses the statement with foreign_key_violation (23503), as the foreign keys did.
ALTER TABLE commission_transfers DROP CONSTRAINT commission_transfers_ticket_id_fkey,
                                 DROP CONSTRAINT commission_transfers_company_id_fkey;

-- Each row's ticket and company are probed by key (LIMIT 1 laterals, sequential scans off): a
-- NOT EXISTS under OR becomes a hashed subplan that reads every ticket for each statement, and
-- the function's plan, cached per session, may be made while `tickets` is nearly empty.
CREATE FUNCTION commission_transfers_check_references() RETURNS trigger
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.ticket_id, n.company_id INTO bad
    FROM new_transfers n
    LEFT JOIN LATERAL (SELECT true AS found FROM tickets t WHERE t.id = n.ticket_id LIMIT 1) t
           ON true
    LEFT JOIN LATERAL (SELECT true AS found FROM companies c WHERE c.id = n.company_id LIMIT 1) c
           ON true
    WHERE t.found IS NULL OR c.found IS NULL
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'commission transfer refers to a ticket or company that does not exist (ticket %, company %)',
            bad.ticket_id, bad.company_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER commission_transfers_references_exist
    AFTER INSERT ON commission_transfers
    REFERENCING NEW TABLE AS new_transfers
    FOR EACH STATEMENT EXECUTE FUNCTION commission_transfers_check_references();

CREATE FUNCTION refuse_changing_transfer_owner() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a commission transfer''s ticket and company never change (transfer %)', OLD.id
        USING ERRCODE = 'foreign_key_violation';
END
$$;

-- Fires only for statements that set these columns, and refuses only a real change.
CREATE TRIGGER commission_transfers_owner_is_kept
    BEFORE UPDATE OF ticket_id, company_id ON commission_transfers
    FOR EACH ROW
    WHEN (OLD.ticket_id IS DISTINCT FROM NEW.ticket_id
          OR OLD.company_id IS DISTINCT FROM NEW.company_id)
    EXECUTE FUNCTION refuse_changing_transfer_owner();

CREATE FUNCTION refuse_removing_transfer_references() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never deleted or re-keyed: commission transfers may refer to them', TG_TABLE_NAME
        USING ERRCODE = 'foreign_key_violation';
END
$$;

CREATE TRIGGER tickets_are_kept BEFORE DELETE OR UPDATE OF id ON tickets
    FOR EACH ROW EXECUTE FUNCTION refuse_removing_transfer_references();
-- Row triggers do not fire on TRUNCATE; statement-level TRUNCATE triggers also fire on
-- tables a CASCADE reaches.
CREATE TRIGGER tickets_are_kept_on_truncate BEFORE TRUNCATE ON tickets
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_removing_transfer_references();

-- The tickets' own statement-level checks (20261121000009, 20261206000028) had the shapes
-- that read whole tables: NOT EXISTS under OR, and a join of the transition table. Every
-- ticket batch read every company, route and payment code; payment codes grow with the
-- platform. They now probe each row's references by key, as above.
CREATE OR REPLACE FUNCTION tickets_check_references() RETURNS trigger
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.payment_id, n.company_id, n.route_id, n.payment_code INTO bad
    FROM new_tickets n
    LEFT JOIN LATERAL (SELECT true AS found FROM companies c WHERE c.id = n.company_id LIMIT 1) c
           ON true
    LEFT JOIN LATERAL (SELECT true AS found FROM routes r WHERE r.id = n.route_id LIMIT 1) r
           ON true
    LEFT JOIN LATERAL (SELECT true AS found FROM payment_codes p
                       WHERE p.code = n.payment_code LIMIT 1) p
           ON true
    WHERE c.found IS NULL OR r.found IS NULL
       OR (n.payment_code IS NOT NULL AND p.found IS NULL)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ticket for payment % refers to a company, route or payment code that does not exist (company %, route %, payment code %)',
            bad.payment_id, bad.company_id, bad.route_id, coalesce(bad.payment_code, 'none')
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION tickets_check_code_uses() RETURNS trigger
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.payment_id, n.payment_code, n.code_use, p.usage_limit INTO bad
    FROM new_tickets n
    CROSS JOIN LATERAL (SELECT p.usage_limit FROM payment_codes p
                        WHERE p.code = n.payment_code LIMIT 1) p
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
