//! The embedded MQTT broker (rumqttd), with per-worker credentials: anonymous clients and
//! unknown or wrong credentials are refused, and a worker must use its own client id.

use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// username → sha256(password), shared with the registration endpoint.
#[derive(Clone, Default)]
pub struct Credentials(Arc<RwLock<HashMap<String, String>>>);

pub fn hash(password: &str) -> String {
    Sha256::digest(password.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl Credentials {
    pub fn set(&self, username: &str, password_hash: String) {
        self.0.write().insert(username.to_owned(), password_hash);
    }

    pub fn remove(&self, username: &str) {
        self.0.write().remove(username);
    }

    /// `client_id` must be `<username>-ne` (workers) or the username itself (the cluster).
    pub fn check(&self, client_id: &str, username: &str, password: &str) -> bool {
        let id_ok = client_id == username || client_id.strip_suffix("-ne") == Some(username);
        let stored = self.0.read().get(username).cloned();
        let ok = id_ok
            && stored.is_some_and(|h| oak_store::secret::constant_time_eq(h.as_bytes(), hash(password).as_bytes()));
        if !ok {
            tracing::warn!(client = client_id, user = username, "MQTT login refused");
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
            async move { creds.check(&client_id, &user, &pass) }
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
}
