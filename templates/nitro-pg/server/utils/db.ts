// The database: one connection pool per process, from DATABASE_URL.
//
// TLS follows the `sslmode` of DATABASE_URL with libpq's meaning, as the platform's migrator
// does: absent or `disable`: no TLS; `allow`, `prefer` or `require`: TLS, the certificate not
// verified (this is what works with managed Postgres such as RDS, whose certificates come from
// the provider's own CA); `verify-ca`: TLS, the certificate checked against Node's trusted
// CAs; `verify-full`: that and the host name too. node-postgres alone reads `sslmode=require`
// as verify-full, which refuses such certificates, so the mode is taken out of the URL here
// and the TLS options are given explicitly (the URL's own would override them).
import pg from "pg";

let pool: pg.Pool | undefined;

/** Whether a database is configured (DATABASE_URL is set). */
export function hasDatabase(): boolean {
  return Boolean(process.env.DATABASE_URL);
}

/** The pool. Throws a 503 when no database is configured. */
export function db(): pg.Pool {
  const url = process.env.DATABASE_URL;
  if (!url) {
    throw createError({ statusCode: 503, statusMessage: "no database is configured (DATABASE_URL)" });
  }
  if (!pool) {
    const { connectionString, ssl } = tlsPolicy(url);
    pool = new pg.Pool({ connectionString, ssl, max: 5, connectionTimeoutMillis: 10_000 });
    // An idle connection that drops (a database restart) must not crash the server.
    pool.on("error", (e) => console.error("database pool:", e.message));
  }
  return pool;
}

/** The URL without its TLS parameters, and the TLS options its `sslmode` stands for. */
export function tlsPolicy(url: string): { connectionString: string; ssl: false | { rejectUnauthorized: boolean; checkServerIdentity?: () => undefined } } {
  const parsed = new URL(url);
  const mode = parsed.searchParams.get("sslmode") ?? "disable";
  for (const p of ["sslmode", "ssl", "uselibpqcompat"]) parsed.searchParams.delete(p);
  const connectionString = parsed.toString();
  switch (mode) {
    case "disable":
      return { connectionString, ssl: false };
    case "allow":
    case "prefer":
    case "require":
      return { connectionString, ssl: { rejectUnauthorized: false } };
    case "verify-ca":
      return { connectionString, ssl: { rejectUnauthorized: true, checkServerIdentity: () => undefined } };
    case "verify-full":
      return { connectionString, ssl: { rejectUnauthorized: true } };
    default:
      throw new Error(`DATABASE_URL has an unknown sslmode "${mode}"`);
  }
}

/**
 * Turns a Postgres error into the HTTP error a client should see; anything unexpected
 * becomes a 500 without the SQL error text. Use as `catch (e) { throw dbError(e) }`.
 */
export function dbError(e: unknown): Error {
  const err = e as { code?: string; statusCode?: number; detail?: string };
  if (err?.statusCode) return e as Error; // already an HTTP error
  switch (err?.code) {
    case "23505":
      return createError({ statusCode: 409, statusMessage: "already exists", data: { detail: err.detail } });
    case "23503":
      return createError({ statusCode: 409, statusMessage: "a referenced row does not exist or is still referenced", data: { detail: err.detail } });
    case "23502":
    case "23514":
    case "22P02":
    case "22001":
    case "22003":
    case "22007":
    case "22008":
      return createError({ statusCode: 400, statusMessage: "invalid input" });
    case "40001":
    case "40P01":
    case "55P03":
      return createError({ statusCode: 409, statusMessage: "conflict with a concurrent change; try again" });
    case "57P01":
    case "57P03":
    case "53300":
    case "08000":
    case "08003":
    case "08006":
    case "ECONNREFUSED":
    case "ETIMEDOUT":
      return createError({ statusCode: 503, statusMessage: "the database is unavailable" });
    default:
      console.error("database error:", err?.code, (e as Error)?.message);
      return createError({ statusCode: 500, statusMessage: "internal error" });
  }
}
