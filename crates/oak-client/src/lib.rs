//! A typed client for the root orchestrator's REST API. Used by the `oak` command line and by
//! the end-to-end tests. It depends on `oak-api` only, never on server crates.

use oak_api::model::{
    Application, Cluster, InstanceRequested, LoginRequest, LoginResponse, Message, RefreshResponse, Service,
    ServiceCreated,
};
use oak_api::{ErrorBody, ErrorCode};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// An error with its causes ("error sending request: … : invalid peer certificate: …"), so a
/// TLS refusal says why.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{message} (HTTP {status}, {code:?})")]
    Api { status: u16, code: ErrorCode, message: String },
    /// The server answered with something that is not our error shape.
    #[error("unexpected HTTP {status} from {url}: {body}")]
    Unexpected { status: u16, url: String, body: String },
    #[error("cannot reach the root at {url}: {}", chain(source))]
    Transport { url: String, source: reqwest::Error },
    #[error("cannot decode the answer of {url}: {reason}")]
    Decode { url: String, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
}

impl ClientError {
    /// The stable error code, when the server sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A client bound to one root URL, optionally holding an access token.
#[derive(Clone, Debug)]
pub struct RootClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl RootClient {
    /// `base` is like `http://127.0.0.1:10000`.
    pub fn new(base: &str) -> Self {
        Self { http: oak_tls::http_client(), base: base.trim_end_matches('/').to_owned(), token: None }
    }

    /// A client that trusts only the CA certificates in `ca_pem` for an `https://` root.
    pub fn with_ca(base: &str, ca_pem: &[u8]) -> Result<Self, ClientError> {
        Self::with_tls(base, &*oak_tls::client_config(ca_pem).map_err(ClientError::Tls)?)
    }

    /// A client that trusts only a root whose chain holds the CA with sha256 `ca_hash` (what
    /// the root's K10 tokens pin; printed at its start, and in `<data dir>/ca.pem`).
    pub fn with_ca_hash(base: &str, ca_hash: [u8; 32]) -> Result<Self, ClientError> {
        Self::with_tls(base, &*oak_tls::pki::pinned_client_config(ca_hash).map_err(ClientError::Tls)?)
    }

    fn with_tls(base: &str, tls: &oak_tls::ClientConfig) -> Result<Self, ClientError> {
        let http = oak_tls::http_client_trusting(tls).build().map_err(|e| ClientError::Tls(e.to_string()))?;
        Ok(Self { http, base: base.trim_end_matches('/').to_owned(), token: None })
    }

    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and decodes a JSON answer. Error bodies become [`ClientError::Api`].
    pub async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ClientError> {
        self.request_with_token(method, path, body, self.token.as_deref()).await
    }

    async fn request_with_token<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        token: Option<&str>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|source| ClientError::Transport { url: url.clone(), source })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|source| ClientError::Transport { url: url.clone(), source })?;
        if status == StatusCode::OK {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode { url, reason: e.to_string() });
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => Err(ClientError::Api { status: status.as_u16(), code: e.code, message: e.message }),
            Err(_) => Err(ClientError::Unexpected {
                status: status.as_u16(),
                url,
                body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
            }),
        }
    }

    pub async fn login(&self, username: &str, password: &str) -> Result<LoginResponse, ClientError> {
        let req = LoginRequest { username: username.into(), password: password.into(), organization_name: None };
        self.request_with_token(Method::POST, "/api/auth/login", Some(&req), None).await
    }

    /// Exchanges a refresh token for a new access token.
    pub async fn refresh(&self, refresh_token: &str) -> Result<RefreshResponse, ClientError> {
        self.request_with_token(Method::POST, "/api/auth/refresh", None::<&Value>, Some(refresh_token)).await
    }

    /// Creates every application of an SLA; returns all of the caller's applications.
    pub async fn create_applications(&self, sla: &Value) -> Result<Vec<Application>, ClientError> {
        self.request(Method::POST, "/api/application", Some(sla)).await
    }

    pub async fn applications(&self) -> Result<Vec<Application>, ClientError> {
        self.request(Method::GET, "/api/applications", None::<&Value>).await
    }

    pub async fn application(&self, id: &str) -> Result<Application, ClientError> {
        self.request(Method::GET, &format!("/api/application/{id}"), None::<&Value>).await
    }

    pub async fn delete_application(&self, id: &str) -> Result<Message, ClientError> {
        self.request(Method::DELETE, &format!("/api/application/{id}"), None::<&Value>).await
    }

    pub async fn create_services(&self, sla: &Value) -> Result<ServiceCreated, ClientError> {
        self.request(Method::POST, "/api/service", Some(sla)).await
    }

    /// Services of one application, or of all the caller's applications.
    pub async fn services(&self, app: Option<&str>) -> Result<Vec<Service>, ClientError> {
        let path = match app {
            Some(a) => format!("/api/services/{a}"),
            None => "/api/services".to_owned(),
        };
        self.request(Method::GET, &path, None::<&Value>).await
    }

    pub async fn service(&self, id: &str) -> Result<Service, ClientError> {
        self.request(Method::GET, &format!("/api/service/{id}"), None::<&Value>).await
    }

    pub async fn update_service(&self, id: &str, spec: &Value) -> Result<Service, ClientError> {
        self.request(Method::PUT, &format!("/api/service/{id}"), Some(spec)).await
    }

    pub async fn delete_service(&self, id: &str) -> Result<Message, ClientError> {
        self.request(Method::DELETE, &format!("/api/service/{id}"), None::<&Value>).await
    }

    /// Sets the desired number of instances of a service.
    pub async fn scale(&self, service: &str, replicas: u32) -> Result<Service, ClientError> {
        let body = serde_json::json!({ "replicas": replicas });
        self.request(Method::PUT, &format!("/api/service/{service}/replicas"), Some(&body)).await
    }

    pub async fn request_instance(&self, service: &str) -> Result<InstanceRequested, ClientError> {
        self.request(Method::POST, &format!("/api/service/{service}/instance"), None::<&Value>).await
    }

    pub async fn remove_instance(&self, service: &str, number: u32) -> Result<Message, ClientError> {
        self.request(Method::DELETE, &format!("/api/service/{service}/instance/{number}"), None::<&Value>).await
    }

    /// A piece of an instance's log: from `from` (or the last `max` bytes when `None`).
    pub async fn logs(
        &self,
        service: &str,
        number: u32,
        from: Option<u64>,
        max: u64,
    ) -> Result<oak_api::node::LogsReply, ClientError> {
        let q = match from {
            Some(f) => format!("?from={f}&max={max}"),
            None => format!("?max={max}"),
        };
        self.request(Method::GET, &format!("/api/service/{service}/instance/{number}/logs{q}"), None::<&Value>).await
    }

    pub async fn clusters(&self, active_only: bool) -> Result<Vec<Cluster>, ClientError> {
        let path = if active_only { "/api/clusters/active" } else { "/api/clusters" };
        self.request(Method::GET, path, None::<&Value>).await
    }
}
