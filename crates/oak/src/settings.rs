//! Where the client finds the root and keeps its token.
//!
//! The root URL comes from `--root`, else `OAK_ROOT`, else `root = "..."` in the config file
//! (`$OAK_CONFIG`, else `$XDG_CONFIG_HOME/oak/config.toml`, else `~/.config/oak/config.toml`),
//! else the URL of the last login, else `https://127.0.0.1:10000`. Tokens are kept in
//! `credentials.json` next to the config file, readable by the owner only.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub const DEFAULT_ROOT: &str = "https://127.0.0.1:10000";

#[derive(Debug, Default, Deserialize)]
pub struct ConfigFile {
    pub root: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Credentials {
    pub root: String,
    pub username: String,
    pub token: String,
    pub refresh_token: String,
    /// How the root was trusted at login (`--ca`, `--ca-hash`), for the commands after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_hash: Option<String>,
}

pub fn config_dir() -> PathBuf {
    if let Ok(p) = std::env::var("OAK_CONFIG")
        && let Some(parent) = PathBuf::from(p).parent()
    {
        return parent.to_path_buf();
    }
    if let Ok(x) = std::env::var("XDG_CONFIG_HOME")
        && !x.is_empty()
    {
        return PathBuf::from(x).join("oak");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".config").join("oak")
}

fn config_path() -> PathBuf {
    std::env::var("OAK_CONFIG").map(PathBuf::from).unwrap_or_else(|_| config_dir().join("config.toml"))
}

fn credentials_path() -> PathBuf {
    config_dir().join("credentials.json")
}

pub fn read_config() -> anyhow::Result<ConfigFile> {
    let path = config_path();
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("cannot parse {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub fn read_credentials() -> Option<Credentials> {
    let text = std::fs::read_to_string(credentials_path()).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn write_credentials(c: &Credentials) -> anyhow::Result<()> {
    let path = credentials_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(c)?.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The root URL by precedence: flag (or env, via clap) > config file > last login > default.
pub fn resolve_root(flag: Option<&str>) -> anyhow::Result<String> {
    if let Some(f) = flag {
        return Ok(normalize(f));
    }
    if let Some(r) = read_config()?.root {
        return Ok(normalize(&r));
    }
    if let Some(c) = read_credentials() {
        return Ok(c.root);
    }
    Ok(DEFAULT_ROOT.to_owned())
}

/// Accepts `host:port` (meaning https) as well as a URL.
pub fn normalize(root: &str) -> String {
    let r = root.trim().trim_end_matches('/');
    if r.starts_with("http://") || r.starts_with("https://") { r.to_owned() } else { format!("https://{r}") }
}
