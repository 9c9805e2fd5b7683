//! Join tokens for clusters: created, listed and revoked by an Admin. Only a hash of each
//! token is stored; the token itself is shown once, when it is created.

use super::*;

/// A join token as listed (never with its secret).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JoinToken {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub revoked: bool,
    /// After this time (RFC 3339) the token admits no cluster; links already open stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// Longest lifetime a join token may be given, in seconds (10 years).
pub const MAX_TOKEN_TTL_S: u64 = 10 * 365 * 24 * 3600;

/// A token just created: the only time its secret is returned.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewJoinToken {
    #[serde(flatten)]
    pub token: JoinToken,
    /// Give this to `oak cluster --token`.
    pub secret: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TokenRecord {
    info: JoinToken,
    sha256: String,
    /// `info.expires_at` as seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_unix: Option<f64>,
}

fn digest(secret: &str) -> String {
    oak_store::secret::sha256_hex(secret)
}

impl Registry {
    /// A new join token named `name`; with `ttl_s`, it admits clusters for that many seconds.
    pub fn create_join_token(&self, name: &str, ttl_s: Option<u64>) -> Result<NewJoinToken> {
        if name.is_empty() || name.len() > 64 {
            return Err(invalid("name", "must be 1-64 characters"));
        }
        if let Some(t) = ttl_s
            && !(1..=MAX_TOKEN_TTL_S).contains(&t)
        {
            return Err(invalid("ttl_seconds", format!("must be 1-{MAX_TOKEN_TTL_S} (got {t})")));
        }
        let now = self.clock.now_unix();
        let expires_unix = ttl_s.map(|t| now + t as f64);
        let secret = format!("oakj_{}", oak_store::secret::random_hex(24));
        let info = JoinToken {
            id: self.new_id(),
            name: name.to_owned(),
            created_at: self.clock.now_rfc3339(),
            revoked: false,
            expires_at: expires_unix.map(|t| crate::clock::rfc3339(t as i64)),
        };
        let _w = self.write.lock();
        let mut b = Batch::new();
        b.put(
            JOIN_TOKENS,
            info.id.clone(),
            encode(&TokenRecord { info: info.clone(), sha256: digest(&secret), expires_unix })?,
        );
        self.store.commit(b)?;
        Ok(NewJoinToken { token: info, secret })
    }

    pub fn list_join_tokens(&self) -> Result<Vec<JoinToken>> {
        let mut v: Vec<JoinToken> =
            self.load_all::<TokenRecord>(JOIN_TOKENS, "")?.into_iter().map(|r| r.info).collect();
        v.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(v)
    }

    pub fn revoke_join_token(&self, id: &str) -> Result<JoinToken> {
        let _w = self.write.lock();
        let mut r = self.load::<TokenRecord>(JOIN_TOKENS, id)?.ok_or_else(|| not_found("join token", id))?;
        r.info.revoked = true;
        let mut b = Batch::new();
        b.put(JOIN_TOKENS, id, encode(&r)?);
        self.store.commit(b)?;
        Ok(r.info)
    }

    /// The id of the live join token `secret` is, if any: not revoked, not expired.
    pub fn join_token_id(&self, secret: &str) -> Result<Option<String>> {
        let d = digest(secret);
        let now = self.clock.now_unix();
        Ok(self
            .load_all::<TokenRecord>(JOIN_TOKENS, "")?
            .into_iter()
            .find(|r| !r.info.revoked && r.sha256 == d && r.expires_unix.is_none_or(|t| now < t))
            .map(|r| r.info.id))
    }
}
