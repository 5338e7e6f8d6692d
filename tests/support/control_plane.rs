//! A real Kubernetes control plane for tests and the local stack: the upstream `etcd`
//! and `kube-apiserver` (no kubelet, no controller-manager; what controller-runtime's
//! envtest runs) on free 127.0.0.1 ports. Test-only; does process and file I/O.
//!
//! The API server runs with RBAC authorization, client-certificate authentication
//! (a generated CA and an admin certificate in `system:masters`), a service-account
//! issuer and signing key (so the TokenRequest API hands out tokens for the operator's
//! ServiceAccount), and an audit log of every request at `Metadata` level.
//!
//! The binaries come from `hack/k8s-binaries.sh` (`$KUBEBUILDER_ASSETS`, `PATH`, or a
//! one-time build from the pinned upstream Go modules). Both processes are children of
//! this process, stopped by PID on drop; a tether process kills them by PID if this
//! process dies without dropping (a SIGKILLed test), so no etcd or apiserver outlives it.
//!
//! There is no controller-manager: no garbage collector (owner references are never
//! followed) and no namespace finalizer (a deleted namespace stays `Terminating`).

use super::root::repo_root;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// The repository root (scripts are addressed from here).
/// The admin's user name in the audit log (its certificate's CN).
pub const ADMIN_USER: &str = "featureenv-admin";

/// Where `hack/k8s-binaries.sh` put `kube-apiserver`, `etcd` and `kubectl`; asked once
/// per process (a build, if one is needed, prints its progress on stderr).
pub fn binaries() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new(format!("{}/hack/k8s-binaries.sh", repo_root()))
            .stderr(Stdio::inherit())
            .output()
            .expect("run hack/k8s-binaries.sh");
        assert!(
            out.status.success(),
            "hack/k8s-binaries.sh failed (see its message above); set KUBEBUILDER_ASSETS to a directory with kube-apiserver, etcd and kubectl to skip the build"
        );
        PathBuf::from(String::from_utf8(out.stdout).expect("UTF-8 path").trim())
    })
}

/// The `kubectl` matching the control plane's version.
pub fn kubectl() -> PathBuf {
    binaries().join("kubectl")
}

pub struct ControlPlane {
    dir: PathBuf,
    /// Kept alive for the control plane's life; `None` when the caller owns `dir`.
    _tempdir: Option<tempfile::TempDir>,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    tether: Option<Child>,
    pub port: u16,
    ca_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
}

/// A PEM certificate and its key.
struct Issued {
    cert: String,
    key: String,
}

impl ControlPlane {
    /// Starts a control plane in a fresh temporary directory.
    pub async fn start() -> ControlPlane {
        let tempdir = tempfile::Builder::new()
            .prefix("featureenv-k8s-")
            .tempdir()
            .expect("temp dir");
        let dir = tempdir.path().to_path_buf();
        let mut plane = Self::start_in(&dir).await;
        plane._tempdir = Some(tempdir);
        plane
    }

    /// Starts a control plane whose files (certificates, etcd data, logs, audit log,
    /// admin kubeconfig) live in `dir`, which the caller keeps.
    ///
    /// Ports are picked free and then bound by etcd and kube-apiserver, so another
    /// process (a parallel test) can take one in between; such a start is retried on
    /// new ports, up to three times.
    pub async fn start_in(dir: &Path) -> ControlPlane {
        const ATTEMPTS: u32 = 3;
        for attempt in 1..=ATTEMPTS {
            match Self::try_start_in(dir).await {
                Ok(plane) => return plane,
                Err(e) if attempt < ATTEMPTS && e.contains("address already in use") => {
                    eprintln!("control plane: a port was taken before it was bound; starting again ({attempt})");
                    let _ = std::fs::remove_dir_all(dir.join("etcd"));
                }
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!("the last attempt panics")
    }

    async fn try_start_in(dir: &Path) -> Result<ControlPlane, String> {
        install_crypto_provider();
        std::fs::create_dir_all(dir).expect("control plane dir");
        let bin = binaries();
        let pki = write_pki(dir);
        let etcd_port = free_port();
        let peer_port = free_port();
        let port = free_port();

        let etcd = Command::new(bin.join("etcd"))
            .args(["--name", "featureenv-test", "--data-dir"])
            .arg(dir.join("etcd"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-cluster=featureenv-test=http://127.0.0.1:{peer_port}"
            ))
            // Durability is worthless in a throw-away test store; fsync is most of etcd's latency.
            .arg("--unsafe-no-fsync")
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log_file(dir, "etcd.log"))
            .stderr(log_file(dir, "etcd.log"))
            .spawn()
            .expect("spawn etcd");
        let mut plane = ControlPlane {
            dir: dir.to_path_buf(),
            _tempdir: None,
            etcd: Some(etcd),
            apiserver: None,
            tether: None,
            port,
            ca_pem: pki.ca.cert,
            admin_cert_pem: pki.admin.cert,
            admin_key_pem: pki.admin.key,
        };
        std::fs::write(dir.join("audit-policy.yaml"), AUDIT_POLICY).expect("audit policy");
        let apiserver = Command::new(bin.join("kube-apiserver"))
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={port}"))
            .arg(format!("--cert-dir={}", dir.display()))
            .arg(format!("--tls-cert-file={}", dir.join("serving.crt").display()))
            .arg(format!("--tls-private-key-file={}", dir.join("serving.key").display()))
            .arg(format!("--client-ca-file={}", dir.join("ca.crt").display()))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--service-account-issuer=https://127.0.0.1:{port}"))
            .arg(format!("--service-account-key-file={}", dir.join("sa.pub").display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                dir.join("sa.key").display()
            ))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg(format!(
                "--audit-policy-file={}",
                dir.join("audit-policy.yaml").display()
            ))
            .arg(format!("--audit-log-path={}", dir.join("audit.jsonl").display()))
            .args(["--audit-log-format=json", "--audit-log-mode=blocking"])
            // Without a controller-manager nothing maintains the kubernetes Service's
            // endpoints; the default reconciler would rewrite them every few seconds.
            .arg("--endpoint-reconciler-type=none")
            .arg("--profiling=false")
            .args(["--v", "1"])
            .stdin(Stdio::null())
            .stdout(log_file(dir, "kube-apiserver.log"))
            .stderr(log_file(dir, "kube-apiserver.log"))
            .spawn()
            .expect("spawn kube-apiserver");
        plane.apiserver = Some(apiserver);
        plane.tether = Some(tether(&[
            plane.etcd.as_ref().unwrap().id(),
            plane.apiserver.as_ref().unwrap().id(),
        ]));
        std::fs::write(plane.admin_kubeconfig(), plane.admin_kubeconfig_yaml()).expect("admin kubeconfig");
        plane.wait_ready(Duration::from_secs(90)).await?;
        Ok(plane)
    }

    /// Waits for /readyz; an error says which process exited during start-up, with
    /// the tail of its log (the caller stops the other by dropping the plane).
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let client = self.client_with_agent("featureenv-test-readyz").await;
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            for (name, child) in [("etcd", &mut self.etcd), ("kube-apiserver", &mut self.apiserver)] {
                if let Some(Ok(Some(status))) = child.as_mut().map(Child::try_wait) {
                    return Err(format!(
                        "{name} exited with {status} during start-up:\n{}",
                        tail(&self.dir.join(format!("{name}.log")), 30)
                    ));
                }
            }
            let request = axum::http::Request::get("/readyz").body(Vec::new()).expect("request");
            match client.request_text(request).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => last = body,
                Err(e) => last = e.to_string(),
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready after {timeout:?}: {last}\n{}",
                tail(&self.dir.join("kube-apiserver.log"), 30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The PIDs of etcd and kube-apiserver, while they run.
    pub fn pids(&self) -> Vec<u32> {
        [&self.etcd, &self.apiserver]
            .iter()
            .filter_map(|c| c.as_ref().map(Child::id))
            .collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.jsonl")
    }

    /// The audit log's events (JSON lines, `audit.k8s.io/v1` `Event`s) so far.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.audit_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn admin_kubeconfig_yaml(&self) -> String {
        self.admin_kubeconfig_yaml_via(&self.server())
    }

    /// The admin kubeconfig, reaching the API server at `server` (a proxy in front
    /// of it; the serving certificate names 127.0.0.1, so any local port will do).
    fn admin_kubeconfig_yaml_via(&self, server: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        kubeconfig_yaml(
            server,
            &self.ca_pem,
            "admin",
            &[
                ("client-certificate-data", b64(&self.admin_cert_pem)),
                ("client-key-data", b64(&self.admin_key_pem)),
            ],
        )
    }

    /// An admin (`system:masters`) client that names itself `user_agent`, so the audit
    /// log tells its requests from the operator's.
    pub async fn client_with_agent(&self, user_agent: &'static str) -> kube::Client {
        client_from_kubeconfig(&self.admin_kubeconfig_yaml(), user_agent).await
    }

    /// An admin client that reaches the API server through `server` (a proxy).
    pub async fn client_via(&self, server: &str, user_agent: &'static str) -> kube::Client {
        client_from_kubeconfig(&self.admin_kubeconfig_yaml_via(server), user_agent).await
    }

    /// `host:port` the API server listens on.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Writes a kubeconfig at `path` that authenticates as ServiceAccount `namespace/name`
    /// with a token from the TokenRequest API (valid for a day). The ServiceAccount must
    /// exist.
    pub async fn write_service_account_kubeconfig(&self, namespace: &str, name: &str, path: &Path) {
        let client = self.client_with_agent("featureenv-test-setup").await;
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 86400},
        });
        let request = axum::http::Request::post(format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).expect("JSON"))
            .expect("request");
        let response: serde_json::Value = client
            .request(request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"));
        let token = response["status"]["token"]
            .as_str()
            .expect("token in TokenRequest status");
        let yaml = kubeconfig_yaml(&self.server(), &self.ca_pem, name, &[("token", token.to_owned())]);
        std::fs::write(path, yaml).expect("service account kubeconfig");
    }

    /// Stops the API server, then etcd (SIGKILL by PID: neither holds state worth a
    /// graceful shutdown), and the tether.
    pub fn stop(&mut self) {
        for child in [self.apiserver.take(), self.etcd.take(), self.tether.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every request, at Metadata level (who, what, the answer; no bodies), once its
/// response is complete.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
";

struct Pki {
    ca: Issued,
    admin: Issued,
}

/// A CA, the API server's serving certificate for 127.0.0.1, the admin's client
/// certificate, and the service-account signing key, written into `dir`.
fn write_pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "featureenv-test-ca");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");

    let issue = |names: Vec<String>, ips: bool, cn: &str, org: Option<&str>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        if ips {
            params
                .subject_alt_names
                .push(SanType::IpAddress(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST)));
        }
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(org) = org {
            params.distinguished_name.push(DnType::OrganizationName, org);
        }
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca_cert, &ca_key).expect("certificate");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    };
    let serving = issue(
        vec!["localhost".into()],
        true,
        "kube-apiserver",
        None,
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let admin = issue(
        Vec::new(),
        false,
        ADMIN_USER,
        Some("system:masters"),
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let sa_key = KeyPair::generate().expect("service account key");
    let ca = Issued {
        cert: ca_cert.pem(),
        key: ca_key.serialize_pem(),
    };
    for (name, text) in [
        ("ca.crt", &ca.cert),
        ("serving.crt", &serving.cert),
        ("serving.key", &serving.key),
        ("sa.key", &sa_key.serialize_pem()),
        // The verifying side reads public keys (or RSA private keys) only.
        ("sa.pub", &sa_key.public_key_pem()),
    ] {
        std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"));
    }
    Pki { ca, admin }
}

fn kubeconfig_yaml(server: &str, ca_pem: &str, user: &str, credentials: &[(&str, String)]) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let credentials: Vec<String> = credentials.iter().map(|(k, v)| format!("      {k}: {v}")).collect();
    let credentials = credentials.join("\n");
    format!(
        "apiVersion: v1
kind: Config
clusters:
  - name: featureenv-test
    cluster:
      server: {server}
      certificate-authority-data: {ca}
users:
  - name: {user}
    user:
{credentials}
contexts:
  - name: {user}
    context:
      cluster: featureenv-test
      user: {user}
current-context: {user}
"
    )
}

pub async fn client_from_kubeconfig(yaml: &str, user_agent: &'static str) -> kube::Client {
    install_crypto_provider();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(yaml).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .expect("client config");
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(user_agent),
    ));
    kube::Client::try_from(config).expect("kube client")
}

/// kube (ring) and the AWS SDK (aws-lc-rs) both bring a rustls provider; pick one, as
/// the operator's main does.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A shell that polls this process every half second and, once it is gone, kills
/// `pids` by PID: the only way to stop children of a process that was SIGKILLed.
fn tether(pids: &[u32]) -> Child {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    Command::new("sh")
        .arg("-c")
        .arg(r#"parent="$1"; shift; while kill -0 "$parent" 2>/dev/null; do sleep 0.5; done; kill -KILL "$@" 2>/dev/null; exit 0"#)
        .arg("tether")
        .arg(std::process::id().to_string())
        .args(&pids)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tether")
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("log file");
    let _ = writeln!(file, "---- started by featureenv test control plane");
    file
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// The last `lines` of a log, without kube-apiserver's dump of its flags (which
/// would otherwise push the one error line out of the tail).
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.contains("] FLAG: ")).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
