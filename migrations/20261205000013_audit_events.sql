-- The audit trail: who did what to which subject, and when. Each row is written in the
-- transaction of the change it records (see docs/audit-trail.md), and no row is ever changed
-- or removed: the database refuses UPDATE, DELETE and TRUNCATE on it, whoever asks.
CREATE TABLE audit_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    -- `cli:<os user>`, `api:admin`, `console:admin`, `worker`, `system`.
    actor        text NOT NULL,
    -- `<subject>.<verb>`: `ticket.issued`, `transfer.failed`, `job.retried`, …
    action       text NOT NULL,
    -- What was acted on: `ticket`, `transfer` (by ticket id), `cycle`, `job`, `queue`.
    subject_type text NOT NULL,
    subject_id   text NOT NULL,
    data         jsonb NOT NULL DEFAULT '{}'
);

-- One subject's trail, newest first (keyset on id).
CREATE INDEX audit_events_subject_idx ON audit_events (subject_type, subject_id, id DESC);
-- The whole trail newest first is the primary key read backwards.

CREATE FUNCTION refuse_changing_audit_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'The audit trail is never changed or removed; record a new event instead.';
END;
$$;

-- Statement-level: refused even when no row matches, and before any row is looked at.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_changing_audit_events();
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_changing_audit_events();
-- Row triggers do not fire on TRUNCATE; a statement trigger does (also through a CASCADE).
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_changing_audit_events();

-- The trail as people read it: newest first.
CREATE VIEW audit_log AS
SELECT id, at, actor, action, subject_type, subject_id, data
FROM audit_events
ORDER BY id DESC;
