-- Every Monime webhook the enqueuer accepted (signature valid, body well-formed), once per
-- event id. A redelivered event finds its row here and gets the first delivery's job id.
-- The row and its ticket job are written in the same transaction, so an event recorded here
-- with a job_id always has that job.
CREATE TABLE webhook_events (
    event_id     text        PRIMARY KEY,
    event_name   text        NOT NULL,
    -- Monime's payment id for payment events (data.id); NULL for events without one.
    payment_id   text,
    -- The ticket job this event enqueued (or found by its payment id); NULL for ignored events.
    job_id       bigint,
    -- The raw body as Monime sent it, for audit and replays.
    payload      jsonb       NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_payment_idx ON webhook_events (payment_id) WHERE payment_id IS NOT NULL;
CREATE INDEX webhook_events_received_idx ON webhook_events (received_at);
