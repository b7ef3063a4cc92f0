-- Per-cycle counters of contributions by status: `pending` (the fan-out adds each contribution
-- it creates) and `overdue` (the contribution-deadlines job moves pending ones past their due
-- date here, in the same transaction as their status change).
ALTER TABLE contribution_cycles
    ADD COLUMN pending bigint NOT NULL DEFAULT 0 CHECK (pending >= 0),
    ADD COLUMN overdue bigint NOT NULL DEFAULT 0 CHECK (overdue >= 0);

UPDATE contribution_cycles c
SET pending = s.pending, overdue = s.overdue
FROM (
    SELECT cycle_id,
           count(*) FILTER (WHERE status = 'Pending') AS pending,
           count(*) FILTER (WHERE status = 'Overdue') AS overdue
    FROM member_contributions
    GROUP BY cycle_id
) s
WHERE s.cycle_id = c.id;


-- No index for the deadlines job: a cycle's contributions share its due date, so it finds the
-- cycles past their deadline with pending > 0 and walks their contributions by primary key.
