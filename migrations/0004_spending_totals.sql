-- What each user has spent in all: the sum of their usage_ledger rows, kept in step by the
-- same statement as every ledger write (only rows actually inserted are added), so the
-- spending check at admission reads one row however long a user's history is.
-- Applied by tb-postgres after 0002. Never edit an applied migration.
CREATE TABLE user_spending (
    user_id          text PRIMARY KEY,
    spent_micro_usd  bigint NOT NULL DEFAULT 0
);
-- The totals of the ledger as it stands. The table lock keeps a ledger write from landing
-- between the sum and the end of this migration's transaction.
LOCK TABLE usage_ledger IN SHARE MODE;
INSERT INTO user_spending (user_id, spent_micro_usd)
SELECT user_id, SUM(cost_micro_usd)::bigint FROM usage_ledger GROUP BY user_id;
