-- deadlines_chunk: mark the next chunk of one cycle's Pending contributions that are past
-- their due date Overdue, and move them from the cycle's `pending` counter to its `overdue`
-- counter, in one statement (one transaction).
-- $1 cycle id, $2 member id cursor (exclusive), $3 today (UTC date), $4 chunk size (rows).
-- Index: member_contributions_pkey (cycle_id, member_id), a keyset range scan from the cursor.
-- The status is checked again in the UPDATE, so two overlapping runs count each row once.
-- Returns the contributions changed and the last member id of the chunk (NULL: none left).
WITH batch AS (
    SELECT member_id
    FROM member_contributions
    WHERE cycle_id = $1 AND member_id > $2 AND status = 'Pending' AND due_date < $3
    ORDER BY member_id
    LIMIT $4
    FOR UPDATE
),
changed AS (
    UPDATE member_contributions mc
    SET status = 'Overdue', updated_at = now()
    FROM batch b
    WHERE mc.cycle_id = $1 AND mc.member_id = b.member_id AND mc.status = 'Pending'
    RETURNING mc.cycle_id
),
counted AS (
    UPDATE contribution_cycles c
    SET pending = c.pending - n.n, overdue = c.overdue + n.n, updated_at = now()
    FROM (SELECT cycle_id, count(*) AS n FROM changed GROUP BY cycle_id) n
    WHERE c.id = n.cycle_id
    RETURNING c.id
)
SELECT (SELECT count(*) FROM changed) AS "changed!",
       (SELECT max(member_id) FROM batch) AS last_member,
       (SELECT count(*) FROM counted) AS "cycles!"
