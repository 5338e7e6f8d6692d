//! A `moto_server` child process on a free 127.0.0.1 port, an SDK configuration that
//! points at it, and helpers that seed it (network, images, databases, snapshots,
//! repositories, parameters) through the AWS SDK. Test-only; does process and
//! network I/O.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::Credentials;
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use base64::Engine as _;
use featureenv_operator::cloud::CallObserver;
use sha2::{Digest as _, Sha256};

/// moto's fixed account id.
pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "ap-southeast-1";

/// A running moto server; killed (by its PID, through the `Child` handle) on drop.
pub struct MotoServer {
    child: Child,
    port: u16,
    log: PathBuf,
    config: SdkConfig,
}

impl MotoServer {
    /// Starts `python3 -m moto.server` and waits until it answers HTTP. Panics with
    /// the server's output (and how to install moto) when it cannot start: a test
    /// that needs AWS must not pass without it.
    pub async fn start() -> Self {
        let mut last_log = String::new();
        // A port picked free can be taken before moto binds it; try a few.
        for _ in 0..3 {
            let port = free_port();
            let log = std::env::temp_dir().join(format!("featureenv-moto-{}-{port}.log", std::process::id()));
            let log_file = File::create(&log).expect("create moto log file");
            let recording = log.with_extension("recording");
            let child = Command::new("python3")
                .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
                // The request recorder writes to the working directory unless told.
                .env("MOTO_RECORDER_FILEPATH", &recording)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("clone log handle"))
                .stderr(log_file)
                .spawn()
                .expect("spawn python3 (is Python installed?)");
            let mut server = MotoServer {
                child,
                port,
                log,
                config: SdkConfig::builder().build(),
            };
            if server.wait_until_ready(Duration::from_secs(30)).await {
                server.config = aws_config::defaults(BehaviorVersion::latest())
                    .region(Region::new(REGION))
                    .endpoint_url(server.endpoint())
                    .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
                    .load()
                    .await;
                return server;
            }
            last_log = std::fs::read_to_string(&server.log).unwrap_or_default();
        }
        panic!(
            "moto_server did not start. Install it with `pip install 'moto[server]'` (make setup).\n\
             Last server output:\n{last_log}"
        );
    }

    async fn wait_until_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if http_answers(self.port) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Static test credentials, `REGION`, and the endpoint of this server.
    pub fn sdk_config(&self) -> &SdkConfig {
        &self.config
    }

    pub fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.config)
    }

    pub fn rds(&self) -> aws_sdk_rds::Client {
        aws_sdk_rds::Client::new(&self.config)
    }

    pub fn ssm(&self) -> aws_sdk_ssm::Client {
        aws_sdk_ssm::Client::new(&self.config)
    }

    pub fn ecr(&self) -> aws_sdk_ecr::Client {
        aws_sdk_ecr::Client::new(&self.config)
    }

    /// Starts moto's request recorder: from now on every AWS request is kept, so a
    /// test can check parameters moto accepts but does not model (ClientToken,
    /// PubliclyAccessible, SkipFinalSnapshot, ...).
    pub fn start_recording(&self) {
        let request = format!(
            "POST /moto-api/recorder/start-recording HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            port = self.port
        );
        let response = http_exchange(self.port, &request).expect("start moto recording");
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "start-recording failed:\n{response}"
        );
    }

    /// The form parameters of every recorded query-protocol (EC2, RDS) request with
    /// `Action=<action>`, in order.
    pub fn recorded_form_requests(&self, action: &str) -> Vec<BTreeMap<String, String>> {
        self.recorded_bodies()
            .iter()
            .map(|body| parse_form(body))
            .filter(|params| params.get("Action").map(String::as_str) == Some(action))
            .collect()
    }

    /// The JSON bodies of every recorded JSON-protocol (SSM, ECR) request whose
    /// `X-Amz-Target` ends with `.<operation>`, in order.
    pub fn recorded_json_requests(&self, operation: &str) -> Vec<serde_json::Value> {
        let suffix = format!(".{operation}");
        self.recordings()
            .into_iter()
            .filter(|entry| {
                entry["headers"]["X-Amz-Target"]
                    .as_str()
                    .is_some_and(|target| target.ends_with(&suffix))
            })
            .map(|entry| serde_json::from_str(&recorded_body(&entry)).expect("JSON request body"))
            .collect()
    }

    fn recorded_bodies(&self) -> Vec<String> {
        self.recordings().iter().map(recorded_body).collect()
    }

    fn recordings(&self) -> Vec<serde_json::Value> {
        let request = format!(
            "GET /moto-api/recorder/download-recording HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Connection: close\r\n\r\n",
            port = self.port
        );
        let response = http_exchange(self.port, &request).expect("download moto recording");
        let (_, body) = response.split_once("\r\n\r\n").expect("HTTP response body");
        body.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).expect("recording line is JSON"))
            .collect()
    }

    /// A VPC with one subnet and one security group.
    pub async fn create_network(&self) -> Network {
        let ec2 = self.ec2();
        let vpc = ec2
            .create_vpc()
            .cidr_block("10.0.0.0/16")
            .send()
            .await
            .expect("CreateVpc");
        let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).expect("vpc id").to_owned();
        let subnet = ec2
            .create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block("10.0.1.0/24")
            .availability_zone(format!("{REGION}a"))
            .send()
            .await
            .expect("CreateSubnet");
        let subnet_id = subnet
            .subnet()
            .and_then(|s| s.subnet_id())
            .expect("subnet id")
            .to_owned();
        let group = ec2
            .create_security_group()
            .group_name("featureenv-test")
            .description("feature environments")
            .vpc_id(&vpc_id)
            .send()
            .await
            .expect("CreateSecurityGroup");
        let security_group_id = group.group_id().expect("group id").to_owned();
        Network {
            vpc_id,
            subnet_id,
            security_group_id,
        }
    }

    /// Registers an image and tags it (moto ignores TagSpecifications on
    /// RegisterImage, so the tags are a separate CreateTags, as a pipeline may do).
    /// moto stamps CreationDate with whole seconds; callers that need distinct
    /// dates use [`Self::register_images_in_order`].
    pub async fn register_image(&self, name: &str, tags: &[(&str, &str)]) -> String {
        let ec2 = self.ec2();
        let output = ec2
            .register_image()
            .name(name)
            .root_device_name("/dev/xvda")
            .architecture(aws_sdk_ec2::types::ArchitectureValues::X8664)
            .send()
            .await
            .expect("RegisterImage");
        let id = output.image_id().expect("image id").to_owned();
        if !tags.is_empty() {
            ec2.create_tags()
                .resources(&id)
                .set_tags(Some(ec2_tags(tags)))
                .send()
                .await
                .expect("CreateTags on image");
        }
        id
    }

    /// Registers images oldest first, a little over a second apart, so each has its
    /// own CreationDate (moto's resolution is one second).
    pub async fn register_images_in_order(&self, images: &[(&str, &[(&str, &str)])]) -> Vec<String> {
        let mut ids = Vec::new();
        for (i, (name, tags)) in images.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(1100)).await;
            }
            ids.push(self.register_image(name, tags).await);
        }
        ids
    }

    /// An instance we did not launch (no featureenv tags), for filtering tests.
    pub async fn run_foreign_instance(&self, image_id: &str, subnet_id: &str, tags: &[(&str, &str)]) -> String {
        let mut request = self
            .ec2()
            .run_instances()
            .image_id(image_id)
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .subnet_id(subnet_id)
            .min_count(1)
            .max_count(1);
        if !tags.is_empty() {
            request = request.tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(ec2_tags(tags)))
                    .build(),
            );
        }
        let output = request.send().await.expect("RunInstances (foreign)");
        output.instances()[0].instance_id().expect("instance id").to_owned()
    }

    pub async fn volumes_of(&self, instance_id: &str) -> Vec<aws_sdk_ec2::types::Volume> {
        let output = self
            .ec2()
            .describe_volumes()
            .filters(
                Filter::builder()
                    .name("attachment.instance-id")
                    .values(instance_id)
                    .build(),
            )
            .send()
            .await
            .expect("DescribeVolumes");
        output.volumes().to_vec()
    }

    /// IAM has no SDK crate in this workspace; moto speaks the IAM query protocol and
    /// does not verify signatures, so one form POST creates the profile.
    pub fn create_instance_profile(&self, name: &str) {
        let body = format!("Action=CreateInstanceProfile&Version=2010-05-08&InstanceProfileName={name}");
        let request = format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, \
             SignedHeaders=host, Signature=0\r\n\
             Content-Length: {len}\r\nConnection: close\r\n\r\n{body}",
            port = self.port,
            len = body.len()
        );
        let response = http_exchange(self.port, &request).expect("IAM CreateInstanceProfile");
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "CreateInstanceProfile failed:\n{response}"
        );
    }

    /// The integration database the pool restores from.
    pub async fn create_source_database(&self, id: &str) {
        self.rds()
            .create_db_instance()
            .db_instance_identifier(id)
            .db_instance_class("db.t3.micro")
            .engine("postgres")
            .master_username("integration")
            .master_user_password("integration-password")
            .allocated_storage(20)
            .send()
            .await
            .expect("CreateDBInstance");
    }

    pub async fn create_snapshot(&self, source_db: &str, snapshot_id: &str) {
        self.rds()
            .create_db_snapshot()
            .db_instance_identifier(source_db)
            .db_snapshot_identifier(snapshot_id)
            .send()
            .await
            .expect("CreateDBSnapshot");
    }

    pub async fn create_db_subnet_group(&self, name: &str, subnet_ids: &[String]) {
        self.rds()
            .create_db_subnet_group()
            .db_subnet_group_name(name)
            .db_subnet_group_description("feature environments")
            .set_subnet_ids(Some(subnet_ids.to_vec()))
            .send()
            .await
            .expect("CreateDBSubnetGroup");
    }

    /// Creates a repository and returns its URI (`<account>.dkr.ecr.<region>.amazonaws.com/<name>`).
    pub async fn create_repository(&self, name: &str) -> String {
        let output = self
            .ecr()
            .create_repository()
            .repository_name(name)
            .send()
            .await
            .expect("CreateRepository");
        output
            .repository()
            .and_then(|r| r.repository_uri())
            .expect("repository uri")
            .to_owned()
    }

    /// Pushes a manifest under `tag` and returns its digest. The digest is passed
    /// explicitly as the sha256 of the manifest bytes, as a registry computes it
    /// (moto would otherwise derive one from the layer digests).
    pub async fn put_image(&self, repository: &str, tag: &str, config_digest: &str) -> String {
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": 1234,
                "digest": config_digest,
            },
            "layers": [],
        })
        .to_string();
        let digest = format!("sha256:{:x}", Sha256::digest(manifest.as_bytes()));
        self.ecr()
            .put_image()
            .repository_name(repository)
            .image_manifest(&manifest)
            .image_tag(tag)
            .image_digest(&digest)
            .send()
            .await
            .expect("PutImage");
        digest
    }

    pub async fn put_string_parameter(&self, name: &str, value: &str) {
        self.ssm()
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .send()
            .await
            .expect("PutParameter");
    }
}

/// hack/fault_proxy.py (the strict AWS layer, no faults, fast timing) in front of a
/// moto server, and an SDK configuration that goes through it; killed by PID on drop.
pub struct StrictLayer {
    child: Child,
    pub config: SdkConfig,
}

impl StrictLayer {
    pub async fn start(moto: &MotoServer) -> Self {
        let root = super::root::repo_root();
        let addr_file =
            std::env::temp_dir().join(format!("featureenv-strict-{}-{}.addr", std::process::id(), moto.port));
        let child = Command::new("python3")
            .arg(format!("{root}/hack/fault_proxy.py"))
            .args(["--listen", "127.0.0.1:0", "--upstream", &moto.endpoint(), "--rate", "0"])
            .stdin(Stdio::null())
            .stdout(File::create(&addr_file).expect("proxy address file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn hack/fault_proxy.py");
        let deadline = Instant::now() + Duration::from_secs(30);
        let address = loop {
            let text = std::fs::read_to_string(&addr_file).unwrap_or_default();
            if let Some(line) = text.lines().next().filter(|_| text.contains('\n')) {
                break line.trim().to_owned();
            }
            assert!(Instant::now() < deadline, "the strict layer did not print its address");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let _ = std::fs::remove_file(&addr_file);
        let config = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(format!("http://{address}"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
            .load()
            .await;
        Self { child, config }
    }
}

impl Drop for StrictLayer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // Only our own child, by its handle (its PID); then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(self.log.with_extension("recording"));
    }
}

pub struct Network {
    pub vpc_id: String,
    pub subnet_id: String,
    pub security_group_id: String,
}

/// Records every `observe` call, to assert on request counts and outcomes.
#[derive(Default)]
pub struct RecordingObserver {
    calls: Mutex<Vec<(String, String, String)>>,
}

impl RecordingObserver {
    pub fn calls(&self) -> Vec<(String, String, String)> {
        self.calls.lock().unwrap().clone()
    }

    /// How many requests of `operation` were made with `outcome`.
    pub fn count(&self, operation: &str, outcome: &str) -> usize {
        self.calls()
            .iter()
            .filter(|(_, op, out)| op == operation && out == outcome)
            .count()
    }

    pub fn clear(&self) {
        self.calls.lock().unwrap().clear();
    }
}

impl CallObserver for RecordingObserver {
    fn observe(&self, service: &'static str, operation: &'static str, outcome: &'static str) {
        self.calls
            .lock()
            .unwrap()
            .push((service.to_owned(), operation.to_owned(), outcome.to_owned()));
    }
}

pub fn ec2_tags(tags: &[(&str, &str)]) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
        .collect()
}

fn recorded_body(entry: &serde_json::Value) -> String {
    let body = entry["body"].as_str().unwrap_or_default();
    if entry["body_encoded"].as_bool() == Some(true) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("base64 body");
        String::from_utf8(bytes).expect("UTF-8 body")
    } else {
        body.to_owned()
    }
}

/// `application/x-www-form-urlencoded` to a map (last value wins; AWS query
/// parameters are unique by their indexed names).
fn parse_form(body: &str) -> BTreeMap<String, String> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

fn http_answers(port: u16) -> bool {
    let request = format!("GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    http_exchange(port, &request).is_ok_and(|response| response.starts_with("HTTP/"))
}

fn http_exchange(port: u16, request: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}
