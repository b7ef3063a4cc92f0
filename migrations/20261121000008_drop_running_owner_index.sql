-- Lease renewal and completion find their rows by id (the primary key) and only check the
-- owner; nothing selects by owner alone. The owner index only tempted the planner into
-- scanning every row an owner holds for each completion batch (slow once a process holds
-- thousands of jobs), and cost an index update on every claim and completion.
DROP INDEX IF EXISTS jobs_running_owner_idx;
