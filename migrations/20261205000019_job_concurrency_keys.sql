-- Concurrency keys: a job may name a key (a job kind sets it at enqueue, e.g. the commission
-- transfers the transport company's id), and a queue's claims may cap how many jobs of one key
-- run at once (docs/per-company-limit.md). The claim counts the running jobs of each key on
-- this index, which holds running keyed rows only.

ALTER TABLE jobs ADD COLUMN concurrency_key text;

CREATE INDEX jobs_running_key_idx ON jobs (queue, concurrency_key)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;
