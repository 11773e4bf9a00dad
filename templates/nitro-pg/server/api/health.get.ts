// GET /api/health: the platform's health check, called before a deployment is live. With a
// database configured it also runs one query, so a wrong URL, password or TLS setting fails
// the deployment instead of the first real request.
export default defineEventHandler(async (event) => {
  if (!hasDatabase()) return { status: "ok", database: "not configured" };
  try {
    await db().query("SELECT 1");
    return { status: "ok", database: "ok" };
  } catch (e: any) {
    console.error("health: database:", e?.code, e?.message);
    setResponseStatus(event, 503);
    return { status: "error", database: "unreachable", code: e?.code ?? null };
  }
});
