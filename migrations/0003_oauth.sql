-- The OAuth authorization server's state (remote MCP clients). Applied by tb-postgres after
-- 0002. Never edit an applied migration: add the next numbered file instead.

-- Clients registered dynamically (RFC 7591). `body` is the client record as JSON.
CREATE TABLE oauth_clients (
    client_id   text PRIMARY KEY,
    body        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Authorization codes, access and refresh tokens, by the SHA-256 (hex) of the value: the
-- value itself is never stored. `body` is the grant as JSON; `used_at` and `revoked_at` are
-- authoritative. Every grant descending from one authorization shares a `family`, revoked
-- together.
CREATE TABLE oauth_grants (
    hash        text PRIMARY KEY,
    family      text NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz,
    body        jsonb NOT NULL
);
CREATE INDEX oauth_grants_family_idx ON oauth_grants (family);
-- For purging expired grants.
CREATE INDEX oauth_grants_expires_at_idx ON oauth_grants (expires_at);
