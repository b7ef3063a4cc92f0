-- An outbox row holds the events one statement wrote (docs/outbox-events.md): a ticket
-- batch's `ticket.issued` events, the `transfer.completed` events of one batch of answers, or
-- a single event. The hot paths then write one row per batch, not one per event, and the
-- relay marks one row per batch.
--
-- A row carries its events one of two ways, and `size` says how many:
-- - `data`: a JSON array, one element per event (that event's `data` object);
-- - `subject_ids`: the rows the events are about, each event's data built from its row when
--   it is read (`ticket.issued`: tickets.id, data by poda_ticket_issued_data). A ticket batch
--   writes its ids only, so its statement builds no JSON per ticket; tickets are never
--   changed after they are issued, so every read builds the same data.
-- Event i (0-based) of row n is `evt_<n>_<i>` to its receivers. What an event is about is in
-- its data (ticket_id, cycle_id), so `subject_id` goes. Existing rows become one-event rows.

ALTER TABLE outbox_events ADD COLUMN size int NOT NULL DEFAULT 1;
ALTER TABLE outbox_events ADD COLUMN subject_ids bigint[];
UPDATE outbox_events SET data = jsonb_build_array(data);
ALTER TABLE outbox_events DROP COLUMN subject_id;
ALTER TABLE outbox_events ALTER COLUMN size DROP DEFAULT;
ALTER TABLE outbox_events ALTER COLUMN data DROP NOT NULL;
ALTER TABLE outbox_events ADD CONSTRAINT outbox_events_holds_its_events CHECK (
    size > 0 AND CASE
        WHEN subject_ids IS NULL THEN jsonb_typeof(data) = 'array' AND size = jsonb_array_length(data)
        ELSE data IS NULL AND size = cardinality(subject_ids)
    END);

-- The `data` of a `ticket.issued` event: money as {"currency","value"} in minor units.
CREATE FUNCTION poda_ticket_issued_data(t tickets) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT jsonb_build_object(
        'ticket_id', t.id, 'payment_id', t.payment_id,
        'company_id', t.company_id, 'route_id', t.route_id,
        'amount', jsonb_build_object('currency', t.currency, 'value', t.amount_minor),
        'commission', jsonb_build_object('currency', t.currency, 'value', t.commission_minor))
$$;

-- What became of event `seq` of a row at one receiver.
ALTER TABLE outbox_deliveries ADD COLUMN seq int NOT NULL DEFAULT 0;
ALTER TABLE outbox_deliveries ALTER COLUMN seq DROP DEFAULT;
ALTER TABLE outbox_deliveries DROP CONSTRAINT outbox_deliveries_pkey;
ALTER TABLE outbox_deliveries ADD PRIMARY KEY (event_id, seq, url);

-- One line per event: the public id its receivers see, its type, time and data. Delivery
-- reads it by row_id (each branch by the primary key of outbox_events).
CREATE VIEW outbox_event_list AS
SELECT o.id AS row_id,
       (e.ord - 1)::int AS seq,
       'evt_' || o.id || '_' || (e.ord - 1) AS event_id,
       o.type,
       o.created_at,
       o.relayed_at,
       e.data
FROM outbox_events o
CROSS JOIN LATERAL jsonb_array_elements(o.data) WITH ORDINALITY AS e(data, ord)
WHERE o.subject_ids IS NULL
UNION ALL
SELECT o.id,
       (s.ord - 1)::int,
       'evt_' || o.id || '_' || (s.ord - 1),
       o.type,
       o.created_at,
       o.relayed_at,
       CASE o.type WHEN 'ticket.issued' THEN poda_ticket_issued_data(t) END
FROM outbox_events o
CROSS JOIN LATERAL unnest(o.subject_ids) WITH ORDINALITY AS s(id, ord)
LEFT JOIN tickets t ON o.type = 'ticket.issued' AND t.id = s.id
WHERE o.subject_ids IS NOT NULL;
