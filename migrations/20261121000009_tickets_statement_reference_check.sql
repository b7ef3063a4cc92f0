-- Tickets check their references once per statement instead of once per row.
--
-- A row-level foreign key runs one lookup per ticket and takes a KEY SHARE lock on its
-- company and route rows. Every concurrent ticket batch locks the same few parent rows, so
-- each lock becomes a MultiXact (an SLRU write and a heap update of the parent) and the
-- checks alone took about half of the insert's time under load.
--
-- Instead:
-- * companies, routes and payment codes are never deleted and never re-keyed (deactivate a
--   company or route with `active = false`, a code with status `disabled`), so a reference
--   that was valid when a ticket was written stays valid without a lock;
-- * one statement-level trigger checks all the rows an INSERT wrote with a single anti-join
--   and refuses the statement with foreign_key_violation (23503), as the foreign key did.
ALTER TABLE tickets DROP CONSTRAINT tickets_company_id_fkey,
                    DROP CONSTRAINT tickets_route_id_fkey,
                    DROP CONSTRAINT tickets_payment_code_fkey;

CREATE FUNCTION tickets_check_references() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.payment_id, n.company_id, n.route_id, n.payment_code INTO bad
    FROM new_tickets n
    WHERE NOT EXISTS (SELECT 1 FROM companies c WHERE c.id = n.company_id)
       OR NOT EXISTS (SELECT 1 FROM routes r WHERE r.id = n.route_id)
       OR (n.payment_code IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM payment_codes p WHERE p.code = n.payment_code))
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ticket for payment % refers to a company, route or payment code that does not exist (company %, route %, payment code %)',
            bad.payment_id, bad.company_id, bad.route_id, coalesce(bad.payment_code, 'none')
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tickets_references_exist
    AFTER INSERT ON tickets
    REFERENCING NEW TABLE AS new_tickets
    FOR EACH STATEMENT EXECUTE FUNCTION tickets_check_references();

-- Updates that move a ticket to another company, route or code are checked the same way.
CREATE TRIGGER tickets_references_exist_on_update
    AFTER UPDATE ON tickets
    REFERENCING NEW TABLE AS new_tickets
    FOR EACH STATEMENT EXECUTE FUNCTION tickets_check_references();

CREATE FUNCTION refuse_removing_ticket_references() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never deleted or re-keyed: tickets may refer to them (deactivate instead)', TG_TABLE_NAME
        USING ERRCODE = 'foreign_key_violation';
END
$$;

CREATE TRIGGER companies_are_kept BEFORE DELETE OR UPDATE OF id ON companies
    FOR EACH ROW EXECUTE FUNCTION refuse_removing_ticket_references();
CREATE TRIGGER routes_are_kept BEFORE DELETE OR UPDATE OF id ON routes
    FOR EACH ROW EXECUTE FUNCTION refuse_removing_ticket_references();
CREATE TRIGGER payment_codes_are_kept BEFORE DELETE OR UPDATE OF code ON payment_codes
    FOR EACH ROW EXECUTE FUNCTION refuse_removing_ticket_references();
