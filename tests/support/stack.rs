//! The local stack as a Rust test harness: the real `kube-apiserver` and `etcd`
//! ([`ControlPlane`], with an audit log), `moto_server` seeded by `hack/seed_aws.py`,
//! `hack/fault_proxy.py` (the strict AWS layer, with faults when asked) between the
//! operator and moto, the CRDs plus the
//! example class and pool applied with `kubectl`, the chart's ServiceAccount and RBAC,
//! `hack/boot_simulator.py`, and any number of real `featureenv-operator run`
//! subprocesses. Everything binds 127.0.0.1 on free ports.
//!
//! The operators authenticate as the chart's ServiceAccount (a TokenRequest token),
//! bound to nothing but the chart's rendered rules: a grant missing from the chart is
//! a 403 here. The test's own client and `kubectl` are cluster admins.
//!
//! Every child is ours, held by its `Child` handle and killed by PID on drop. Logs live
//! in a temporary directory; when the test panics the directory is kept and the tail of
//! every log is printed, because an end-to-end failure is undiagnosable without them.

use super::root::repo_root;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::control_plane::{self, ControlPlane};
use featureenv_operator::api::{FeatureEnvironment, RdsPool};
use kube::api::{Api, DeleteParams, Patch, PatchParams};

use super::moto::{MotoServer, REGION};

/// The repository root (tests run with the package root as working directory, but
/// be explicit: scripts and manifests are addressed from here).
/// The operator binary cargo built for this test run.
pub const OPERATOR_BIN: &str = env!("CARGO_BIN_EXE_featureenv-operator");
/// What the test's own Kubernetes client calls itself, so the RBAC proof can tell its
/// requests from the operator's in the audit log.
pub const TEST_USER_AGENT: &str = "featureenv-e2e";
pub const TAG_CLUSTER: &str = "featureenv.io/cluster";
/// The chart's release namespace in the stack: the ServiceAccount, the Role and the
/// Lease live here.
pub const RELEASE_NAMESPACE: &str = "featureenv-system";
/// The chart's ServiceAccount (release `featureenv`), as the audit log names it.
pub const OPERATOR_USER: &str = "system:serviceaccount:featureenv-system:featureenv-featureenv-operator";

/// How a stack is built; `Default` is a light single-operator stack.
#[derive(Clone, Debug)]
pub struct StackOptions {
    pub cluster_id: String,
    /// FEATUREENV_SIM_BOOT_SECONDS for the boot simulator.
    pub boot_seconds: f64,
    /// The fault rate of hack/fault_proxy.py, the strict AWS layer that always sits
    /// between the operators and moto (documented AWS rules moto skips, AWS's timing
    /// at the fast profile, and a log of every call). `None` or `Some(0.0)`: no faults.
    pub fault_rate: Option<f64>,
    pub fault_seed: u64,
    /// The strict layer's AWS timing profile and scale (`--timing`, `--time-scale`):
    /// `fast` keeps tests quick, `realistic` plays documented durations.
    pub aws_timing: (String, f64),
    pub fast_poll: String,
    pub slow_poll: String,
    pub janitor_interval: String,
    pub janitor_grace: String,
    pub lease_duration: String,
    /// The strict layer starts a database stopped this long again by itself, as RDS
    /// does after seven days (`--rds-auto-start-seconds`); `None`: the profile's.
    pub rds_auto_start_seconds: Option<f64>,
    /// RdsPool `integration` overrides (warm, maxSize) applied after the example.
    pub pool: Option<(u32, u32)>,
    /// Build the operator processes from this binary (the bench uses a release build).
    pub operator_bin: PathBuf,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            cluster_id: "e2e".into(),
            boot_seconds: 1.0,
            fault_rate: None,
            fault_seed: 42,
            aws_timing: ("fast".into(), 1.0),
            fast_poll: "500ms".into(),
            slow_poll: "5s".into(),
            janitor_interval: "1h".into(),
            janitor_grace: "1h".into(),
            lease_duration: "15s".into(),
            pool: None,
            rds_auto_start_seconds: None,
            operator_bin: PathBuf::from(OPERATOR_BIN),
        }
    }
}

/// One operator subprocess.
pub struct Operator {
    pub name: String,
    pub child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
}

impl Operator {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub struct Stack {
    pub opts: StackOptions,
    pub dir: PathBuf,
    tempdir: Option<tempfile::TempDir>,
    pub moto: MotoServer,
    /// The endpoint the operators use: the fault proxy's when there is one, else moto's.
    pub aws_endpoint: String,
    pub seed: serde_json::Value,
    /// The admin kubeconfig (tests and kubectl).
    pub kubeconfig: PathBuf,
    /// The operators' kubeconfig: the chart's ServiceAccount.
    pub operator_kubeconfig: PathBuf,
    pub client: kube::Client,
    proxy: Option<Child>,
    boot_sim: Option<Child>,
    pub operators: Vec<Operator>,
    /// Last, so it is dropped after every process that talks to it.
    pub control_plane: ControlPlane,
}

impl Stack {
    /// Starts everything but the operators (see [`Stack::start_operator`]).
    pub async fn start(opts: StackOptions) -> Stack {
        let tempdir = tempfile::Builder::new()
            .prefix("featureenv-e2e-")
            .tempdir()
            .expect("temp dir");
        let dir = tempdir.path().to_path_buf();
        let control_plane = ControlPlane::start_in(&dir.join("k8s")).await;
        let operator_kubeconfig = dir.join("operator.kubeconfig");
        let kubeconfig = control_plane.admin_kubeconfig();
        let client = control_plane.client_with_agent(TEST_USER_AGENT).await;
        let moto = MotoServer::start().await;
        let mut stack = Stack {
            aws_endpoint: moto.endpoint(),
            opts,
            dir,
            tempdir: Some(tempdir),
            moto,
            seed: serde_json::Value::Null,
            kubeconfig,
            operator_kubeconfig,
            client,
            proxy: None,
            boot_sim: None,
            operators: Vec::new(),
            control_plane,
        };
        stack.seed_aws();
        stack.start_fault_proxy(stack.opts.fault_rate.unwrap_or(0.0));
        stack.apply_crds_class_pool().await;
        stack.install_operator_rbac().await;
        stack.start_boot_simulator();
        stack
    }

    /// A stack with one operator that leads.
    pub async fn with_operator(opts: StackOptions) -> Stack {
        let mut stack = Stack::start(opts).await;
        stack.start_operator("op-a").await;
        stack.wait_leading(0, Duration::from_secs(60)).await;
        stack
    }

    fn seed_aws(&mut self) {
        let out = self.dir.join("seed.json");
        let status = Command::new("python3")
            .arg(format!("{}/hack/seed_aws.py", repo_root()))
            .args(["--endpoint", &self.moto.endpoint(), "--region", REGION])
            .args(["--cluster-id", &self.opts.cluster_id])
            .arg("--out")
            .arg(&out)
            .stdout(self.log_file("seed.log"))
            .stderr(self.log_file("seed.log"))
            .status()
            .expect("run hack/seed_aws.py");
        assert!(
            status.success(),
            "hack/seed_aws.py failed: {}",
            self.tail("seed.log", 40)
        );
        self.seed =
            serde_json::from_str(&std::fs::read_to_string(&out).expect("seed.json")).expect("seed.json is JSON");
    }

    /// A seed variable (SUBNET_ID, ECR_REGISTRY, AMI_ID_NEWER, ...).
    pub fn var(&self, name: &str) -> String {
        self.seed["vars"][name]
            .as_str()
            .unwrap_or_else(|| panic!("seed var {name} missing"))
            .to_owned()
    }

    fn start_fault_proxy(&mut self, rate: f64) {
        let addr_file = self.dir.join("fault-proxy.addr");
        let auto_start: Vec<String> = self
            .opts
            .rds_auto_start_seconds
            .map(|s| vec!["--rds-auto-start-seconds".to_owned(), s.to_string()])
            .unwrap_or_default();
        let child = Command::new("python3")
            .arg(format!("{}/hack/fault_proxy.py", repo_root()))
            .args(&auto_start)
            .args(["--listen", "127.0.0.1:0", "--upstream", &self.moto.endpoint()])
            .args(["--rate", &rate.to_string(), "--seed", &self.opts.fault_seed.to_string()])
            .args(["--timing", &self.opts.aws_timing.0])
            .args(["--time-scale", &self.opts.aws_timing.1.to_string()])
            // IAM at request time: the operators' calls (access key `testing`) are
            // refused with AWS's error when docs/iam-policy.json would deny them.
            .args(["--iam-policy", &format!("{}/docs/iam-policy.json", repo_root())])
            .args(["--iam-cluster-id", &self.opts.cluster_id])
            .args(["--iam-access-key", "testing"])
            // GetConsoleOutput of a simulated instance answers its real console.
            .arg("--instances-dir")
            .arg(self.dir.join("instances"))
            .arg("--log")
            .arg(self.dir.join("aws-calls.jsonl"))
            .stdin(Stdio::null())
            // A file, not a pipe: nobody reads a pipe after the first line.
            .stdout(File::create(&addr_file).expect("proxy addr file"))
            .stderr(self.log_file("fault-proxy.log"))
            .spawn()
            .expect("spawn hack/fault_proxy.py");
        self.proxy = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&addr_file).unwrap_or_default();
            if let Some(line) = text.lines().next().filter(|_| text.contains('\n')) {
                self.aws_endpoint = format!("http://{}", line.trim());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "fault proxy did not print its address: {}",
                self.tail("fault-proxy.log", 20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The fault proxy's request log (JSON lines), if there is a proxy.
    pub fn aws_call_log(&self) -> PathBuf {
        self.dir.join("aws-calls.jsonl")
    }

    pub fn aws_calls(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.aws_call_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    async fn apply_crds_class_pool(&mut self) {
        self.kubectl_ok(&["apply", "-f", &format!("{}/crds/", repo_root())])
            .await;
        self.kubectl_ok(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=30s"])
            .await;
        let rendered = self.render(&["examples/featureenvironmentclass.yaml", "examples/rdspool.yaml"]);
        self.apply_ok(&rendered).await;
        if let Some((warm, max)) = self.opts.pool {
            let patch = format!(r#"{{"spec":{{"warm":{warm},"maxSize":{max}}}}}"#);
            self.kubectl_ok(&["patch", "rdspool", "integration", "--type=merge", "-p", &patch])
                .await;
        }
    }

    /// The chart's ServiceAccount, ClusterRole, Role and bindings in [`RELEASE_NAMESPACE`]
    /// (rendered by real Helm), and a kubeconfig with a token of that ServiceAccount
    /// for the operators.
    async fn install_operator_rbac(&mut self) {
        self.kubectl_ok(&["create", "namespace", RELEASE_NAMESPACE]).await;
        self.apply_chart(
            "operator",
            "ServiceAccount,ClusterRole,ClusterRoleBinding,Role,RoleBinding",
        )
        .await;
        let (namespace, name) = OPERATOR_USER
            .strip_prefix("system:serviceaccount:")
            .and_then(|s| s.split_once(':'))
            .expect("service account user name");
        self.control_plane
            .write_service_account_kubeconfig(namespace, name, &self.operator_kubeconfig)
            .await;
    }

    /// Applies the chart's objects of `kinds` labelled `component` (`operator`,
    /// `user-rbac`, `admission`), rendered by real Helm for [`RELEASE_NAMESPACE`].
    pub async fn apply_chart(&self, component: &str, kinds: &str) {
        let output = Command::new("python3")
            .arg(format!("{}/hack/render_chart.py", repo_root()))
            .args(["--namespace", RELEASE_NAMESPACE, "--cluster-id", &self.opts.cluster_id])
            .args(["--component", component, "--kinds", kinds])
            .output()
            .expect("run hack/render_chart.py");
        assert!(
            output.status.success(),
            "hack/render_chart.py failed (make deps installs helm-python-sdk):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let manifests = String::from_utf8(output.stdout).expect("UTF-8 manifests");
        assert!(
            !manifests.trim().is_empty(),
            "the chart has no {component} objects of {kinds}"
        );
        self.apply_ok(&manifests).await;
    }

    /// `hack/render_example.py` of repository files with this stack's seed.
    pub fn render(&self, files: &[&str]) -> String {
        let output = Command::new("python3")
            .arg(format!("{}/hack/render_example.py", repo_root()))
            .arg("--seed")
            .arg(self.dir.join("seed.json"))
            .args(files.iter().map(|f| format!("{}/{f}", repo_root())))
            .output()
            .expect("run hack/render_example.py");
        assert!(
            output.status.success(),
            "render_example failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8 manifests")
    }

    fn start_boot_simulator(&mut self) {
        let child = Command::new("python3")
            .arg(format!("{}/hack/boot_simulator.py", repo_root()))
            .args(["--endpoint", &self.moto.endpoint(), "--region", REGION])
            .args(["--cluster-id", &self.opts.cluster_id, "--interval", "0.25"])
            // The instance's own durations (OS boot, minikube, pulls, rollouts) at the
            // strict layer's profile and scale: `fast` plays none.
            .args(["--timing", &self.opts.aws_timing.0])
            .args(["--time-scale", &self.opts.aws_timing.1.to_string()])
            // Each instance runs its real user data here; its bootstrap.log and the
            // stand-ins' calls.log are kept with the other logs of a failed test.
            .arg("--instances-dir")
            .arg(self.dir.join("instances"))
            .env("FEATUREENV_SIM_BOOT_SECONDS", self.opts.boot_seconds.to_string())
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(self.log_file("boot-simulator.log"))
            .stderr(self.log_file("boot-simulator.log"))
            .spawn()
            .expect("spawn hack/boot_simulator.py");
        self.boot_sim = Some(child);
    }

    /// Boot simulator lines `<ts> bootstrap instance=<id> value=<v> environment=<ns/name> ...`
    /// as (timestamp, instance id, value, environment).
    pub fn bootstrap_tags(&self) -> Vec<(jiff::Timestamp, String, String, String)> {
        self.read_log("boot-simulator.log")
            .lines()
            .filter(|l| l.contains(" bootstrap "))
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let ts: jiff::Timestamp = parts.next()?.parse().ok()?;
                let fields: BTreeMap<&str, &str> = parts.filter_map(|p| p.split_once('=')).collect();
                Some((
                    ts,
                    fields.get("instance")?.to_string(),
                    fields.get("value")?.to_string(),
                    fields.get("environment")?.to_string(),
                ))
            })
            .collect()
    }

    /// Starts `featureenv-operator run` named `name` (its Lease holder id, and the app
    /// id in its AWS user agent, so the call log tells operators apart) and waits for
    /// its HTTP server. Returns its index. Restarting a killed operator reuses its slot.
    pub async fn start_operator(&mut self, name: &str) -> usize {
        let kubeconfig = self.operator_kubeconfig.clone();
        self.start_operator_with(name, &kubeconfig).await
    }

    /// The operators' kubeconfig, reaching the API server through `proxy` (`host:port`).
    pub fn operator_kubeconfig_via(&self, proxy: &str) -> PathBuf {
        let yaml = std::fs::read_to_string(&self.operator_kubeconfig).expect("operator kubeconfig");
        let server = self.control_plane.server();
        assert!(yaml.contains(&server), "kubeconfig does not name {server}");
        let path = self
            .dir
            .join(format!("operator-via-{}.kubeconfig", proxy.replace(':', "-")));
        std::fs::write(&path, yaml.replace(&server, &format!("https://{proxy}"))).expect("write kubeconfig");
        path
    }

    /// [`Stack::start_operator`] with another kubeconfig.
    pub async fn start_operator_with(&mut self, name: &str, kubeconfig: &Path) -> usize {
        let index = match self.operators.iter().position(|o| o.name == name) {
            Some(i) => i,
            None => {
                self.operators.push(Operator {
                    name: name.to_owned(),
                    child: None,
                    port: 0,
                    log: self.dir.join(format!("operator-{name}.log")),
                });
                self.operators.len() - 1
            }
        };
        assert!(
            self.operators[index].child.is_none(),
            "operator {name} is already running"
        );
        let port = free_port();
        // Appending: a restarted operator's log follows its previous life's.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.operators[index].log)
            .expect("operator log");
        let _ = writeln!(&log, "==== e2e: starting operator {name} on port {port}");
        let o = &self.opts;
        let child = Command::new(&o.operator_bin)
            .arg("run")
            .env("KUBECONFIG", kubeconfig)
            .env("AWS_ENDPOINT_URL", &self.aws_endpoint)
            .env("AWS_SDK_UA_APP_ID", name)
            .env("AWS_REGION", REGION)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env("FEATUREENV_CLUSTER_ID", &o.cluster_id)
            .env("FEATUREENV_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("FEATUREENV_FAST_POLL_INTERVAL", &o.fast_poll)
            .env("FEATUREENV_SLOW_POLL_INTERVAL", &o.slow_poll)
            .env("FEATUREENV_JANITOR_INTERVAL", &o.janitor_interval)
            .env("FEATUREENV_JANITOR_GRACE_PERIOD", &o.janitor_grace)
            .env("FEATUREENV_LEADER_ELECTION", "true")
            .env("FEATUREENV_LEASE_DURATION", &o.lease_duration)
            .env("POD_NAMESPACE", RELEASE_NAMESPACE)
            .env("POD_NAME", name)
            .env("FEATUREENV_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn featureenv-operator");
        self.operators[index].child = Some(child);
        self.operators[index].port = port;
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(port, "/healthz").is_none() {
            if let Some(Ok(Some(status))) = self.operators[index].child.as_mut().map(Child::try_wait) {
                panic!(
                    "operator {name} exited with {status}:\n{}",
                    self.operators[index].log_text()
                );
            }
            assert!(Instant::now() < deadline, "operator {name} /healthz never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        index
    }

    /// How many times operator `index` logged "controllers started" (once per life as leader).
    pub fn leadership_count(&self, index: usize) -> usize {
        self.operators[index].log_text().matches("controllers started").count()
    }

    pub async fn wait_leading(&self, index: usize, timeout: Duration) {
        let before = self.operators[index]
            .log_text()
            .rsplit("==== e2e: starting operator")
            .next()
            .map(|l| l.contains("controllers started"))
            .unwrap_or(false);
        if before {
            return;
        }
        let name = self.operators[index].name.clone();
        self.wait_for(&format!("operator {name} to lead"), timeout, || async {
            self.operators[index]
                .log_text()
                .rsplit("==== e2e: starting operator")
                .next()
                .is_some_and(|l| l.contains("controllers started"))
        })
        .await;
    }

    /// SIGKILL (through the `Child` handle, i.e. by PID) and reap operator `index`.
    pub fn kill_operator(&mut self, index: usize) {
        if let Some(mut child) = self.operators[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = writeln!(
                OpenOptions::new()
                    .append(true)
                    .open(&self.operators[index].log)
                    .expect("operator log"),
                "==== e2e: SIGKILLed"
            );
        }
    }

    /// Restarts a killed operator and waits until it leads again.
    pub async fn restart_operator(&mut self, index: usize) {
        let name = self.operators[index].name.clone();
        self.start_operator(&name).await;
        self.wait_leading(index, Duration::from_secs(60)).await;
    }

    /// The operator's /metrics text.
    pub fn metrics(&self, index: usize) -> String {
        http_get(self.operators[index].port, "/metrics").unwrap_or_default()
    }

    /// Peak resident set (VmHWM) of operator `index`, in KiB.
    pub fn peak_rss_kib(&self, index: usize) -> Option<u64> {
        let pid = self.operators[index].pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    // ---- Kubernetes ----

    /// Runs kubectl (the control plane's version) as the admin.
    pub async fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut command = tokio::process::Command::new(control_plane::kubectl());
        command
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.dir.join("kubecache"))
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn kubectl");
        if let Some(text) = stdin {
            use tokio::io::AsyncWriteExt as _;
            let mut pipe = child.stdin.take().expect("kubectl stdin");
            pipe.write_all(text.as_bytes()).await.expect("write kubectl stdin");
            drop(pipe);
        }
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl finished within 60s")
            .expect("kubectl output")
    }

    /// Removes the example class's `maxPerNamespace`, for tests that put more
    /// environments in one namespace than it allows.
    pub async fn lift_namespace_cap(&self) {
        self.kubectl_ok(&[
            "patch",
            "featureenvironmentclass",
            "standard",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/spec/maxPerNamespace"}]"#,
        ])
        .await;
    }

    /// Sets the example class's warm pool to `size` spares.
    pub async fn set_warm_pool(&self, size: u32) {
        let patch = format!(r#"{{"spec":{{"warmPool":{{"size":{size}}}}}}}"#);
        self.kubectl_ok(&[
            "patch",
            "featureenvironmentclass",
            "standard",
            "--type=merge",
            "-p",
            &patch,
        ])
        .await;
    }

    /// The example class's available spares, as its status reports them.
    pub async fn spares_available(&self) -> u32 {
        self.kubectl_ok(&[
            "get",
            "featureenvironmentclass",
            "standard",
            "-o",
            "jsonpath={.status.warmPool.available}",
        ])
        .await
        .parse()
        .unwrap_or(0)
    }

    /// Waits until the example pool `integration` reports at least `warm` spares.
    pub async fn wait_for_warm(&self, warm: u32, timeout: Duration) {
        self.wait_for(&format!("pool integration warm={warm}"), timeout, || async {
            self.pools()
                .get("integration")
                .await
                .ok()
                .and_then(|p| p.status)
                .is_some_and(|s| s.warm >= warm)
        })
        .await;
    }

    /// kubectl that must succeed; returns stdout.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args, None).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` that must succeed.
    pub async fn apply_ok(&self, manifests: &str) -> String {
        let out = self.kubectl(&["apply", "-f", "-"], Some(manifests)).await;
        assert!(
            out.status.success(),
            "kubectl apply failed:\n{}\n{manifests}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A FeatureEnvironment manifest in `default` (or `namespace`) with the PR image of
    /// payments, the example's shape; `extra_spec` lines are added under `spec:`.
    pub fn environment_yaml(&self, namespace: &str, name: &str, extra_spec: &str) -> String {
        let registry = self.var("ECR_REGISTRY");
        let mut yaml = format!(
            "apiVersion: featureenv.io/v1alpha1\nkind: FeatureEnvironment\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  owner: alice@example.com\n  services:\n    - name: payments\n      image: {registry}/payments:pr-123\n"
        );
        for line in extra_spec.lines().filter(|l| !l.trim().is_empty()) {
            yaml.push_str("  ");
            yaml.push_str(line);
            yaml.push('\n');
        }
        yaml
    }

    pub fn environments(&self, namespace: &str) -> Api<FeatureEnvironment> {
        Api::namespaced(self.client.clone(), namespace)
    }

    pub fn pools(&self) -> Api<RdsPool> {
        Api::all(self.client.clone())
    }

    pub async fn get_env(&self, namespace: &str, name: &str) -> Option<FeatureEnvironment> {
        self.environments(namespace)
            .get_opt(name)
            .await
            .expect("get featureenv")
    }

    /// The Ready condition's (status, reason) of an environment.
    pub async fn ready_condition(&self, namespace: &str, name: &str) -> Option<(String, String, String)> {
        let env = self.get_env(namespace, name).await?;
        let status = env.status?;
        status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    }

    pub async fn wait_ready(&self, namespace: &str, name: &str, timeout: Duration) -> FeatureEnvironment {
        self.wait_for(&format!("{namespace}/{name} Ready"), timeout, || async {
            matches!(self.ready_condition(namespace, name).await, Some((s, _, _)) if s == "True")
        })
        .await;
        self.get_env(namespace, name).await.expect("environment exists")
    }

    pub async fn wait_ready_reason(&self, namespace: &str, name: &str, reason: &str, timeout: Duration) -> String {
        self.wait_for(&format!("{namespace}/{name} Ready=False/{reason}"), timeout, || async {
            matches!(self.ready_condition(namespace, name).await, Some((s, r, _)) if s == "False" && r == reason)
        })
        .await;
        self.ready_condition(namespace, name).await.expect("condition").2
    }

    pub async fn delete_env(&self, namespace: &str, name: &str) {
        match self
            .environments(namespace)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => panic!("delete {namespace}/{name}: {e}"),
        }
    }

    pub async fn wait_gone(&self, namespace: &str, name: &str, timeout: Duration) {
        self.wait_for(&format!("{namespace}/{name} gone"), timeout, || async {
            self.get_env(namespace, name).await.is_none()
        })
        .await;
    }

    pub async fn patch_env_spec(&self, namespace: &str, name: &str, spec: serde_json::Value) {
        self.environments(namespace)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": spec})),
            )
            .await
            .expect("patch featureenv spec");
    }

    // ---- AWS (straight to moto, never through the fault proxy) ----

    pub fn ec2(&self) -> aws_sdk_ec2::Client {
        self.moto.ec2()
    }

    pub fn rds(&self) -> aws_sdk_rds::Client {
        self.moto.rds()
    }

    pub fn ssm(&self) -> aws_sdk_ssm::Client {
        self.moto.ssm()
    }

    /// Instances tagged with our cluster, any state but terminated.
    pub async fn our_instances(&self) -> Vec<aws_sdk_ec2::types::Instance> {
        self.instances_with_tag(TAG_CLUSTER, &self.opts.cluster_id)
            .await
            .into_iter()
            .filter(|i| {
                !matches!(
                    i.state().and_then(|s| s.name()),
                    Some(aws_sdk_ec2::types::InstanceStateName::Terminated)
                        | Some(aws_sdk_ec2::types::InstanceStateName::ShuttingDown)
                )
            })
            .collect()
    }

    /// All instances (any state) carrying `key=value`.
    pub async fn instances_with_tag(&self, key: &str, value: &str) -> Vec<aws_sdk_ec2::types::Instance> {
        let out = self
            .ec2()
            .describe_instances()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name(format!("tag:{key}"))
                    .values(value)
                    .build(),
            )
            .send()
            .await
            .expect("DescribeInstances");
        out.reservations()
            .iter()
            .flat_map(|r| r.instances().iter().cloned())
            .collect()
    }

    /// Every DB instance with its tags (moto returns TagList in DescribeDBInstances).
    pub async fn databases(&self) -> Vec<(aws_sdk_rds::types::DbInstance, BTreeMap<String, String>)> {
        let out = self
            .rds()
            .describe_db_instances()
            .send()
            .await
            .expect("DescribeDBInstances");
        out.db_instances()
            .iter()
            .map(|db| {
                let tags = db
                    .tag_list()
                    .iter()
                    .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                    .collect();
                (db.clone(), tags)
            })
            .collect()
    }

    /// DB instances tagged with our cluster that are not being deleted.
    pub async fn our_databases(&self) -> Vec<(aws_sdk_rds::types::DbInstance, BTreeMap<String, String>)> {
        self.databases()
            .await
            .into_iter()
            .filter(|(db, tags)| {
                tags.get(TAG_CLUSTER) == Some(&self.opts.cluster_id)
                    && !matches!(db.db_instance_status(), Some("deleting") | Some("deleted"))
            })
            .collect()
    }

    /// SSM parameter names under the operator's prefix.
    pub async fn our_parameters(&self) -> Vec<String> {
        let out = self
            .ssm()
            .get_parameters_by_path()
            .path("/featureenv")
            .recursive(true)
            .send()
            .await
            .expect("GetParametersByPath");
        out.parameters()
            .iter()
            .filter_map(|p| p.name().map(str::to_owned))
            .filter(|n| n != "/featureenv/ami/latest")
            .collect()
    }

    // ---- waiting and logs ----

    /// Polls `check` every 250 ms until it is true; panics naming `what` on timeout.
    pub async fn wait_for<F, Fut>(&self, what: &str, timeout: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if check().await {
                return;
            }
            if Instant::now() >= deadline {
                let refused = self.refused_operator_requests();
                panic!(
                    "timed out after {timeout:?} waiting for {what}{}",
                    if refused.is_empty() {
                        String::new()
                    } else {
                        format!("; the API server refused the operator: {}", refused.join(", "))
                    }
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub fn log_file(&self, name: &str) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .expect("log file")
    }

    pub fn read_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn tail(&self, name: &str, lines: usize) -> String {
        tail_of(&self.dir.join(name), lines)
    }

    /// The API server's audit events (`audit.k8s.io/v1`) so far.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        self.control_plane.audit_events()
    }

    /// The operators' requests the API server refused (403), from the audit log: a
    /// grant missing from the chart shows up here first, so every failure names it.
    pub fn refused_operator_requests(&self) -> Vec<String> {
        self.audit_events()
            .iter()
            .filter(|e| e["user"]["username"] == OPERATOR_USER && e["responseStatus"]["code"] == 403)
            .map(|e| {
                let object = &e["objectRef"];
                let resource = match object["subresource"].as_str() {
                    Some(sub) => format!("{}/{sub}", object["resource"].as_str().unwrap_or_default()),
                    None => object["resource"].as_str().unwrap_or_default().to_owned(),
                };
                format!(
                    "403 {} {}/{} ({})",
                    e["verb"].as_str().unwrap_or_default(),
                    object["apiGroup"].as_str().unwrap_or_default(),
                    resource,
                    e["requestURI"].as_str().unwrap_or_default()
                )
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Operators first (they act on the others), each by its own handle/PID.
        for op in &mut self.operators {
            if let Some(mut child) = op.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for child in [self.boot_sim.take(), self.proxy.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for refused in self.refused_operator_requests() {
                eprintln!("==== the API server refused the operator (a grant missing from the chart?): {refused}");
            }
            let kept = self.tempdir.take().map(tempfile::TempDir::keep);
            eprintln!("==== e2e stack logs kept in {}", self.dir.display());
            let _ = kept;
            let mut names: Vec<PathBuf> = [self.dir.clone(), self.dir.join("k8s")]
                .iter()
                .filter_map(|dir| std::fs::read_dir(dir).ok())
                .flat_map(|d| d.filter_map(|e| e.ok().map(|e| e.path())))
                .collect();
            names.sort();
            for path in names {
                let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
                if name.ends_with(".log") {
                    eprintln!("==== tail of {name}\n{}", tail_of(&path, 60));
                }
            }
        }
        // The control plane is dropped (and stopped by PID) with the struct.
    }
}

pub fn tail_of(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// A plain HTTP/1.1 GET on 127.0.0.1; the body on a 200, else None.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // axum may answer chunked; de-chunk naively when it does.
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            out.push_str(after.get(..n)?);
            rest = after.get(n + 2..)?;
        }
        return Some(out);
    }
    Some(body.to_owned())
}

/// Sum of a Prometheus counter's samples whose label set matches `filter`.
pub fn metric_sum(text: &str, name: &str, filter: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (metric == name && filter(labels)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
