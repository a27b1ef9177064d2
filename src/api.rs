//! ekko-api: the REST API, thin handlers over the catalog and the queue.
//!
//! One middleware does what keystonemiddleware and oslo.middleware do for a
//! Python service: a request id (`x-openstack-request-id`, keeping a valid
//! inbound global request id), microversion negotiation, authentication
//! (Keystone or the embedded default's `noauth`), and errors in the
//! API-SIG shape. Handlers receive a [`RequestContext`] and check policy
//! with [`RequestContext::authorize`]; a resource of another project is
//! answered 404, never 403, so its existence does not leak.
//!
//! * [`version`]: discovery documents, `OpenStack-API-Version`.
//! * [`bind`]: `noauth` listens on loopback only.
//! * [`error`]: the error body.
//! * [`backups`], [`restores`], [`instances`], [`policies`], [`quotas`]: the
//!   resources.
//! * [`health`]: `/healthcheck`, outside the versioned API.

pub mod backups;
pub mod bind;
pub mod error;
pub mod exports;
pub mod health;
pub mod instances;
pub mod paging;
pub mod policies;
pub mod quotas;
pub mod restores;
pub mod version;

use std::future::Future;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};

use crate::auth::{AuthError, Credentials, KeystoneAuth};
use crate::config::AuthStrategy;
use crate::policy::{Caller, Policy};
use crate::queue::valid_request_id;
use crate::Ekko;
use error::ApiError;
use version::Microversion;

/// The service type in the catalog, error codes and microversion headers
/// (`backup` is freezer's and `data-protection-orchestration` Karbor's).
pub const SERVICE_TYPE: &str = "instance-backup";

/// What every handler shares.
pub struct ApiState {
    pub ekko: Ekko,
    pub policy: Policy,
    /// `None` in noauth mode.
    pub keystone: Option<KeystoneAuth>,
}

impl ApiState {
    pub fn new(ekko: Ekko) -> anyhow::Result<ApiState> {
        let cfg = &ekko.config;
        let keystone = match cfg.api.auth_strategy {
            AuthStrategy::Keystone => Some(KeystoneAuth::new(&cfg.keystone_authtoken)?),
            AuthStrategy::Noauth => {
                tracing::warn!("auth_strategy = noauth: callers are who their headers say; use only on a single machine");
                None
            }
        };
        let policy_file = policy_path(&ekko);
        let policy = Policy::load(policy_file.as_deref(), cfg.oslo_policy.enforce_new_defaults)?;
        Ok(ApiState {
            ekko,
            policy,
            keystone,
        })
    }
}

/// `[oslo_policy] policy_file`, relative paths next to the configuration files.
fn policy_path(ekko: &Ekko) -> Option<std::path::PathBuf> {
    let file = std::path::PathBuf::from(&ekko.config.oslo_policy.policy_file);
    if file.is_absolute() {
        return Some(file);
    }
    ekko.config
        .loaded_files
        .iter()
        .rev()
        .filter_map(|f| f.parent())
        .map(|dir| dir.join(&file))
        .find(|p| p.exists())
}

/// Who asks, what for, under which request id and microversion.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub global_request_id: Option<String>,
    pub version: Microversion,
    pub creds: Credentials,
}

impl RequestContext {
    /// The caller, held to the API's policy.
    pub fn caller<'a>(&'a self, state: &'a ApiState) -> Caller<'a> {
        Caller::new(&self.creds, &state.policy)
    }
}

impl FromRequest for RequestContext {
    type Error = ApiError;
    type Future = std::future::Ready<Result<RequestContext, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(
            req.extensions()
                .get::<RequestContext>()
                .cloned()
                .ok_or_else(|| ApiError::internal("request context missing")),
        )
    }
}

const REQUEST_ID: &str = "x-openstack-request-id";

/// oslo.middleware's health check path.
pub const HEALTHCHECK_PATH: &str = "/healthcheck";

/// Request id, microversion, authentication, error bodies, headers.
async fn frame(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = std::time::Instant::now();
    let request_id = format!("req-{}", uuid::Uuid::new_v4());
    let global = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(String::from);
    let versions = req
        .headers()
        .get_all(version::HEADER)
        .filter_map(|v| v.to_str().ok())
        .map(String::from)
        .collect::<Vec<_>>();
    let negotiated = version::negotiate(versions.iter().map(String::as_str));
    let state = req
        .app_data::<web::Data<ApiState>>()
        .cloned()
        .ok_or_else(|| actix_web::error::ErrorInternalServerError("no API state"))?;
    // Discovery and the health check need no token (the health check
    // authenticates a token itself, for its detailed answer).
    let discovery = matches!(
        req.path(),
        "/" | "/v1" | "/v1/" | "/v1/openapi.json" | HEALTHCHECK_PATH
    );

    let outcome = match negotiated {
        Err(e) => Err(e),
        Ok(version) if discovery => Ok(Some(version)),
        Ok(version) => match authenticate(&state, req.headers()).await {
            Ok(creds) => {
                req.extensions_mut().insert(RequestContext {
                    request_id: request_id.clone(),
                    global_request_id: global.clone(),
                    version,
                    creds,
                });
                Ok(Some(version))
            }
            Err(e) => Err(e),
        },
    };
    let (version, mut res) = match outcome {
        Ok(version) => {
            // Every line the request logs, and every message it sends,
            // carries its ids (and who asks).
            let (user, project) = req
                .extensions()
                .get::<RequestContext>()
                .map(|c| (c.creds.user_id.clone(), c.creds.project_id.clone()))
                .unwrap_or_default();
            let span = tracing::info_span!(
                "request",
                request_id = %request_id,
                global_request_id = global.as_deref().unwrap_or("-"),
                user = %user,
                project = project.as_deref().unwrap_or("-"),
            );
            let work = tracing::Instrument::instrument(next.call(req), span);
            let res = crate::telemetry::with_request_id(Some(request_id.clone()), work)
                .await?
                .map_into_boxed_body();
            (version, res)
        }
        Err(e) => {
            let resp = e.response(&request_id);
            (None, req.into_response(resp).map_into_boxed_body())
        }
    };
    // Errors raised by handlers and extractors get the request id now.
    if let Some(api) = res
        .response()
        .error()
        .and_then(|e| e.as_error::<ApiError>())
    {
        let rebuilt = api.response(&request_id);
        res = res.into_response(rebuilt).map_into_boxed_body();
    } else if let Some(err) = res
        .response()
        .error()
        .filter(|_| res.status().is_client_error() || res.status().is_server_error())
    {
        // actix's own errors (e.g. an unreadable body) in the same shape.
        let status = res.status();
        let code = if status.is_server_error() {
            "internal_error"
        } else {
            "bad_request"
        };
        let rebuilt = ApiError::new(status, code, err.to_string()).response(&request_id);
        res = res.into_response(rebuilt).map_into_boxed_body();
    }
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert(HeaderName::from_static(REQUEST_ID), v);
    }
    let v = version.unwrap_or(version::MIN_VERSION);
    if let Ok(v) = HeaderValue::from_str(&format!("{SERVICE_TYPE} {v}")) {
        h.insert(HeaderName::from_static("openstack-api-version"), v);
    }
    h.insert(
        actix_web::http::header::VARY,
        HeaderValue::from_static("OpenStack-API-Version"),
    );
    let status = res.status().as_u16();
    tracing::info!(request_id = %request_id, global_request_id = ?global, status, "{} {}", res.request().method(), res.request().path());
    count_request(&res, started.elapsed());
    Ok(res)
}

/// The request in the API's metrics, by route pattern (never the path
/// itself: ids would make a series per resource).
fn count_request<B>(res: &ServiceResponse<B>, took: std::time::Duration) {
    let m = crate::metrics::metrics();
    // Any token is a valid method to HTTP: only the API's own are labels.
    let method = match res.request().method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m,
        _ => "other",
    };
    let pattern = res.request().match_pattern();
    let route = pattern.as_deref().unwrap_or("unmatched");
    let status = res.status().as_u16().to_string();
    m.api_requests
        .get_or_create(&crate::metrics::labels(&[
            ("method", method),
            ("route", route),
            ("status", &status),
        ]))
        .inc();
    m.api_request_seconds
        .get_or_create(&crate::metrics::labels(&[
            ("method", method),
            ("route", route),
        ]))
        .observe(took.as_secs_f64());
}

async fn authenticate(
    state: &ApiState,
    headers: &actix_web::http::header::HeaderMap,
) -> Result<Credentials, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let result = match &state.keystone {
        Some(ks) => {
            let token = header("X-Auth-Token").or_else(|| header("X-Storage-Token"));
            ks.authenticate(token, header("X-Service-Token")).await
        }
        None => crate::auth::noauth(
            header("X-Project-Id"),
            header("X-User-Id"),
            header("X-Roles"),
        ),
    };
    result.map_err(|e| match e {
        AuthError::Unavailable(why) => ApiError::unavailable(why),
        other => {
            let mut err = ApiError::new(
                actix_web::http::StatusCode::UNAUTHORIZED,
                "unauthorized",
                other.to_string(),
            );
            if let Some(ks) = &state.keystone {
                err = err.header(
                    "WWW-Authenticate",
                    format!("Keystone uri=\"{}\"", ks.www_authenticate_uri()),
                );
            }
            err
        }
    })
}

/// The URL clients use to reach this API (for links): `[api]
/// public_endpoint`; else, with `[oslo_middleware]
/// enable_proxy_headers_parsing`, what the proxy headers say (scheme, host
/// and the path prefix the proxy serves the API at); else the request's
/// own `Host` and this listener's scheme.
pub fn base_url(req: &HttpRequest, state: &ApiState) -> String {
    let config = &state.ekko.config;
    if let Some(p) = &config.api.public_endpoint {
        return p.trim_end_matches('/').to_string();
    }
    if config.oslo_middleware.enable_proxy_headers_parsing {
        let ci = req.connection_info();
        let prefix = req
            .headers()
            .get("X-Forwarded-Prefix")
            .and_then(|v| v.to_str().ok())
            .map(|p| p.trim().trim_end_matches('/'))
            .filter(|p| p.starts_with('/') && !p.contains(['"', '<', '>', '\\', ' ']))
            .unwrap_or("");
        return format!("{}://{}{prefix}", ci.scheme(), ci.host());
    }
    let scheme = if req.app_config().secure() {
        "https"
    } else {
        "http"
    };
    let host = req
        .headers()
        .get(actix_web::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| req.app_config().host());
    format!("{scheme}://{host}")
}

async fn not_found(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::new(
        actix_web::http::StatusCode::NOT_FOUND,
        "not_found",
        format!("no resource at {}", req.path()),
    ))
}

async fn method_not_allowed(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    // The methods this path serves, from the operation table (RFC 9110:
    // a 405 carries Allow).
    let pattern = req.match_pattern().unwrap_or_default();
    let allow: Vec<String> = operation_list()
        .into_iter()
        .filter(|(_, path)| *path == pattern || format!("{path}/") == pattern)
        .map(|(m, _)| m)
        .collect();
    let mut e = ApiError::new(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.path()),
    );
    e.headers.push(("Allow", allow.join(", ")));
    Err(e)
}

/// A resource whose other methods answer 405 in the API's error shape.
fn resource(paths: &[&str]) -> actix_web::Resource {
    web::resource(paths.to_vec()).default_service(web::to(method_not_allowed))
}

/// One path of the API (with its aliases) and its operations.
type PathOperations = (&'static [&'static str], Vec<(Method, actix_web::Route)>);

macro_rules! op {
    ($method:ident, $handler:path) => {
        (Method::$method, web::method(Method::$method).to($handler))
    };
}

/// Every operation of the API, in one table: the router is built from it
/// and a test compares it with the OpenAPI document (`api-ref/openapi.json`).
fn operations() -> Vec<PathOperations> {
    vec![
        (&["/"], vec![op!(GET, version::versions)]),
        (&["/v1", "/v1/"], vec![op!(GET, version::v1)]),
        (&["/v1/openapi.json"], vec![op!(GET, openapi)]),
        (
            &["/v1/backups"],
            vec![op!(GET, backups::list), op!(POST, backups::create)],
        ),
        (
            &["/v1/backups/{backup_id}"],
            vec![
                op!(GET, backups::show),
                op!(PUT, backups::update),
                op!(DELETE, backups::delete),
            ],
        ),
        (
            &["/v1/backups/{backup_id}/action"],
            vec![op!(POST, backups::action)],
        ),
        (
            &["/v1/backups/{backup_id}/exports"],
            vec![op!(POST, exports::create)],
        ),
        (&["/v1/exports"], vec![op!(GET, exports::list)]),
        (
            &["/v1/exports/{export_id}"],
            vec![op!(GET, exports::show), op!(DELETE, exports::delete)],
        ),
        (
            &["/v1/restores"],
            vec![op!(GET, restores::list), op!(POST, restores::create)],
        ),
        (
            &["/v1/restores/{restore_id}"],
            vec![op!(GET, restores::show)],
        ),
        (
            &["/v1/restores/{restore_id}/action"],
            vec![op!(POST, restores::action)],
        ),
        (&["/v1/instances"], vec![op!(GET, instances::list)]),
        (
            &["/v1/instances/{instance_id}"],
            vec![op!(GET, instances::show)],
        ),
        (
            &["/v1/policies"],
            vec![op!(GET, policies::list), op!(POST, policies::create)],
        ),
        (
            &["/v1/policies/{policy_id}"],
            vec![
                op!(GET, policies::show),
                op!(PUT, policies::update),
                op!(DELETE, policies::delete),
            ],
        ),
        (
            &["/v1/policies/{policy_id}/retention"],
            vec![op!(GET, policies::retention)],
        ),
        (
            &["/v1/policies/{policy_id}/instances"],
            vec![op!(POST, policies::add_instance)],
        ),
        (
            &["/v1/policies/{policy_id}/instances/{instance_id}"],
            vec![op!(DELETE, policies::remove_instance)],
        ),
        (
            &["/v1/quotas/{project_id}"],
            vec![op!(GET, quotas::show), op!(PUT, quotas::update)],
        ),
    ]
}

/// (method, path) of every operation, for the OpenAPI comparison.
pub fn operation_list() -> Vec<(String, String)> {
    operations()
        .into_iter()
        .flat_map(|(paths, ops)| {
            ops.into_iter()
                .map(move |(m, _)| (m.to_string(), paths[0].to_string()))
        })
        .collect()
}

/// The OpenAPI document of this API, as kept in the repository.
pub const OPENAPI: &str = include_str!("../api-ref/openapi.json");

/// `GET /v1/openapi.json` (no token needed, as version discovery).
async fn openapi() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// The routes; the middleware wraps them all.
pub fn routes(cfg: &mut web::ServiceConfig) {
    let json = web::JsonConfig::default()
        .limit(64 << 10)
        .error_handler(|e, _| ApiError::bad_request(format!("invalid JSON body: {e}")).into());
    let query = web::QueryConfig::default()
        .error_handler(|e, _| ApiError::bad_request(format!("invalid query: {e}")).into());
    let path = web::PathConfig::default()
        .error_handler(|e, _| ApiError::bad_request(format!("invalid path: {e}")).into());
    cfg.app_data(json).app_data(query).app_data(path);
    // Not an API operation (no microversion, not in the API reference):
    // load balancers and monitoring ask it.
    cfg.service(
        resource(&[HEALTHCHECK_PATH])
            .route(web::get().to(health::healthcheck))
            .route(web::head().to(health::healthcheck)),
    );
    for (paths, ops) in operations() {
        let mut r = resource(paths);
        for (_, route) in ops {
            r = r.route(route);
        }
        cfg.service(r);
    }
    cfg.default_service(web::to(not_found));
}

/// Serve the API until `shutdown` resolves.
pub async fn serve(ekko: Ekko, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let api = &ekko.config.api;
    bind::check(api)?;
    let (host, port, workers) = (api.bind_host.clone(), api.bind_port, api.workers);
    let state = web::Data::new(ApiState::new(ekko)?);
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(state.clone())
            .wrap(from_fn(frame))
            .configure(routes)
    })
    .disable_signals()
    .workers(if workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        workers as usize
    })
    .bind((host.as_str(), port))
    .map_err(|e| anyhow::anyhow!("cannot listen on {host}:{port}: {e}"))?
    .run();
    tracing::info!(%host, port, "ekko-api listening");
    // Connected (Ekko::connect) and bound.
    crate::systemd::notify_ready();
    let handle = server.handle();
    let stopper = async move {
        shutdown.await;
        handle.stop(true).await;
    };
    let (served, ()) = tokio::join!(server, stopper);
    served?;
    Ok(())
}

/// The body of `POST …/{id}/action` (OpenStack style). Cancel is the one
/// action today: `{"cancel": {}}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    cancel: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ActionBody {
    /// A 400 unless the body asks for a cancel.
    pub fn require_cancel(&self) -> Result<(), ApiError> {
        match self.cancel {
            Some(_) => Ok(()),
            None => Err(ApiError::bad_request(
                "unknown action: the body must be {\"cancel\": {}}",
            )),
        }
    }
}

/// A link in a resource (`self`, `next`).
#[derive(Debug, serde::Serialize)]
pub struct Link {
    pub rel: &'static str,
    pub href: String,
}

/// Shared in tests and handlers: a JSON timestamp.
pub use crate::service::convert::timestamp;

/// Shared handle type for handlers.
pub type State = web::Data<ApiState>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI document describes exactly the operations the router
    /// serves (the router is built from the same table).
    #[test]
    fn openapi_document_matches_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        let mut documented: Vec<(String, String)> = doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| *k != "parameters")
                    .map(move |(method, _)| (method.to_uppercase(), path.clone()))
            })
            .collect();
        let mut served = operation_list();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
        // Every path parameter of the route is declared in the document.
        for (_, path) in &served {
            for param in path.split('/').filter(|s| s.starts_with('{')) {
                let name = param.trim_matches(|c| c == '{' || c == '}');
                let declared = doc["paths"][path]["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"] == name));
                assert!(declared, "{path}: parameter {name} undeclared");
            }
        }
    }
}
