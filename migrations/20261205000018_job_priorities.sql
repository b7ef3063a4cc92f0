-- Job priorities: 0 is the most urgent, 3 the least; 1 by default.
--
-- Claims take the most urgent runnable jobs first, FIFO (run_at, id) within a priority. The
-- claim index leads with the priority after the queue, so each priority is one tight range
-- scan (queue, priority, run_at <= now); the claims read one range per priority in turn
-- (docs/priorities.md). Like the index it replaces it holds runnable rows only
-- (docs/hot-indexes.md).

ALTER TABLE jobs
    ADD COLUMN priority smallint NOT NULL DEFAULT 1
        CONSTRAINT jobs_priority_range CHECK (priority BETWEEN 0 AND 3);

DROP INDEX jobs_claim_idx;
CREATE INDEX jobs_claim_idx ON jobs (queue, priority, run_at, id) WHERE state = 'available';
