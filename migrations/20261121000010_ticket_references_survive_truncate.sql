-- Companies, routes and payment codes are kept (20261121000009) against TRUNCATE as well:
-- row triggers do not fire on it, and with the tickets' row-level foreign keys gone nothing
-- else would stop `TRUNCATE payment_codes` (or a CASCADE from companies) from leaving tickets
-- that refer to nothing. Statement-level TRUNCATE triggers also fire on tables a CASCADE
-- reaches.
CREATE TRIGGER companies_are_kept_on_truncate BEFORE TRUNCATE ON companies
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_removing_ticket_references();
CREATE TRIGGER routes_are_kept_on_truncate BEFORE TRUNCATE ON routes
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_removing_ticket_references();
CREATE TRIGGER payment_codes_are_kept_on_truncate BEFORE TRUNCATE ON payment_codes
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_removing_ticket_references();
