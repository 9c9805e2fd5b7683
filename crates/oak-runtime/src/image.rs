//! Image metadata: manifests, configs and the snapshot chain id. Pure functions over bytes.

use serde::Deserialize;
use sha2::{Digest, Sha256};

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, Deserialize)]
pub struct DescriptorJson {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub platform: Option<PlatformJson>,
}

#[derive(Debug, Deserialize)]
pub struct PlatformJson {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

#[derive(Debug, Deserialize)]
pub struct IndexJson {
    pub manifests: Vec<DescriptorJson>,
}

#[derive(Debug, Deserialize)]
pub struct ManifestJson {
    pub config: DescriptorJson,
}

#[derive(Debug, Default, Deserialize)]
pub struct ImageConfigJson {
    #[serde(default)]
    pub config: ProcessConfig,
    pub rootfs: RootfsJson,
}

#[derive(Debug, Default, Deserialize)]
pub struct ProcessConfig {
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RootfsJson {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// Whether a media type is a multi-platform index.
pub fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

/// Picks the manifest for `arch` (OCI names: amd64, arm64) on linux from an index.
pub fn pick_manifest(index: &[u8], arch: &str) -> Result<String, String> {
    let idx: IndexJson = serde_json::from_slice(index).map_err(|e| format!("bad image index: {e}"))?;
    idx.manifests
        .iter()
        .find(|m| m.platform.as_ref().is_some_and(|p| p.architecture == arch && (p.os == "linux" || p.os.is_empty())))
        .or_else(|| idx.manifests.iter().find(|m| m.platform.is_none()))
        .map(|m| m.digest.clone())
        .ok_or_else(|| format!("the image has no manifest for linux/{arch}"))
}

/// The snapshot key of the top layer: `chain[0] = diff[0]`,
/// `chain[i] = sha256(chain[i-1] + " " + diff[i])`.
pub fn chain_id(diff_ids: &[String]) -> Option<String> {
    let mut it = diff_ids.iter();
    let mut chain = it.next()?.clone();
    for d in it {
        let h = Sha256::digest(format!("{chain} {d}").as_bytes());
        chain = format!("sha256:{}", hex(&h));
    }
    Some(chain)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The OCI architecture name of this machine.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids() {
        assert_eq!(chain_id(&[]), None);
        assert_eq!(chain_id(&["sha256:a".into()]).as_deref(), Some("sha256:a"));
        let two = chain_id(&["sha256:a".into(), "sha256:b".into()]).unwrap_or_default();
        assert_eq!(two, format!("sha256:{}", hex(&Sha256::digest(b"sha256:a sha256:b"))));
    }

    #[test]
    fn picks_the_platform_manifest() {
        let idx = br#"{"manifests":[
            {"mediaType":"m","digest":"sha256:arm","platform":{"architecture":"arm64","os":"linux"}},
            {"mediaType":"m","digest":"sha256:amd","platform":{"architecture":"amd64","os":"linux"}}]}"#;
        assert_eq!(pick_manifest(idx, "amd64").as_deref(), Ok("sha256:amd"));
        assert!(pick_manifest(idx, "riscv64").is_err());
        assert!(pick_manifest(b"not json", "amd64").is_err());
    }
}
