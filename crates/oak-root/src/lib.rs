//! The root orchestrator: where users meet the system.
//!
//! It serves the user REST API (the original Oakestra paths and shapes, so Oakestra's own
//! CLI works against it), authenticates users, and keeps users, organizations, applications,
//! services and clusters in an embedded ACID store. Clusters join it in the next stage; until
//! one is active, requested instances wait with a visible negative scheduling status.
//!
//! This crate must not import the other tiers (`oak-cluster`, `oak-worker`): tiers meet only
//! through `oak-api` messages.

pub mod auth;
pub mod clock;
pub mod http;
pub mod registry;

use clock::{Clock, SystemClock};
use oak_store::{RedbStore, Store};
pub use oak_tls::serve::{ConnLimits, raise_file_limit};
use registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;

/// The default password of the bootstrap `Admin` user when `OAK_ADMIN_PASSWORD` is unset.
pub const DEFAULT_ADMIN_PASSWORD: &str = "Admin";

/// Configuration of `oak root`.
#[derive(Clone, Debug)]
pub struct RootConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Password of the bootstrap `Admin` user, used only when that user is created.
    /// `None` means the original's default, `Admin`.
    pub admin_password: Option<String>,
    pub access_token_ttl_secs: u64,
    pub refresh_token_ttl_secs: u64,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Token clusters join with; read from (or generated into) `<data-dir>/cluster-token`
    /// when `None`.
    pub cluster_token: Option<String>,
    /// A cluster silent this long is lost; its instances move to other clusters.
    pub cluster_timeout_secs: f64,
    /// Named areas for `latency` constraints (`--areas FILE`, read with
    /// [`registry::parse_areas`]).
    pub areas: std::collections::BTreeMap<String, oak_api::ldp::AreaDef>,
    /// The hash of the CA the root serves with (its own, or the leaf certificate of an
    /// operator's chain): cluster tokens carry it (`K10<hash>::<secret>`), so a joining
    /// cluster can check the root with no CA file. `None` when the root serves plain HTTP.
    pub tls_pin: Option<oak_tls::pki::CaHash>,
}

impl RootConfig {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            admin_password: None,
            access_token_ttl_secs: 10 * 60,
            refresh_token_ttl_secs: 7 * 24 * 3600,
            max_body_bytes: 1024 * 1024,
            cluster_token: None,
            cluster_timeout_secs: registry::DEFAULT_CLUSTER_TIMEOUT_SECS,
            areas: std::collections::BTreeMap::new(),
            tls_pin: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(transparent)]
    UnsafeDataDir(#[from] oak_store::datadir::DataDirError),
    #[error(transparent)]
    Store(#[from] oak_store::StoreError),
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("http server failed: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Config(String),
}

/// A root orchestrator with its store open, ready to serve.
pub struct Root {
    state: http::AppState,
}

impl Root {
    /// Opens (or creates) the store under the data dir and bootstraps `Admin` and `root`.
    pub fn open(config: &RootConfig) -> Result<Self, RootError> {
        oak_store::datadir::prepare(&config.data_dir)?;
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&config.data_dir.join("root.redb"), registry::TABLES)?);
        Self::with_store(config, store, Arc::new(SystemClock))
    }

    /// Builds a root over any store and clock (tests use fakes).
    pub fn with_store(config: &RootConfig, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Result<Self, RootError> {
        let registry = Arc::new(
            Registry::new(store, clock.clone())
                .with_cluster_timeout(config.cluster_timeout_secs)
                .with_areas(config.areas.clone()),
        );
        let secret = registry.meta_or_init("jwt_secret", || {
            let mut key = vec![0u8; 32];
            rand::fill(&mut key[..]);
            key
        })?;
        let tokens = auth::TokenService::new(&secret, config.access_token_ttl_secs, config.refresh_token_ttl_secs)?;
        let password = config.admin_password.clone();
        let default = password.is_none();
        let password = password.unwrap_or_else(|| DEFAULT_ADMIN_PASSWORD.to_owned());
        let mut hash_error = None;
        let hasher = auth::Hasher::spawn()?;
        let created = registry.bootstrap(|| match hasher.hash_blocking(&password) {
            Ok(h) => h,
            Err(e) => {
                hash_error = Some(e);
                String::new()
            }
        })?;
        if let Some(e) = hash_error {
            return Err(e.into());
        }
        if default {
            let still_default = registry
                .user_by_name(oak_api::model::ADMIN_ROLE)?
                .is_some_and(|u| hasher.verify_blocking(DEFAULT_ADMIN_PASSWORD, &u.password_hash));
            if still_default {
                tracing::warn!(
                    "the Admin user has the default password \"Admin\" (OAK_ADMIN_PASSWORD is unset); \
                     set OAK_ADMIN_PASSWORD before first start, or change it with POST /api/user/Admin"
                );
            }
        }
        if created {
            tracing::info!("created the bootstrap user Admin and organization root");
        }
        let dd = |source| RootError::DataDir { path: config.data_dir.display().to_string(), source };
        let cluster_token = match &config.cluster_token {
            Some(t) if !t.is_empty() => oak_tls::pki::JoinToken::parse(t)
                .map(|t| t.secret)
                .map_err(|e| RootError::Config(format!("--cluster-token (OAK_CLUSTER_TOKEN): {e}")))?,
            _ => {
                // The file holds the whole token, K10 form included; its secret is kept across
                // restarts, its CA hash follows the certificate the root serves with now.
                oak_store::secret::token_file(&config.data_dir.join("cluster-token"), |secret| {
                    oak_tls::pki::JoinToken { ca_hash: config.tls_pin, secret: secret.to_owned() }.render()
                })
                .map_err(dd)?
            }
        };
        // A token given with its K10 prefix is checked by its secret.
        let cluster_token = oak_tls::pki::JoinToken::parse(&cluster_token).map(|t| t.secret).unwrap_or(cluster_token);
        let state =
            http::AppState::new(registry, Arc::new(tokens), hasher, clock, cluster_token, config.max_body_bytes)
                .with_tls_pin(config.tls_pin);
        Ok(Self { state })
    }

    /// The token clusters join with: `K10<ca-hash>::<secret>` when the root serves TLS.
    pub fn cluster_token(&self) -> String {
        self.state.join_token(&self.state.cluster_token)
    }

    /// Serves the API and the cluster link on `listener` until `shutdown` completes, then
    /// drains in-flight requests.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RootError> {
        self.serve_with(listener, None, ConnLimits::default(), shutdown).await
    }

    /// Like [`serve`](Self::serve), over HTTPS with `tls` (see [`oak_tls::server_config`]).
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        tls: Arc<oak_tls::ServerConfig>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RootError> {
        self.serve_with(listener, Some(tls), ConnLimits::default(), shutdown).await
    }

    /// Serves over HTTPS when `tls` is given, with the timeouts and the connection bound of
    /// `limits` (see [`ConnLimits`] and [`oak_tls::serve`]).
    pub async fn serve_with(
        self,
        listener: TcpListener,
        tls: Option<Arc<oak_tls::ServerConfig>>,
        limits: ConnLimits,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RootError> {
        let scheduler = tokio::spawn(http::link::scheduler(self.state.clone()));
        let app = http::router(self.state);
        let r = oak_tls::serve::serve(listener, app, tls, limits, shutdown).await.map_err(RootError::Serve);
        scheduler.abort();
        r
    }
}
