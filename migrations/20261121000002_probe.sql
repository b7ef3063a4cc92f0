-- The probe job kind: a diagnostic job for demos, benchmarks and process tests. Each run of a
-- probe that asks to be recorded leaves one row here, so "each effect exactly once" can be
-- counted from the database.
CREATE TABLE probe_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      bigint      NOT NULL,
    n           bigint      NOT NULL,
    attempt     integer     NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX probe_runs_job_idx ON probe_runs (job_id);
