-- A probe run that learns its job was cancelled while it ran notes when, so tests can check
-- that the handler itself saw the signal (and how soon).
ALTER TABLE probe_runs ADD COLUMN cancel_observed_at timestamptz;
