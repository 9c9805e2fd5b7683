//! The user REST API: routes, extractors and the one error mapping.
//!
//! Paths follow the original (oakestra-core.md §2.2); each is served with and without a
//! trailing slash because the original's clients use both.

mod apps;
mod error;
mod extract;
pub mod link;
mod openapi;
mod services;
mod users;

pub use error::ApiError;

use crate::auth::TokenService;
use crate::clock::Clock;
use crate::registry::Registry;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::MethodRouter;
use std::sync::Arc;

/// Shared, cheap-to-clone state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub(crate) registry: Arc<Registry>,
    pub(crate) tokens: Arc<TokenService>,
    pub(crate) hasher: crate::auth::Hasher,
    pub(crate) login_limiter: Arc<crate::auth::LoginLimiter>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) hub: Arc<link::Hub>,
    pub(crate) cluster_token: Arc<String>,
    /// The CA hash join tokens carry (see `RootConfig::tls_pin`).
    pub(crate) tls_pin: Option<oak_tls::pki::CaHash>,
    max_body_bytes: usize,
}

impl AppState {
    pub fn new(
        registry: Arc<Registry>,
        tokens: Arc<TokenService>,
        hasher: crate::auth::Hasher,
        clock: Arc<dyn Clock>,
        cluster_token: String,
        max_body_bytes: usize,
    ) -> Self {
        Self {
            registry,
            tokens,
            hasher,
            login_limiter: Arc::default(),
            clock,
            hub: Arc::default(),
            cluster_token: Arc::new(cluster_token),
            tls_pin: None,
            max_body_bytes,
        }
    }

    pub fn with_tls_pin(mut self, pin: Option<oak_tls::pki::CaHash>) -> Self {
        self.tls_pin = pin;
        self
    }

    /// A join token's text for `secret`: with the CA hash when the root serves TLS.
    pub(crate) fn join_token(&self, secret: &str) -> String {
        oak_tls::pki::JoinToken { ca_hash: self.tls_pin, secret: secret.to_owned() }.render()
    }

    /// Runs a blocking registry operation (it fsyncs) off the async executor.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Registry) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || f(&registry))
            .await
            .map_err(|e| ApiError::internal(format!("request task failed: {e}")))?
    }
}

/// Registers `path` and `path/` with the same handlers.
fn route(router: Router<AppState>, path: &str, mr: MethodRouter<AppState>) -> Router<AppState> {
    let slashed = format!("{path}/");
    router.route(path, mr.clone()).route(&slashed, mr)
}

/// The whole API, with its middleware.
pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    let mut r = Router::new();
    r = users::routes(r);
    r = apps::routes(r);
    r = services::routes(r);
    r = r.route(oak_api::link::LINK_PATH, axum::routing::get(link::link));
    r.merge(openapi::routes())
        .fallback(error::not_found_fallback)
        .method_not_allowed_fallback(error::method_not_allowed_fallback)
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(error::panic_response))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
