//! The embedded MQTT broker (rumqttd), with per-worker credentials: anonymous clients and
//! unknown or wrong credentials are refused, and a worker must use its own client id.

use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// username → sha256(password), shared with the registration endpoint and the guard.
///
/// A worker's own password is checked by the guard, which then logs in to the broker with a
/// relay password derived from a key that never leaves this process. The broker accepts a
/// worker only with that relay password: a process on the cluster's host that reaches the
/// broker's loopback port directly, even with a worker's real credentials, gets nowhere (and
/// so cannot get past the guard's topic rules). Only the cluster's own client
/// ([`set_direct`](Credentials::set_direct)) logs in to the broker with its own password.
#[derive(Clone)]
pub struct Credentials {
    workers: Arc<RwLock<HashMap<String, String>>>,
    direct: Arc<RwLock<HashMap<String, String>>>,
    relay_key: Arc<[u8; 32]>,
}

impl Default for Credentials {
    fn default() -> Self {
        let mut key = [0u8; 32];
        rand::fill(&mut key[..]);
        Self { workers: Arc::default(), direct: Arc::default(), relay_key: Arc::new(key) }
    }
}

pub fn hash(password: &str) -> String {
    oak_store::secret::sha256_hex(password)
}

impl Credentials {
    /// A worker's login (checked by the guard).
    pub fn set(&self, username: &str, password_hash: String) {
        self.workers.write().insert(username.to_owned(), password_hash);
    }

    /// A client that logs in to the broker directly, with its own password (the cluster's).
    pub fn set_direct(&self, username: &str, password_hash: String) {
        self.direct.write().insert(username.to_owned(), password_hash);
    }

    pub fn remove(&self, username: &str) {
        self.workers.write().remove(username);
    }

    /// The guard's check of a worker: `client_id` must be `<username>-ne` (or the username).
    pub fn check(&self, client_id: &str, username: &str, password: &str) -> bool {
        let id_ok = client_id == username || client_id.strip_suffix("-ne") == Some(username);
        let stored = self.workers.read().get(username).cloned();
        let ok = id_ok
            && stored.is_some_and(|h| oak_store::secret::constant_time_eq(h.as_bytes(), hash(password).as_bytes()));
        if !ok {
            tracing::warn!(client = client_id, user = username, "MQTT login refused");
        }
        ok
    }

    /// The password the guard shows the broker for `username`.
    pub fn relay_password(&self, username: &str) -> String {
        let mut h = Sha256::new();
        h.update(&self.relay_key[..]);
        h.update(username.as_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The broker's check: the cluster's own client with its password, or a worker that the
    /// guard let through (its relay password), never a worker's own password.
    pub fn check_broker(&self, client_id: &str, username: &str, password: &str) -> bool {
        let direct = self.direct.read().get(username).cloned();
        let ok = match direct {
            Some(h) => {
                client_id == username && oak_store::secret::constant_time_eq(h.as_bytes(), hash(password).as_bytes())
            }
            None => {
                let id_ok = client_id == username || client_id.strip_suffix("-ne") == Some(username);
                id_ok
                    && self.workers.read().contains_key(username)
                    && oak_store::secret::constant_time_eq(
                        self.relay_password(username).as_bytes(),
                        password.as_bytes(),
                    )
            }
        };
        if !ok {
            tracing::warn!(client = client_id, user = username, "MQTT login refused by the broker");
        }
        ok
    }
}

/// Starts the broker on its own thread (rumqttd's `start` blocks).
pub fn start(listen: SocketAddr, creds: Credentials) -> Result<(), String> {
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "{listen}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 4194304
max_inflight_count = 100
dynamic_filters = true
"#
    );
    let mut config: rumqttd::Config = toml::from_str(&text).map_err(|e| format!("broker config: {e}"))?;
    if let Some(server) = config.v4.as_mut().and_then(|v| v.get_mut("1")) {
        server.set_auth_handler(move |client_id: String, user: String, pass: String| {
            let creds = creds.clone();
            async move { creds.check_broker(&client_id, &user, &pass) }
        });
    }
    // Fail early if the port is taken (rumqttd would only log it on its thread).
    std::net::TcpListener::bind(listen).map_err(|e| format!("cannot listen for MQTT on {listen}: {e}"))?;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "the MQTT broker stopped");
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials() {
        let c = Credentials::default();
        c.set("n1", hash("pw"));
        assert!(c.check("n1-ne", "n1", "pw"));
        assert!(c.check("n1", "n1", "pw"));
        assert!(!c.check("n2-ne", "n1", "pw"), "another client id");
        assert!(!c.check("n1-ne", "n1", "pw2"));
        assert!(!c.check("x-ne", "x", ""));
    }

    /// The broker takes a worker only through the guard: with the relay password, never with
    /// the worker's own; the cluster's client logs in directly.
    #[test]
    fn the_broker_takes_workers_only_through_the_guard() {
        let c = Credentials::default();
        c.set("n1", hash("pw"));
        c.set_direct("oak-cluster", hash("cpw"));
        assert!(!c.check_broker("n1-ne", "n1", "pw"), "a worker's own password, past the guard");
        assert!(c.check_broker("n1-ne", "n1", &c.relay_password("n1")));
        assert!(!c.check_broker("n2-ne", "n2", &c.relay_password("n2")), "an unknown worker");
        assert!(!c.check_broker("n1-ne", "n1", &Credentials::default().relay_password("n1")), "another key");
        assert!(c.check_broker("oak-cluster", "oak-cluster", "cpw"));
        assert!(!c.check_broker("oak-cluster", "oak-cluster", &c.relay_password("oak-cluster")));
        assert!(!c.check("oak-cluster", "oak-cluster", "cpw"), "the guard never takes the cluster's name");
    }
}
