-- Indexes the ticket flow and its dashboards need beyond the domain schema.
--
-- The batch writer (jobs/src/ticket/issue.rs) reads companies, routes and payment codes by
-- primary key and tickets by their unique payment_id, all of which exist. What was missing:

-- Platform-wide dashboards ("tickets issued in the last hour", daily sales) range over
-- created_at without a company or route. Tickets are appended in time order, so a BRIN index
-- answers those ranges at almost no cost to the batch inserts (a btree would be one more
-- index to maintain per ticket on the hot path).
CREATE INDEX tickets_created_brin_idx ON tickets USING brin (created_at);

-- payment_codes.route_id references routes: without an index, changing or deleting a route
-- scans every code, and "codes of this route" on the dashboard does the same.
CREATE INDEX payment_codes_route_idx ON payment_codes (route_id) WHERE route_id IS NOT NULL;
