-- The console lists failed and cancelled jobs newest first (keyset by id). Both states are
-- rare, so without this index such a page walks the primary key backwards past every completed
-- job; with it, a page is a short backward scan whatever the table's size. Only failed and
-- cancelled rows enter the index, so the claim and completion paths do not pay for it.
CREATE INDEX jobs_failed_or_cancelled_idx ON jobs (id) WHERE state IN ('failed', 'cancelled');
