//! The fleet's deployment examples stay true: the Kubernetes manifest's config passes `graygate
//! check`, and its probes and ports are the ones that config listens on; the graygate configs of
//! the Sentinel and Cluster examples pass `graygate check` too.

use crate::support::binary;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `graygate check` on `path` with the admin token variable the examples name; panics with
/// its message unless it accepts the file.
fn assert_checks(path: &Path) {
    let out = Command::new(binary())
        .args(["check", "--config"])
        .arg(path)
        .env("GRAYGATE_TOKEN_OPS", "an-example-token-0123456789")
        .output()
        .expect("run graygate check");
    assert!(
        out.status.success(),
        "graygate check {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The YAML documents of a manifest (split on `---` lines).
fn documents(text: &str) -> Vec<&str> {
    text.split("\n---\n").collect()
}

/// The block scalar under `key: |` in `doc`, dedented.
fn block(doc: &str, key: &str) -> String {
    let mut lines = doc.lines();
    let start = lines.by_ref().position(|l| l.trim() == format!("{key}: |"));
    assert!(start.is_some(), "no `{key}: |` block");
    let body: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .collect();
    body.iter()
        .map(|l| l.strip_prefix("    ").unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of the first `key:` line after the line `after` (trimmed), in `doc`.
fn value_after(doc: &str, after: &str, key: &str) -> String {
    let mut lines = doc.lines().skip_while(|l| l.trim() != after);
    assert!(lines.next().is_some(), "no `{after}` line");
    lines
        .find_map(|l| {
            l.trim()
                .strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no `{key}:` after `{after}`"))
}

fn port(addr: &str) -> String {
    addr.parse::<std::net::SocketAddr>()
        .unwrap_or_else(|e| panic!("{addr}: {e}"))
        .port()
        .to_string()
}

#[test]
fn the_kubernetes_manifest_probes_and_exposes_what_its_config_listens_on() {
    let text = std::fs::read_to_string(repo_file("deploy/kubernetes/graygate.yaml")).unwrap();
    let docs = documents(&text);
    let kind = |k: &str| -> &str {
        docs.iter()
            .find(|d| d.lines().any(|l| l == format!("kind: {k}")))
            .unwrap_or_else(|| panic!("no {k} in the manifest"))
    };
    let config_text = block(kind("ConfigMap"), "graygate.toml");
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("graygate.toml");
    std::fs::write(&config_path, &config_text).unwrap();
    assert_checks(&config_path);

    let file: graygate::config::file::ConfigFile = toml::from_str(&config_text).unwrap();
    let deployment = kind("Deployment");
    let container_port =
        |name: &str| value_after(deployment, &format!("- name: {name}"), "containerPort");
    assert_eq!(container_port("http"), port(&file.listen[0]));
    let admin = file.admin.as_ref().expect("[admin]");
    assert_eq!(
        container_port("admin"),
        port(admin.listen.as_deref().expect("[admin] listen"))
    );
    assert_eq!(
        container_port("metrics"),
        port(file.metrics.listen.as_deref().expect("[metrics] listen"))
    );
    assert_eq!(
        value_after(deployment, "readinessProbe:", "path"),
        "/readyz"
    );
    assert_eq!(value_after(deployment, "readinessProbe:", "port"), "admin");
    assert_eq!(
        value_after(deployment, "livenessProbe:", "path"),
        "/healthz"
    );
    // The token the config reads comes from the Secret the docs create.
    let token_env = value_after(deployment, "env:", "- name");
    assert!(config_text.contains(&format!("token_env = \"{token_env}\"")));
    assert_eq!(
        value_after(deployment, "secretKeyRef:", "name"),
        "graygate-admin"
    );
    // The Service sends its traffic to the traffic port.
    assert_eq!(
        value_after(kind("Service"), "- name: http", "targetPort"),
        "http"
    );
}

#[test]
fn the_sentinel_and_cluster_examples_configs_are_valid() {
    for path in [
        "deploy/fleet/sentinel/graygate.toml",
        "deploy/fleet/cluster/graygate.toml",
    ] {
        assert_checks(&repo_file(path));
    }
}
