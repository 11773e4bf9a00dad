//! The MCP endpoint: stateless Streamable HTTP with JSON responses, answering both protocol
//! eras (the `initialize` handshake of 2025-03-26 … 2025-11-25, and 2026-07-28's per-request
//! `_meta` with `server/discover`), on rmcp's [`StreamableHttpService`].
//!
//! rmcp is configured with no sessions (`legacy_session_mode = false`, never an
//! `Mcp-Session-Id`), JSON responses (`json_response = true`; the tools emit no notifications,
//! so no response falls back to SSE), and its own `Host` check off: [`crate::host::check`]
//! runs first, with [`FrontDoor::allowed_hosts`] and the domain the request was received at
//! (loopback only by default). rmcp validates `Accept`,
//! `Content-Type`, `MCP-Protocol-Version` and the 2026-07-28 `Mcp-Method` / `Mcp-Name`
//! headers against the body, answers notifications with 202, and maps modern errors to HTTP
//! statuses.
//!
//! In front of rmcp, [`serve`] answers everything but POST with 405, authenticates the
//! caller by API key or OAuth access token (401 with the RFC 9728 `resource_metadata`), refuses bodies over the limit (413) before parsing, and refuses bodies that
//! are not one JSON-RPC message with a JSON-RPC error (400: `-32700` parse error, `-32600`
//! batch or invalid request). The authenticated [`Caller`] is put in the HTTP request's
//! extensions; rmcp hands the request's `http::request::Parts` to handlers in
//! `RequestContext::extensions`, where the tool handlers read it back.
//!
//! Tool failures the model can act on (unknown or someone else's id, bad arguments, limits)
//! are tool results with `isError: true`, never JSON-RPC errors; only an unknown tool name is
//! a protocol error (`-32602`), as the specification asks.

use std::sync::{Arc, LazyLock};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::Full;
use rmcp::handler::server::tool::{schema_for_input, schema_for_output};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ClientJsonRpcMessage, ClientRequest,
    ContentBlock, Implementation, ListToolsResult, PaginatedRequestParams, ServerCapabilities,
    ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tb_core::domain::RequestId;
use tb_pipeline::RequestError;

use crate::FrontDoor;
use crate::auth::{self, Caller};
use crate::host::ReceivedAt;
use crate::limits::{self, CreateRequest, clip};
use crate::rest::read_body;
use crate::views::{
    self, ExecuteView, ProjectList, ProjectOperationView, ProjectView, StatusView, ViewError,
};

/// Told to clients on `initialize` and `server/discover`.
pub const INSTRUCTIONS: &str = "turbobackend builds and deploys backends (Nitro.js + Postgres) from a plain-language description. Call execute_request with a description; it returns a request_id at once. The work takes minutes: poll get_request_status with the request_id every 10-30 s until done is true, then report the deployment_url and repository_url. To change an existing backend, pass its project_id (see list_projects); rollback_project brings back its previous deployed version, and delete_project removes it (ask the user first).";

pub const TOOL_NAMES: [&str; 7] = [
    "execute_request",
    "get_request_status",
    "cancel_request",
    "list_projects",
    "get_project",
    "delete_project",
    "rollback_project",
];

/// Arguments of `execute_request`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteArgs {
    /// What to build or change, in plain words, e.g. "Create a simple API with a users endpoint" (at most 8000 characters).
    pub description: String,
    /// Change this existing project (from list_projects or an earlier execute_request) instead of starting a new one.
    #[serde(default)]
    pub project_id: Option<String>,
    /// Any string up to 200 characters: calling again with the same key returns the same request instead of starting another.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// An http(s) URL notified when the request finishes.
    #[serde(default)]
    pub callback_url: Option<String>,
}

/// Arguments of `get_request_status` and `cancel_request`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestArgs {
    /// The request_id returned by execute_request.
    pub request_id: String,
}

/// Arguments of `get_project`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectArgs {
    /// A project_id from list_projects or execute_request.
    pub project_id: String,
}

/// Arguments of `list_projects`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Also list deleted projects (default false: they are hidden).
    #[serde(default)]
    pub include_deleted: bool,
}

/// Arguments of `delete_project`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteArgs {
    /// The project to delete, from list_projects.
    pub project_id: String,
    /// The same project id again, to confirm: deletion cannot be undone.
    pub confirm: String,
}

/// Hints: (read-only, destructive, idempotent, open world).
type Hints = (bool, bool, bool, bool);

fn annotations(
    title: &str,
    (read_only, destructive, idempotent, open_world): Hints,
) -> ToolAnnotations {
    ToolAnnotations::with_title(title)
        .read_only(read_only)
        .destructive(destructive)
        .idempotent(idempotent)
        .open_world(open_world)
}

fn tool<I: JsonSchema + 'static, O: JsonSchema + 'static>(
    name: &'static str,
    title: &str,
    description: &'static str,
    hints: Hints,
) -> Tool {
    let input = schema_for_input::<I>().unwrap_or_else(|e| panic!("input schema of {name}: {e}"));
    Tool::new(name, description, standard_schema(&input))
        .with_title(title)
        .with_raw_output_schema(standard_schema(&schema_for_output::<O>()))
        .with_annotations(annotations(title, hints))
}

/// The formats JSON Schema 2020-12 defines (Validation, section 7.3:
/// <https://json-schema.org/draft/2020-12/json-schema-validation#section-7.3>).
const STANDARD_FORMATS: [&str; 19] = [
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// `schema` as standard JSON Schema: schemars describes Rust numbers with formats of its own
/// (`uint64`, `uint32`, `uint`, `int64`, `double`, ...) that strict validators in MCP clients
/// warn about, one warning per field at every connection. Every format JSON Schema does not
/// define is removed, in every subschema; an unsigned one keeps its meaning as `minimum: 0`.
fn standard_schema(schema: &Arc<rmcp::model::JsonObject>) -> Arc<rmcp::model::JsonObject> {
    use schemars::transform::{RecursiveTransform, Transform};
    let mut schema = schemars::Schema::from(schema.as_ref().clone());
    RecursiveTransform(|s: &mut schemars::Schema| {
        let Some(object) = s.as_object_mut() else {
            return;
        };
        let Some(format) = object.get("format").and_then(Value::as_str) else {
            return;
        };
        if STANDARD_FORMATS.contains(&format) {
            return;
        }
        if format.starts_with("uint") {
            object.entry("minimum").or_insert(json!(0));
        }
        object.remove("format");
    })
    .transform(&mut schema);
    match schema.to_value() {
        Value::Object(object) => Arc::new(object),
        other => unreachable!("an object schema stays an object: {other}"),
    }
}

/// The tools, with input and output schemas and annotations.
pub static TOOLS: LazyLock<Vec<Tool>> = LazyLock::new(|| {
    vec![
        tool::<ExecuteArgs, ExecuteView>(
            "execute_request",
            "Build or change a backend",
            "Starts building a backend (or changing one, with project_id) from a plain-language description: an agent writes a Nitro.js app with a Postgres database, then it is pushed to a git repository and deployed. Returns at once with a request_id; the work takes minutes, so poll get_request_status with the request_id every 10-30 s until done is true.",
            (false, false, false, true),
        ),
        tool::<RequestArgs, StatusView>(
            "get_request_status",
            "Get a request's status",
            "Reports a request's progress: phase, iteration, cost so far in USD, recent activity, and when finished the repository URL, the deployment URL and the database name, or the failed step and the reason. Poll every 10-30 s until done is true.",
            (true, false, true, false),
        ),
        tool::<RequestArgs, StatusView>(
            "cancel_request",
            "Cancel a request",
            "Asks a running request to stop; it stops at its next step and what was built so far is archived. Cancelling a finished request changes nothing. Returns the request's status.",
            (false, true, true, false),
        ),
        tool::<ListArgs, ProjectList>(
            "list_projects",
            "List your projects",
            "Lists your projects (most recently updated first) with their state, repository and deployment URLs. Deleted projects are hidden unless include_deleted is true. Pass a project_id to execute_request to change that project.",
            (true, false, true, false),
        ),
        tool::<ProjectArgs, ProjectView>(
            "get_project",
            "Get a project",
            "Shows one of your projects: state (live, deleting, deleted, ...), repository URL, deployment URL, database name, deployed and previous versions, its recent requests, its deletion or rollback in progress, and its history of deletions and rollbacks (who asked, when).",
            (true, false, true, false),
        ),
        tool::<DeleteArgs, ProjectOperationView>(
            "delete_project",
            "Delete a project",
            "Deletes one of your projects for good: stops and removes its running app (machines, IP addresses, the app), drops its database and role, archives its git repository (read-only; no code is lost) and removes its stored snapshots. Requests running on it are cancelled first. Cannot be undone: ask the user first, and pass confirm equal to project_id. Returns at once; poll get_project until its state is deleted. Deleting a deleted project does nothing and says so; deleting one whose deletion stopped retries it.",
            (false, true, true, true),
        ),
        tool::<ProjectArgs, ProjectOperationView>(
            "rollback_project",
            "Roll a project back",
            "Makes the previous deployed version of one of your projects current again (the app runs the previous build, health checked; deployed and previous versions swap). Fails with a reason when there is no previous version or a request is running on the project. Returns at once; poll get_project.",
            (false, true, false, true),
        ),
    ]
});

/// The MCP server handler: one per HTTP request (rmcp's service factory), stateless.
#[derive(Clone)]
pub struct McpTools {
    fd: Arc<FrontDoor>,
}

type ToolOutcome = Result<Value, String>;

fn parse_args<T: DeserializeOwned>(tool: &str, args: Value) -> Result<T, String> {
    serde_json::from_value(args).map_err(|e| {
        format!(
            "invalid arguments for {tool}: {}; see the tool's input schema",
            clip(&e.to_string(), 300)
        )
    })
}

fn to_value<T: serde::Serialize>(v: &T) -> ToolOutcome {
    serde_json::to_value(v).map_err(|e| format!("internal error: {e}"))
}

fn no_request(id: &str) -> String {
    format!(
        "no request {}: use a request_id returned by execute_request (your projects and their last requests are in list_projects)",
        clip(id, 80)
    )
}

fn request_error(id: &str, e: RequestError) -> String {
    match e {
        RequestError::NotFound(_) => no_request(id),
        RequestError::Invalid(m) => m,
        RequestError::Unavailable(m) => {
            tracing::warn!("pipeline unavailable: {m}");
            "temporarily unavailable; retry in a few seconds".into()
        }
    }
}

fn view_error(e: ViewError) -> String {
    match e {
        ViewError::NotFound(id) => format!("no project {id}: use a project_id from list_projects"),
        ViewError::Unavailable => "temporarily unavailable; retry in a few seconds".into(),
    }
}

impl McpTools {
    async fn execute(&self, caller: &Caller, args: Value) -> ToolOutcome {
        let a: ExecuteArgs = parse_args("execute_request", args)?;
        let req = CreateRequest {
            description: a.description,
            project_id: a.project_id,
            idempotency_key: a.idempotency_key,
            callback_url: a.callback_url,
        };
        match limits::admit(&self.fd, caller, req).await {
            Ok(accepted) => to_value(&ExecuteView::from(&accepted)),
            Err(refusal) => Err(refusal.message()),
        }
    }

    async fn status(&self, caller: &Caller, args: Value, cancel: bool) -> ToolOutcome {
        let tool = if cancel {
            "cancel_request"
        } else {
            "get_request_status"
        };
        let a: RequestArgs = parse_args(tool, args)?;
        let id = RequestId::parse(&a.request_id).map_err(|_| no_request(&a.request_id))?;
        let p = &self.fd.pipeline;
        let status = if cancel {
            p.cancel(&caller.user, &id).await
        } else {
            p.status(&caller.user, &id).await
        }
        .map_err(|e| request_error(&a.request_id, e))?;
        to_value(&StatusView::from(&status))
    }

    async fn list_projects(&self, caller: &Caller, args: Value) -> ToolOutcome {
        let a: ListArgs = parse_args("list_projects", args)?;
        let list = views::list_projects(&self.fd, &caller.user, a.include_deleted)
            .await
            .map_err(view_error)?;
        to_value(&list)
    }

    async fn get_project(&self, caller: &Caller, args: Value) -> ToolOutcome {
        let a: ProjectArgs = parse_args("get_project", args)?;
        let project = views::project(&self.fd, &caller.user, &a.project_id)
            .await
            .map_err(view_error)?;
        to_value(&project)
    }
}

impl McpTools {
    async fn delete_project(&self, caller: &Caller, args: Value) -> ToolOutcome {
        let a: DeleteArgs = parse_args("delete_project", args)?;
        let accepted = tb_pipeline::lifecycle::request_delete(
            &self.fd.pipeline,
            self.fd.records.as_ref(),
            &caller.user,
            &a.project_id,
            &a.confirm,
        )
        .await
        .map_err(|e| project_error(&a.project_id, e))?;
        to_value(&ProjectOperationView::from(&accepted))
    }

    async fn rollback_project(&self, caller: &Caller, args: Value) -> ToolOutcome {
        let a: ProjectArgs = parse_args("rollback_project", args)?;
        let accepted = tb_pipeline::lifecycle::request_rollback(
            &self.fd.pipeline,
            self.fd.records.as_ref(),
            &caller.user,
            &a.project_id,
        )
        .await
        .map_err(|e| project_error(&a.project_id, e))?;
        to_value(&ProjectOperationView::from(&accepted))
    }
}

fn project_error(id: &str, e: RequestError) -> String {
    match e {
        RequestError::NotFound(_) => view_error(ViewError::NotFound(clip(id, 80))),
        RequestError::Invalid(m) => m,
        RequestError::Unavailable(m) => {
            tracing::warn!("pipeline unavailable: {m}");
            "temporarily unavailable; retry in a few seconds".into()
        }
    }
}

/// The caller authenticated by [`serve`], from the HTTP parts rmcp passes to handlers.
fn caller_of(ctx: &RequestContext<RoleServer>) -> Option<Caller> {
    ctx.extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Caller>())
        .cloned()
}

impl ServerHandler for McpTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("turbobackend", env!("CARGO_PKG_VERSION"))
                    .with_title("turbobackend")
                    .with_description("Backends from a sentence: build, push and deploy"),
            )
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(TOOLS.clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        TOOLS.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let Some(caller) = caller_of(&context) else {
            // Unreachable through `serve`, which authenticates first.
            return Ok(CallToolResult::error(vec![ContentBlock::text(
                "not authenticated: send `Authorization: Bearer <key>`",
            )])
            .into());
        };
        let args = Value::Object(request.arguments.unwrap_or_default());
        let name = request.name.as_ref();
        tracing::info!(tool = name, user = %caller.user, "tool call");
        let outcome = match name {
            "execute_request" => self.execute(&caller, args).await,
            "get_request_status" => self.status(&caller, args, false).await,
            "cancel_request" => self.status(&caller, args, true).await,
            "list_projects" => self.list_projects(&caller, args).await,
            "get_project" => self.get_project(&caller, args).await,
            "delete_project" => self.delete_project(&caller, args).await,
            "rollback_project" => self.rollback_project(&caller, args).await,
            other => {
                return Err(ErrorData::invalid_params(
                    format!(
                        "unknown tool `{}`; the tools are {}",
                        clip(other, 80),
                        TOOL_NAMES.join(", ")
                    ),
                    None,
                ));
            }
        };
        Ok(match outcome {
            Ok(value) => CallToolResult::structured(value),
            Err(message) => CallToolResult::error(vec![ContentBlock::text(message)]),
        }
        .into())
    }
}

/// The rmcp service configured for this front door.
pub type McpService = StreamableHttpService<McpTools, NeverSessionManager>;

/// The MCP endpoint's state: the front door and its rmcp service.
#[derive(Clone)]
pub struct McpEndpoint {
    fd: Arc<FrontDoor>,
    service: McpService,
}

impl McpEndpoint {
    pub fn new(fd: Arc<FrontDoor>) -> Self {
        let config = StreamableHttpServerConfig::default()
            .with_legacy_session_mode(false)
            .with_json_response(true)
            .with_sse_keep_alive(None)
            .with_sse_retry(None)
            // The Host is checked by `host::check` before this service sees a request: it
            // also accepts the domain the request was received at, which rmcp cannot know.
            .disable_allowed_hosts()
            .with_max_request_body_bytes(fd.limits.max_body_bytes);
        let tools = McpTools { fd: fd.clone() };
        let service = StreamableHttpService::new(
            move || Ok(tools.clone()),
            Arc::new(NeverSessionManager::default()),
            config,
        );
        McpEndpoint { fd, service }
    }
}

/// A JSON-RPC error response that answers no particular request (or `id` when known).
fn jsonrpc_error(status: StatusCode, id: Value, code: i64, message: impl Into<String>) -> Response {
    let body =
        json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}});
    (status, axum::Json(body)).into_response()
}

/// The methods this server answers (besides notifications), by era: 2026-07-28 has no
/// `initialize` and no `ping` (they are "method not found" there), legacy has no discovery.
const SERVED_LEGACY: [&str; 4] = ["initialize", "ping", "tools/list", "tools/call"];
const SERVED_MODERN: [&str; 3] = ["server/discover", "tools/list", "tools/call"];

/// The first protocol revision without the `initialize` handshake.
const MODERN: &str = "2026-07-28";

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const INVALID_PARAMS: i64 = -32602;

/// Refuses what is not exactly one JSON-RPC message, with the JSON-RPC error for it.
fn check_message(body: &[u8], modern_header: bool) -> Option<Response> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Some(jsonrpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                PARSE_ERROR,
                format!(
                    "Parse error: the body is not JSON ({})",
                    clip(&e.to_string(), 200)
                ),
            ));
        }
    };
    if value.is_array() {
        return Some(jsonrpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            INVALID_REQUEST,
            "Invalid Request: JSON-RPC batches are not supported; send one message per POST",
        ));
    }
    let id = match value.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    };
    let well_formed_request = value.get("jsonrpc") == Some(&json!("2.0"))
        && value.get("method").is_some_and(Value::is_string)
        && id != Value::Null;
    let method = value
        .get("method")
        .and_then(Value::as_str)
        .map(String::from);
    let modern = modern_header
        || value
            .pointer("/params/_meta/io.modelcontextprotocol~1protocolVersion")
            .is_some();
    let served: &[&str] = if modern {
        &SERVED_MODERN
    } else {
        &SERVED_LEGACY
    };
    match serde_json::from_value::<ClientJsonRpcMessage>(value) {
        // A method this server serves whose params did not parse falls through to a custom
        // request, which would be answered "method not found": say "invalid params".
        Ok(ClientJsonRpcMessage::Request(r))
            if matches!(r.request, ClientRequest::CustomRequest(_))
                && method.as_deref().is_some_and(|m| served.contains(&m)) =>
        {
            Some(jsonrpc_error(
                StatusCode::BAD_REQUEST,
                id,
                INVALID_PARAMS,
                format!(
                    "Invalid params for {}: see the MCP schema for this method",
                    method.unwrap_or_default()
                ),
            ))
        }
        Ok(_) => None,
        Err(e) => {
            let (code, what) = if well_formed_request {
                (INVALID_PARAMS, "Invalid params")
            } else {
                (INVALID_REQUEST, "Invalid Request")
            };
            Some(jsonrpc_error(
                StatusCode::BAD_REQUEST,
                id,
                code,
                format!("{what}: {}", clip(&e.to_string(), 300)),
            ))
        }
    }
}

fn is_json(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|e| e.trim().eq_ignore_ascii_case("application/json"))
        })
}

/// The caller of an MCP request: an OAuth access token (`tbat_…`) or an API key. A request
/// without credentials, or with a refused token, gets the 401 that points OAuth clients at
/// the protected resource metadata.
async fn authenticate(
    fd: &FrontDoor,
    headers: &axum::http::HeaderMap,
    uri: &axum::http::Uri,
    received_at: Option<&ReceivedAt>,
) -> Result<Caller, Response> {
    let origin =
        crate::oauth::origin(fd, headers, uri, received_at).map_err(crate::oauth::refused)?;
    match auth::presented_key(headers) {
        Ok(token) if token.starts_with(crate::oauth::ACCESS_PREFIX) => {
            match crate::oauth::check_access_token(fd, token, &origin).await {
                Ok(caller) => Ok(caller),
                Err(crate::oauth::TokenRefusal::Invalid(why)) => {
                    tracing::info!("MCP request refused: {why}");
                    Err(crate::oauth::unauthorized(&origin, why, true))
                }
                Err(crate::oauth::TokenRefusal::Unavailable) => {
                    Err(auth::AuthError::Unavailable.into_response())
                }
            }
        }
        Ok(_) => match auth::authenticate(fd.records.as_ref(), headers).await {
            Ok(c) => Ok(c),
            Err(auth::AuthError::Unavailable) => Err(auth::AuthError::Unavailable.into_response()),
            Err(e) => Err(crate::oauth::unauthorized(&origin, e.message(), false)),
        },
        Err(e) => Err(crate::oauth::unauthorized(&origin, e.message(), false)),
    }
}

/// `/mcp`: see the module documentation for the order of checks.
pub async fn serve(State(endpoint): State<McpEndpoint>, req: Request) -> Response {
    if req.method() != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, HeaderValue::from_static("POST"))],
            axum::Json(json!({
                "error": "method_not_allowed",
                "message": "this MCP endpoint is stateless and answers POST only (no SSE stream, no sessions)",
            })),
        )
            .into_response();
    }
    let fd = &endpoint.fd;
    if let Err(refusal) = crate::host::check(
        req.uri(),
        req.headers(),
        req.extensions().get::<ReceivedAt>(),
        &fd.allowed_hosts,
    ) {
        tracing::warn!(
            host = ?req.headers().get(header::HOST),
            "refused a request whose Host is not allowed (possible DNS rebinding)"
        );
        return (refusal.status(), refusal.message()).into_response();
    }
    let received_at = req.extensions().get::<ReceivedAt>().cloned();
    let caller = match authenticate(fd, req.headers(), req.uri(), received_at.as_ref()).await {
        Ok(c) => c,
        Err(response) => return response,
    };
    let json = is_json(&req);
    let modern = req
        .headers()
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() == MODERN.len() && v.starts_with("20") && v >= MODERN);
    let (mut parts, body) = req.into_parts();
    let bytes: Bytes = match read_body(&parts.headers, body, fd.limits.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return jsonrpc_error(e.status(), Value::Null, INVALID_REQUEST, e.message()),
    };
    // rmcp answers a wrong Content-Type (415) itself; check the body only when it is JSON.
    if json && let Some(response) = check_message(&bytes, modern) {
        return response;
    }
    parts.extensions.insert(caller);
    let request = axum::http::Request::from_parts(parts, Full::new(bytes));
    endpoint.service.handle(request).await.map(Body::new)
}
