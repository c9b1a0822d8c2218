//! deploy/ must agree with itself and with the code: ports, probe service
//! names, config keys and paths. The systemd unit is also checked with
//! `systemd-analyze verify` where it is installed.

use case_export::db::{DbLocation, PgTls};
use case_export::pb::export_service_server::ExportServiceServer;
use case_export::server::Config;
use std::collections::BTreeSet;
use std::path::Path;
use tonic::server::NamedService;

fn read(p: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {p}: {e}"))
}

fn container_config() -> Config {
    Config::from_toml(&read("deploy/container.toml"), Path::new("container.toml"))
        .expect("deploy/container.toml is a valid config")
}

/// The block of a YAML literal (`key: |`) with its indentation removed.
fn yaml_block(yaml: &str, key: &str) -> String {
    let start = yaml
        .lines()
        .position(|l| l.trim() == format!("{key}: |"))
        .unwrap_or_else(|| panic!("no `{key}: |` block"));
    let lines: Vec<&str> = yaml.lines().skip(start + 1).collect();
    let indent = lines[0].len() - lines[0].trim_start().len();
    lines
        .iter()
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
        .map(|l| if l.len() >= indent { &l[indent..] } else { "" })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every number following `key: ` in a YAML file.
fn yaml_numbers(yaml: &str, key: &str) -> BTreeSet<u16> {
    yaml.lines()
        .filter_map(|l| {
            l.trim()
                .trim_start_matches("- ")
                .strip_prefix(&format!("{key}: "))
        })
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn ports(c: &Config) -> (u16, u16, u16) {
    (
        c.listen.port(),
        c.health_listen.expect("health_listen set").port(),
        c.metrics_listen.expect("metrics_listen set").port(),
    )
}

#[test]
fn configmap_holds_the_container_config() {
    let cm = yaml_block(&read("deploy/k8s/configmap.yaml"), "config.toml");
    let from_cm = Config::from_toml(&cm, Path::new("configmap")).expect("ConfigMap config parses");
    assert_eq!(format!("{from_cm:?}"), format!("{:?}", container_config()));
}

#[test]
fn dockerfile_exposes_the_configured_ports_and_volumes() {
    let d = read("deploy/Dockerfile");
    let c = container_config();
    let (grpc, health, metrics) = ports(&c);
    let expose: BTreeSet<u16> = d
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| {
            l.split_whitespace()
                .map(|p| p.parse::<u16>().expect("port"))
        })
        .collect();
    assert_eq!(expose, BTreeSet::from([grpc, health, metrics]));
    // The default port of the code is the one the image serves.
    let default_port: u16 = case_export::server::DEFAULT_LISTEN
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("default port");
    assert_eq!(grpc, default_port);
    for db in [&c.case_db, &c.audit_db] {
        let dir = db
            .sqlite_path()
            .unwrap()
            .parent()
            .expect("db dir")
            .display()
            .to_string();
        assert!(
            d.contains(&format!("\"{dir}\"")),
            "Dockerfile VOLUME lacks {dir}"
        );
    }
    assert!(d.contains("COPY deploy/container.toml /etc/case-export/config.toml"));
    assert!(d.contains("\"--config\", \"/etc/case-export/config.toml\""));
    assert!(d.contains("cargo build --release --locked"));
    assert!(d.contains("USER 10001"));
}

#[test]
fn statefulset_ports_probes_and_mounts_match_the_config() {
    let s = read("deploy/k8s/statefulset.yaml");
    let c = container_config();
    let (grpc, health, metrics) = ports(&c);
    assert_eq!(
        yaml_numbers(&s, "containerPort"),
        BTreeSet::from([grpc, health, metrics])
    );
    // Both probes hit the plaintext health listener.
    assert_eq!(yaml_numbers(&s, "port"), BTreeSet::from([health]));
    let probe_service = format!(
        "service: {}",
        <ExportServiceServer<()> as NamedService>::NAME
    );
    assert!(
        s.contains(&probe_service),
        "readiness probe must ask for {probe_service}"
    );
    let mounts: Vec<String> = s
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mountPath: "))
        .map(str::to_owned)
        .collect();
    for needed in [
        c.case_db.sqlite_path().unwrap().parent().unwrap(),
        c.audit_db.sqlite_path().unwrap().parent().unwrap(),
        c.principals_file.as_ref().unwrap().parent().unwrap(),
    ] {
        let needed = needed.display().to_string();
        assert!(mounts.contains(&needed), "no volume mounted at {needed}");
    }
    assert!(mounts.contains(&"/etc/case-export/config.toml".to_string()));
    for hardening in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "drop: [\"ALL\"]",
        "volumeClaimTemplates:",
    ] {
        assert!(s.contains(hardening), "StatefulSet lacks {hardening}");
    }
    let grace: u64 = s
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds: "))
        .and_then(|v| v.parse().ok())
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > c.shutdown_grace_secs,
        "pods must outlive the export grace period"
    );
}

/// The replicated deployment (deploy/k8s/replicas): PostgreSQL for cases and
/// trail, so no volume of its own; the same ports, probes and hardening as
/// the StatefulSet, and a secret with every file its config reads.
#[test]
fn replicated_deployment_matches_its_config() {
    let cm = yaml_block(&read("deploy/k8s/replicas/configmap.yaml"), "config.toml");
    let c = Config::from_toml(&cm, Path::new("configmap")).expect("replicas config parses");
    assert!(matches!(c.case_db, DbLocation::Postgres(_)), "case_db");
    assert!(matches!(c.audit_db, DbLocation::Postgres(_)), "audit_db");
    for db in [&c.case_db, &c.audit_db] {
        let DbLocation::Postgres(url) = db else {
            unreachable!()
        };
        assert!(
            matches!(url.tls(), PgTls::VerifyFull { .. }),
            "{db} must verify the server"
        );
    }
    let d = read("deploy/k8s/replicas/deployment.yaml");
    assert!(d.contains("kind: Deployment"));
    assert!(!d.contains("volumeClaimTemplates") && !d.contains("persistentVolumeClaim"));
    let (grpc, health, metrics) = ports(&c);
    assert_eq!(ports(&container_config()), (grpc, health, metrics));
    assert_eq!(
        yaml_numbers(&d, "containerPort"),
        BTreeSet::from([grpc, health, metrics])
    );
    assert_eq!(yaml_numbers(&d, "port"), BTreeSet::from([health]));
    for hardening in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "drop: [\"ALL\"]",
        "CASE_EXPORT_INSTANCE_ID",
    ] {
        assert!(d.contains(hardening), "Deployment lacks {hardening}");
    }
    let secret = read("deploy/k8s/replicas/secret.yaml");
    let tls = c.tls.as_ref().expect("tls configured");
    let mut files = vec![
        c.principals_file.clone().unwrap(),
        tls.cert.clone(),
        tls.key.clone(),
        tls.client_ca.clone().unwrap(),
        c.audit.checkpoint_key_file.clone().unwrap(),
        c.postgres.case_db_password_file.clone().unwrap(),
        c.postgres.audit_db_password_file.clone().unwrap(),
    ];
    if let DbLocation::Postgres(url) = &c.case_db
        && let PgTls::VerifyFull { root_cert } = url.tls()
    {
        files.push(root_cert.clone());
    }
    for p in files {
        assert!(p.starts_with("/etc/case-export/secret"), "{}", p.display());
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(
            secret.contains(&format!("  {name}:")),
            "replicas/secret.yaml has no key {name}"
        );
    }
}

#[test]
fn service_and_network_policy_use_the_same_ports() {
    let c = container_config();
    let (grpc, _, metrics) = ports(&c);
    let svc = read("deploy/k8s/service.yaml");
    assert!(yaml_numbers(&svc, "port").is_subset(&BTreeSet::from([grpc, metrics])));
    assert!(yaml_numbers(&svc, "port").contains(&grpc));
    let np = read("deploy/k8s/networkpolicy.yaml");
    assert_eq!(yaml_numbers(&np, "port"), BTreeSet::from([grpc, metrics]));
}

#[test]
fn secret_provides_every_file_the_config_reads_from_it() {
    let c = container_config();
    let secret = read("deploy/k8s/secret.yaml");
    let tls = c.tls.as_ref().expect("tls configured");
    for p in [
        c.principals_file.as_ref().unwrap(),
        &tls.cert,
        &tls.key,
        tls.client_ca.as_ref().unwrap(),
        c.audit.checkpoint_key_file.as_ref().unwrap(),
    ] {
        assert!(p.starts_with("/etc/case-export/secret"), "{}", p.display());
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(
            secret.contains(&format!("  {name}:")),
            "secret.yaml has no key {name}"
        );
    }
    // The principals it ships parse as principals.
    let block = yaml_block(&secret, "principals.toml");
    let cfg = Config::from_toml(
        &block.replace("REPLACE-WITH-64-HEX-DIGITS", &"0".repeat(64)),
        Path::new("principals.toml"),
    )
    .expect("principals block parses");
    assert_eq!(cfg.principals.len(), 2);
}

#[test]
fn example_config_documents_every_key() {
    let example = read("deploy/config.example.toml");
    let full = Config {
        metrics_listen: Some("127.0.0.1:9090".parse().unwrap()),
        health_listen: Some("127.0.0.1:50052".parse().unwrap()),
        principals_file: Some("p.toml".into()),
        ..Config::default()
    };
    let text = toml::to_string(&full).expect("config serializes");
    let value: toml::Table = text.parse().expect("toml");
    for (k, v) in &value {
        if k == "principals" {
            continue;
        }
        let key = if let toml::Value::Table(t) = v {
            assert!(example.contains(&format!("[{k}]")), "example lacks [{k}]");
            t.keys().map(|sub| sub.to_string()).collect::<Vec<_>>()
        } else {
            vec![k.clone()]
        };
        for k in key {
            assert!(
                example.contains(&format!("\n{k} = ")) || example.contains(&format!("# {k} = ")),
                "deploy/config.example.toml does not document `{k}`"
            );
        }
    }
    for k in [
        "[[principals]]",
        "[tls]",
        "cert = ",
        "client_ca = ",
        "token_sha256 = ",
    ] {
        assert!(example.contains(k), "example lacks {k}");
    }
}

#[test]
fn systemd_unit_is_hardened_and_matches_paths() {
    let u = read("deploy/systemd/case-export.service");
    for line in [
        "ExecStart=/usr/local/bin/case-export serve --config /etc/case-export/config.toml",
        "DynamicUser=yes",
        "StateDirectory=case-export",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "LimitCORE=0",
        "MemoryDenyWriteExecute=yes",
    ] {
        assert!(u.lines().any(|l| l == line), "unit lacks `{line}`");
    }
    let stop: u64 = u
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.parse().ok())
        .expect("TimeoutStopSec");
    assert!(stop > Config::default().shutdown_grace_secs);
}

/// Descriptors the server needs besides its connections (databases,
/// listeners, runtime); the server's own check uses the same reserve.
const FD_RESERVE: u64 = 256;

#[test]
fn file_limits_leave_room_for_the_connection_cap() {
    // systemd: enough for every listener full, with the default cap.
    let u = read("deploy/systemd/case-export.service");
    let nofile: u64 = u
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .and_then(|v| v.parse().ok())
        .expect("LimitNOFILE");
    let d = Config::default();
    assert!(
        nofile >= 3 * d.max_connections as u64 + FD_RESERVE,
        "LimitNOFILE={nofile} is below 3 x max_connections + {FD_RESERVE}"
    );
    // Kubernetes cannot set it: the image's config names its cap, and the
    // manifest says where the limit comes from.
    let c = container_config();
    assert!(
        read("deploy/container.toml")
            .contains(&format!("\nmax_connections = {}", c.max_connections)),
        "deploy/container.toml sets max_connections explicitly"
    );
    let s = read("deploy/k8s/statefulset.yaml");
    let note: String = s
        .lines()
        .filter(|l| l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        note.contains("file-descriptor limit") && note.contains("max_connections"),
        "statefulset.yaml explains the file-descriptor limit"
    );
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("systemd-analyze not installed: unit checked by the other tests only");
        return;
    };
    assert!(out.status.success());
    // Point ExecStart at the built binary so verify can check it exists.
    let dir = tempfile::tempdir().unwrap();
    let unit = read("deploy/systemd/case-export.service").replace(
        "/usr/local/bin/case-export",
        env!("CARGO_BIN_EXE_case-export"),
    );
    let path = dir.path().join("case-export.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    // Complaints about the host (no running systemd) are not about the unit.
    let about_unit: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("case-export.service"))
        .collect();
    assert!(about_unit.is_empty(), "systemd-analyze verify:\n{err}");
}
