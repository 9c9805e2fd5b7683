//! The `oak` client commands against a real root: tables for people, JSON for scripts, the
//! root address from flag, environment or config file, and the token kept between calls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{OAK, RootProcess};
use std::path::Path;
use std::process::Command;

struct Cli {
    config: tempfile::TempDir,
    /// `OAK_CA_HASH` for every command: the root's own CA, as its log and tokens show it.
    ca_hash: String,
}

impl Cli {
    /// A CLI that trusts `root` (by its CA hash, given in the environment).
    fn trusting(root: &RootProcess) -> Self {
        Self { config: common::tempdir(), ca_hash: hash_of(root) }
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
        let mut cmd = Command::new(OAK);
        cmd.args(args)
            .env("XDG_CONFIG_HOME", self.config.path())
            .env_remove("OAK_ROOT")
            .env_remove("OAK_TOKEN")
            .env_remove("OAK_CONFIG")
            .env_remove("OAK_PASSWORD")
            .env("OAK_CA_HASH", &self.ca_hash);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let (ok, out, err) = self.run(args, env);
        assert!(ok, "oak {args:?} failed: {err}\n{out}");
        out
    }
}

fn hash_of(root: &RootProcess) -> String {
    oak_tls::pki::hex(&root.ca_hash.unwrap())
}

fn fixture(rel: &str) -> String {
    common::shared_sla(rel).to_string_lossy().into_owned()
}

#[tokio::test]
async fn login_create_list_show_delete() {
    let root = RootProcess::start().await;
    let cli = Cli::trusting(&root);
    let url = root.url.clone();

    // Not logged in: a clear error that says what to do.
    let (ok, _, err) = cli.run(&["app", "list", "--root", &url], &[]);
    assert!(!ok);
    assert!(err.contains("oak login"), "{err}");

    let (ok, _, err) = cli.run(&["login", "--root", &url, "--password", "wrong"], &[]);
    assert!(!ok && err.contains("invalid username or password"), "{err}");
    cli.ok(&["login", "--root", &url], &[("OAK_PASSWORD", "Admin")]);
    let creds = cli.config.path().join("oak/credentials.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777, 0o600);
    }

    // The token is kept, and the root of the last login is used without a flag.
    let out = cli.ok(&["app", "create", "-f", &fixture("default_app_with_services.json")], &[]);
    assert!(out.contains("clientsrvr") && out.contains("NAMESPACE"), "{out}");
    let json = cli.ok(&["app", "list", "-o", "json"], &[]);
    let apps: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(apps.as_array().unwrap().len(), 1);
    let app_id = apps[0]["applicationID"].as_str().unwrap().to_owned();

    let table = cli.ok(&["service", "list"], &[]);
    assert!(table.contains("curl.test") && table.contains("nginx.test"), "{table}");
    let svcs: serde_json::Value =
        serde_json::from_str(&cli.ok(&["service", "list", &app_id, "--output", "json"], &[])).unwrap();
    assert_eq!(svcs.as_array().unwrap().len(), 2);
    let nginx = svcs.as_array().unwrap().iter().find(|s| s["microservice_name"] == "nginx").unwrap();
    let sid = nginx["microserviceID"].as_str().unwrap();
    let show = cli.ok(&["service", "show", sid], &[]);
    assert!(show.contains("10.30.30.30") && show.contains("6080:80/tcp") && show.contains("no instances"), "{show}");

    // A flawed SLA: the field is named, the exit code says failure.
    let (ok, _, err) = cli.run(&["app", "create", "-f", &fixture("oakestra-tests/sla_flawed_5.json")], &[]);
    assert!(!ok && err.contains("microservice_name"), "{err}");

    cli.ok(&["app", "delete", &app_id], &[]);
    assert!(cli.ok(&["app", "list"], &[]).contains("no applications yet"));
    assert!(cli.ok(&["cluster", "list"], &[]).contains("no clusters"));
}

#[tokio::test]
async fn root_address_from_env_and_config_file() {
    let root = RootProcess::start().await;
    let other = RootProcess::start().await;
    let cli = Cli::trusting(&root);
    let token = root.client().login("Admin", "Admin").await.unwrap().token;

    // OAK_ROOT + OAK_TOKEN, no stored login at all.
    let out = cli.ok(&["app", "list", "-o", "json"], &[("OAK_ROOT", &root.url), ("OAK_TOKEN", &token)]);
    assert_eq!(out.trim(), "[]");

    // A config file names the root; host:port is accepted.
    let cfg = cli.config.path().join("oak/config.toml");
    std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    std::fs::write(&cfg, format!("root = \"{}\"\n", other.url.trim_start_matches("http://"))).unwrap();
    cli.ok(&["login"], &[("OAK_PASSWORD", "Admin"), ("OAK_CA_HASH", &hash_of(&other))]);
    let creds: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cli.config.path().join("oak/credentials.json")).unwrap())
            .unwrap();
    assert_eq!(creds["root"], other.url.as_str());
    // The flag wins over the file.
    let (ok, _, err) = cli.run(&["app", "list", "--root", &root.url], &[]);
    assert!(!ok && err.contains("oak login"), "the token belongs to the other root: {err}");
    assert!(Path::new(&cfg).exists());
}

/// An Admin sees and changes a user's quota from the command line; the user then gets a 403
/// that names the quota.
#[tokio::test]
async fn quotas_from_the_command_line() {
    let root = RootProcess::start().await;
    let cli = Cli::trusting(&root);
    let url = root.url.clone();
    cli.ok(&["login", "--root", &url, "-u", "Admin"], &[("OAK_PASSWORD", "Admin")]);
    let admin = root.admin().await;
    let reg =
        serde_json::json!({"name": "bob", "email": "", "password": "bob-pw-1", "roles": ["Application_Provider"]});
    let _: serde_json::Value = admin.request(reqwest::Method::POST, "/api/auth/register", Some(&reg)).await.unwrap();
    let out = cli.ok(&["user", "quota", "bob", "--root", &url], &[]);
    assert!(out.contains("instances") && out.contains("2000"), "{out}");
    let out = cli.ok(&["user", "quota", "bob", "--instances", "1", "--root", &url, "-o", "json"], &[]);
    let q: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(q["limits"]["instances"], 1, "{q}");

    let bob = root.login("bob", "bob-pw-1").await;
    let mut sla = common::sla("q", "n", &[("x", None)]);
    sla["applications"][0]["microservices"][0]["replicas"] = serde_json::json!(2);
    let e = bob.create_applications(&sla).await.unwrap_err();
    assert_eq!(common::code(&e), "403 quota_exceeded", "{e}");
    assert!(e.to_string().contains("quota instances"), "{e}");
    // Not an Admin: bob cannot raise his own.
    let up = serde_json::json!({"instances": 1000});
    let e = bob.request::<serde_json::Value>(reqwest::Method::PUT, "/api/user/bob/quota", Some(&up)).await.unwrap_err();
    assert_eq!(common::code(&e), "403 forbidden", "{e}");
}
