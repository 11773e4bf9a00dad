-- Platform records: API keys, projects and the usage ledger.
-- Applied by tb-postgres (PgPlatformRecords::connect). Never edit an applied migration:
-- add the next numbered file instead.

-- API keys, stored as SHA-256 of the key (never the key). `prefix` is the first 12
-- characters, shown in listings.
CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    user_id     text NOT NULL,
    prefix      text NOT NULL,
    label       text NOT NULL,
    key_hash    bytea NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_user_id_idx ON api_keys (user_id, created_at);

-- Projects as users see them. The owner never changes.
CREATE TABLE projects (
    id                text PRIMARY KEY,
    owner_id          text NOT NULL,
    name              text NOT NULL,
    repo_url          text,
    deploy_url        text,
    database_name     text,
    deployed_version  text,
    previous_version  text,
    last_request_id   text,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);
CREATE INDEX projects_owner_id_idx ON projects (owner_id, created_at);

-- One row per model call; (request_id, iteration) makes writing twice a no-op.
CREATE TABLE usage_ledger (
    request_id          text NOT NULL,
    iteration           bigint NOT NULL CHECK (iteration >= 0),
    user_id             text NOT NULL,
    project_id          text NOT NULL,
    model               text NOT NULL,
    input_tokens        bigint NOT NULL CHECK (input_tokens >= 0),
    output_tokens       bigint NOT NULL CHECK (output_tokens >= 0),
    cache_write_tokens  bigint NOT NULL CHECK (cache_write_tokens >= 0),
    cache_read_tokens   bigint NOT NULL CHECK (cache_read_tokens >= 0),
    cost_micro_usd      bigint NOT NULL,
    latency_ms          bigint NOT NULL CHECK (latency_ms >= 0),
    stop_reason         text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, iteration)
);
CREATE INDEX usage_ledger_user_id_idx ON usage_ledger (user_id);
CREATE INDEX usage_ledger_project_id_idx ON usage_ledger (project_id);
