-- Duties that run on one replica at a time (maintenance) are led through a lease row: the
-- holder renews it, and once it expires any replica may take it. A row rather than a session
-- advisory lock, so leadership works through a pooler in transaction mode, and operators can
-- see who leads:  SELECT * FROM job_leaders;
CREATE TABLE job_leaders (
    duty        text PRIMARY KEY,
    -- The engine owner id of the leading process (as in jobs.lease_owner and its logs).
    holder      uuid NOT NULL,
    -- host:pid of the leading process, for operators.
    holder_name text NOT NULL,
    expires_at  timestamptz NOT NULL,
    since       timestamptz NOT NULL DEFAULT now()
);
