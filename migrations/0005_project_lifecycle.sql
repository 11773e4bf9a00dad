-- A project's deletion and rollbacks, and its history of them (who asked, when), as the
-- JSON of `Lifecycle` (tb-core). Written only by `save_lifecycle`; `save_project` leaves
-- it alone. Never edit an applied migration: add the next numbered file instead.
ALTER TABLE projects ADD COLUMN lifecycle jsonb NOT NULL DEFAULT '{}'::jsonb;
