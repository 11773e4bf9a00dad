-- Users, request summaries, deployments and project databases.
-- Applied by tb-postgres (PgPlatformRecords::connect) after 0001. Never edit an applied
-- migration: add the next numbered file instead.

-- Users of the platform. API keys, projects and ledger rows name them by id.
-- `spending_cap_micro_usd`: the most the user may spend in all; NULL = no cap of their own.
CREATE TABLE users (
    id                      text PRIMARY KEY,
    created_at              timestamptz NOT NULL DEFAULT now(),
    spending_cap_micro_usd  bigint CHECK (spending_cap_micro_usd >= 0)
);

-- One summary row per request, for reporting (the request's state itself lives in the
-- state store). `phase` is the request's phase as the API names it (`succeeded`, ...).
CREATE TABLE requests (
    id              text PRIMARY KEY,
    user_id         text NOT NULL,
    project_id      text NOT NULL,
    key_id          text,
    description     text NOT NULL,
    phase           text NOT NULL,
    cost_micro_usd  bigint NOT NULL DEFAULT 0 CHECK (cost_micro_usd >= 0),
    created_at      timestamptz NOT NULL,
    finished_at     timestamptz
);
-- A user's requests, newest first; a project's history; what a key was used for.
CREATE INDEX requests_user_id_idx ON requests (user_id, created_at DESC);
CREATE INDEX requests_project_id_idx ON requests (project_id, created_at DESC);
CREATE INDEX requests_key_id_idx ON requests (key_id) WHERE key_id IS NOT NULL;

-- Every version a project was deployed at (an image digest, or a local path): the
-- rollback targets. Written with the project record when its deployed version changes.
CREATE TABLE deployments (
    project_id  text NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    version     text NOT NULL,
    url         text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, version)
);
-- A project's deployments, newest first.
CREATE INDEX deployments_project_id_created_at_idx ON deployments (project_id, created_at DESC);

-- The production database of a project: its name and role on the cluster, never its URL
-- or password (those are rotated on every deploy and handed only to the deployment).
CREATE TABLE project_databases (
    project_id     text PRIMARY KEY,
    database_name  text NOT NULL UNIQUE,
    role_name      text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
