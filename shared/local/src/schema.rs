//! The tables of the local database, as numbered migrations tracked in `PRAGMA
//! user_version`. A migration is applied once, in the same transaction as the version bump;
//! never edit one that has shipped, add the next.
//!
//! - `requests`, `messages`, `calls`: request state and conversations ([`SqliteStore`]).
//!   `requests.body` is the whole record as JSON; `owner`, `phase`, `version`,
//!   `created_at_ms` and `active` are copies of its fields for conditions and queries.
//! - `api_keys`, `projects`, `usage`: platform records ([`SqliteRecords`]).
//! - `oauth_clients`, `oauth_grants`: the OAuth authorization server's state (also
//!   [`SqliteRecords`]).
//!
//! [`SqliteStore`]: crate::SqliteStore
//! [`SqliteRecords`]: crate::SqliteRecords

/// Migration `n` (1-based) brings the schema from version `n - 1` to `n`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: request state and conversations.
    r#"
    CREATE TABLE requests (
        id            TEXT    PRIMARY KEY NOT NULL,
        owner         TEXT    NOT NULL,
        phase         TEXT    NOT NULL,
        version       INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        active        INTEGER NOT NULL,
        body          TEXT    NOT NULL
    );
    CREATE INDEX requests_by_owner ON requests (owner, created_at_ms DESC);
    CREATE INDEX requests_active ON requests (active) WHERE active = 1;

    CREATE TABLE messages (
        request_id TEXT    NOT NULL,
        idx        INTEGER NOT NULL,
        body       TEXT    NOT NULL,
        PRIMARY KEY (request_id, idx)
    ) WITHOUT ROWID;

    CREATE TABLE calls (
        request_id TEXT    NOT NULL,
        iteration  INTEGER NOT NULL,
        body       TEXT    NOT NULL,
        PRIMARY KEY (request_id, iteration)
    ) WITHOUT ROWID;
    "#,
    // 2: platform records.
    r#"
    CREATE TABLE api_keys (
        id            TEXT    PRIMARY KEY NOT NULL,
        user_id       TEXT    NOT NULL,
        prefix        TEXT    NOT NULL,
        key_sha256    TEXT    NOT NULL UNIQUE,
        label         TEXT    NOT NULL,
        created_at_ms INTEGER NOT NULL,
        revoked_at_ms INTEGER
    );
    CREATE INDEX api_keys_by_user ON api_keys (user_id, created_at_ms);

    CREATE TABLE projects (
        id            TEXT    PRIMARY KEY NOT NULL,
        owner         TEXT    NOT NULL,
        created_at_ms INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        body          TEXT    NOT NULL
    );
    CREATE INDEX projects_by_owner ON projects (owner, created_at_ms);

    CREATE TABLE usage (
        request_id        TEXT    NOT NULL,
        iteration         INTEGER NOT NULL,
        owner             TEXT    NOT NULL,
        project           TEXT    NOT NULL,
        model             TEXT    NOT NULL,
        input_tokens      INTEGER NOT NULL,
        output_tokens     INTEGER NOT NULL,
        cache_write_tokens INTEGER NOT NULL,
        cache_read_tokens INTEGER NOT NULL,
        cost_micros       INTEGER NOT NULL,
        latency_ms        INTEGER NOT NULL,
        stop_reason       TEXT    NOT NULL,
        recorded_at_ms    INTEGER NOT NULL,
        PRIMARY KEY (request_id, iteration)
    ) WITHOUT ROWID;
    CREATE INDEX usage_by_owner ON usage (owner);
    "#,
    // 3: per-user concurrent-request slots.
    r#"
    CREATE TABLE slots (
        owner  TEXT    PRIMARY KEY NOT NULL,
        active INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 4: a user's running requests (admission), without reading their finished ones.
    r#"
    CREATE INDEX requests_running_by_owner ON requests (owner, created_at_ms DESC)
        WHERE active = 1;
    "#,
    // 5: the OAuth authorization server's clients and grants (codes, access and refresh
    // tokens by SHA-256); `body` is the record as JSON, the other columns copies of its
    // fields (`used_at_ms`, `revoked_at_ms` are authoritative).
    r#"
    CREATE TABLE oauth_clients (
        client_id TEXT PRIMARY KEY NOT NULL,
        body      TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE oauth_grants (
        hash          TEXT    PRIMARY KEY NOT NULL,
        family        TEXT    NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        used_at_ms    INTEGER,
        revoked_at_ms INTEGER,
        body          TEXT    NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX oauth_grants_by_family ON oauth_grants (family);
    "#,
];
