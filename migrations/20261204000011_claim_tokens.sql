-- Fencing tokens. Every claim of a job (and every run of a batch queue) takes the next
-- claim_token, which never goes down: not when a snooze or a release gives the attempt
-- back, not when an operator retries the job. So (id, claim_token) names one run for good,
-- and every write after a claim (completion, lease renewal, a batch's outcome) is fenced by
-- it: the late outcome of a run that was rescued, cancelled or superseded changes nothing,
-- even when the same process claims the job again at the same attempt number.
-- A constant default adds the column without rewriting the table.
ALTER TABLE jobs ADD COLUMN claim_token integer NOT NULL DEFAULT 0;
