-- The transactional outbox (docs/outbox-events.md): events for outside receivers, written in
-- the transaction of the change that caused them, delivered later by the `events` queue.
--
-- The event's public id is `evt_<id>`: stable across every delivery and retry, so a receiver
-- dedupes on it. The body a receiver gets is built from the row alone (id, type, created_at,
-- data), so every delivery of one event carries the same bytes.
CREATE TABLE outbox_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- `ticket.issued`, `transfer.completed`, `transfer.failed`, `cycle.activated`.
    type        text NOT NULL,
    -- What the event is about: the ticket id (tickets, transfers) or the cycle id.
    subject_id  text NOT NULL,
    -- The event's `data` object; money as {"currency", "value"} in minor units.
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- When the relay turned the event into delivery jobs (one per configured URL); NULL:
    -- not yet.
    relayed_at  timestamptz
);

-- The relay's work list: events not yet relayed, oldest first. Small: rows leave it within a
-- relay pass of being committed.
CREATE INDEX outbox_events_unrelayed_idx ON outbox_events (id) WHERE relayed_at IS NULL;

-- What became of an event at one receiver, when it is worth remembering: refused for good
-- (`failed`: a 4xx other than 408/429, kept for review), or delivered by a run that still had
-- other events to retry (`delivered`: the retry skips it). A delivery job whose every event
-- was accepted at once writes nothing here; its completed job is the record.
CREATE TABLE outbox_deliveries (
    event_id    bigint NOT NULL REFERENCES outbox_events (id),
    url         text NOT NULL,
    state       text NOT NULL CHECK (state IN ('delivered', 'failed')),
    -- The receiver's HTTP status.
    status      smallint,
    detail      text,
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, url)
);
