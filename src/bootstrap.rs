//! The bash scripts an environment's instance runs: the user data at first boot,
//! and a services update sent later through SSM Run Command. Pure (no I/O); the
//! scripts themselves do the work on the instance.
//!
//! Contract with the pre-baked Minikube AMI: `bash`, `curl`, the AWS CLI v2, `docker`,
//! `kubectl` and `minikube` are installed; a Minikube profile for root is baked in with
//! every service deployed as `deployment/<name>` (container `<name>`) in the
//! `default` namespace; the SSM agent runs and is registered (a managed node). The
//! instance profile may pull from ECR, read the environment's SSM parameter and tag
//! its own instance with the outcome of either script.
//!
//! The script carries no secret: the database connection is fetched at boot from the
//! SSM SecureString named in the spec, straight into the Kubernetes Secret
//! [`DATABASE_SECRET`] (key [`DATABASE_SECRET_KEY`]), never through argv or a log.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::cloud::tag;

/// The Kubernetes Secret (namespace `default`) the services read the database
/// connection from.
pub const DATABASE_SECRET: &str = "featureenv-database";
pub const DATABASE_SECRET_KEY: &str = "connection";
/// Where the script logs on the instance (also mirrored to the console, which is
/// what the operator shows when a bootstrap times out).
pub const LOG_FILE: &str = "/var/log/featureenv-bootstrap.log";

/// Where an instance keeps the sequence of the last change of its services it applied.
pub const SEQUENCE_FILE: &str = "/var/lib/featureenv/services-sequence";

/// One service and the image it must run (baseline or override, already merged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceImage {
    pub name: String,
    pub image: String,
}

impl ServiceImage {
    /// The images an environment's status records, as the scripts take them.
    pub fn all_of(images: &[crate::api::environment::DeployedImage]) -> Vec<Self> {
        images
            .iter()
            .map(|i| Self {
                name: i.name.clone(),
                image: i.image.clone(),
            })
            .collect()
    }
}

/// Everything the instance needs to know; deliberately nothing secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapSpec {
    /// `<namespace>/<name>` of the FeatureEnvironment, for logs.
    pub environment: String,
    pub region: String,
    pub services: Vec<ServiceImage>,
    /// Class addons (`ingress`, `dashboard`, `logviewer`, or any Minikube addon).
    pub addons: Vec<String>,
    /// SSM SecureString parameter holding the database connection; never the password.
    pub database_parameter: Option<String>,
    /// How long the script waits for that parameter to become readable: the class's
    /// readiness timeout. The database is claimed in parallel with the launch, and when
    /// the pool has no spare, a restore takes ten minutes or more on RDS.
    pub database_wait_seconds: u64,
}

/// Quotes `value` as one bash word: single quotes, with embedded `'` closed, escaped
/// and reopened. Nothing inside single quotes is expanded, so no value can inject.
pub fn shell_quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

/// The Minikube addon that provides a class addon. `logviewer`/`logs` is Minikube's
/// own `logviewer` addon (a web UI over every pod's logs).
pub fn minikube_addon(addon: &str) -> &str {
    match addon {
        "logviewer" | "logs" | "log-viewer" => "logviewer",
        "dashboard" => "dashboard",
        "ingress" => "ingress",
        other => other,
    }
}

/// `(registry host, region)` when `image` is in a private ECR registry, which needs a
/// `docker login` before pulling.
fn ecr_registry(image: &str) -> Option<(&str, &str)> {
    crate::api::image_ref::ecr_repository(image).map(|r| (r.host, r.region))
}

fn bash_array(name: &str, values: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let words: Vec<String> = values.into_iter().map(|v| shell_quote(v.as_ref())).collect();
    format!("readonly -a {name}=({})\n", words.join(" "))
}

/// What a running instance needs to roll its services to new images (a services
/// update, sent by SSM Run Command). Nothing secret either.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateSpec {
    /// `<namespace>/<name>` of the FeatureEnvironment, for logs.
    pub environment: String,
    pub region: String,
    /// Every service and the image it must run from now on.
    pub services: Vec<ServiceImage>,
    /// Names this update in the outcome tag (`complete:<token>` / `failed:<token>`).
    pub token: String,
    /// Orders the changes of the services sent to one instance: the environment's
    /// `metadata.generation` when the script was sent. SSM's agent runs several
    /// commands at once, so an older one may get the lock after a newer one; it then
    /// leaves the newer images in place.
    pub sequence: i64,
}

/// Renders the user-data script: data as quoted `readonly` values up front, then a
/// fixed body (so `shellcheck` on any rendering checks the same logic).
pub fn render_user_data(spec: &BootstrapSpec) -> String {
    let mut script = header("bootstrap", &spec.environment, &spec.region, &spec.services, 0);
    let _ = writeln!(script, "readonly OUTCOME_TAG={}", shell_quote(tag::BOOTSTRAP));
    let _ = writeln!(
        script,
        "readonly COMPLETE_VALUE={}",
        shell_quote(tag::BOOTSTRAP_COMPLETE)
    );
    let _ = writeln!(script, "readonly FAILED_VALUE={}", shell_quote(tag::BOOTSTRAP_FAILED));
    script.push_str(&database_values(
        spec.database_parameter.as_deref(),
        spec.database_wait_seconds,
    ));
    script.push_str(&bash_array("ADDONS", spec.addons.iter().map(|a| minikube_addon(a))));
    script.push_str(PRELUDE);
    script.push_str(START_MINIKUBE);
    script.push_str(DATABASE);
    script.push_str(BOOTSTRAP);
    script
}

/// The values the database wiring reads: the parameter (empty: no database), how long
/// to wait for it, and the Secret it goes to.
fn database_values(parameter: Option<&str>, wait_seconds: u64) -> String {
    let mut values = String::new();
    let _ = writeln!(
        values,
        "readonly DATABASE_PARAMETER={}",
        shell_quote(parameter.unwrap_or(""))
    );
    let _ = writeln!(values, "readonly DATABASE_WAIT_SECONDS={wait_seconds}");
    let _ = writeln!(values, "readonly DATABASE_SECRET={}", shell_quote(DATABASE_SECRET));
    let _ = writeln!(
        values,
        "readonly DATABASE_SECRET_KEY={}",
        shell_quote(DATABASE_SECRET_KEY)
    );
    values
}

/// What a claimed spare of a warm pool needs to become one environment's: its
/// services' images (those under test among them), its database, and the token its
/// outcome is tagged with. Nothing secret either.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersonaliseSpec {
    pub update: UpdateSpec,
    /// The environment's SSM parameter, as in [`BootstrapSpec::database_parameter`].
    pub database_parameter: Option<String>,
    pub database_wait_seconds: u64,
}

/// Renders the script a claimed spare runs (SSM Run Command) to become the
/// environment's: Minikube up (a `Stopped` pool's spare was just started), the
/// environment's images pulled, the database Secret written and every deployment
/// restarted to read it, the changed deployments rolled, the outcome tagged as an
/// update's (`featureenv.io/services=complete:<token>`).
pub fn render_personalise_script(spec: &PersonaliseSpec) -> String {
    let mut script = command_header("personalisation", &spec.update);
    script.push_str(&database_values(
        spec.database_parameter.as_deref(),
        spec.database_wait_seconds,
    ));
    script.push_str(PRELUDE);
    script.push_str(START_MINIKUBE);
    script.push_str(DATABASE);
    script.push_str(PERSONALISE);
    script
}

/// Renders the script a running instance runs to apply a services update: pull the
/// new images, roll the deployments, tag itself with the outcome. Same prelude as
/// the bootstrap (logging, IMDSv2, the ERR trap that tags the failure).
pub fn render_update_script(spec: &UpdateSpec) -> String {
    command_script("services update", spec, UPDATE)
}

/// Renders the script a started-again instance runs after a sleep: Minikube back up
/// (a stopped instance's containers do not come back by themselves), the deployments
/// rolled out with the images they ran before, the outcome tagged as an update's
/// (`featureenv.io/services=complete:<token>`). The user data does not run again on a
/// start, so this goes over the update channel.
pub fn render_wake_script(spec: &UpdateSpec) -> String {
    let mut script = command_header("wake", spec);
    script.push_str(PRELUDE);
    script.push_str(START_MINIKUBE);
    script.push_str(WAKE);
    script
}

/// Renders the script a spare runs as soon as an environment has tagged it as
/// claimed, before the claim is confirmed: pull the environment's images the spare
/// lacks, nothing else. The confirmation waits for EC2's tags to show (seconds);
/// the pull of an image under test takes longer, so it overlaps the wait instead of
/// following it. Harmless if the claim is then lost (an unused image on another
/// environment's instance), it changes no deployment, reads no database and tags
/// no outcome; the personalisation that follows pulls whatever is still missing
/// (Docker joins a pull of the same image still in progress).
pub fn render_prefetch_script(environment: &str, region: &str, services: &[ServiceImage]) -> String {
    let mut script = header("prefetch", environment, region, services, 0);
    let _ = writeln!(script, "readonly OUTCOME_TAG={}", shell_quote(tag::SERVICES));
    // No outcome to tag, not even a failure: the personalisation reports.
    script.push_str("readonly FAILED_VALUE=''\n");
    script.push_str(PRELUDE);
    script.push_str(PREFETCH);
    script
}

/// A script sent over SSM Run Command: the services, the outcome tag
/// (`featureenv.io/services=complete:<token>` or `failed:<token>`), the prelude, `body`.
fn command_script(task: &str, spec: &UpdateSpec, body: &str) -> String {
    let mut script = command_header(task, spec);
    script.push_str(PRELUDE);
    script.push_str(body);
    script
}

/// The values of a script sent over SSM Run Command, up to the prelude.
fn command_header(task: &str, spec: &UpdateSpec) -> String {
    let mut script = header(task, &spec.environment, &spec.region, &spec.services, spec.sequence);
    let _ = writeln!(script, "readonly OUTCOME_TAG={}", shell_quote(tag::SERVICES));
    let _ = writeln!(
        script,
        "readonly COMPLETE_VALUE={}",
        shell_quote(&format!("{}:{}", tag::BOOTSTRAP_COMPLETE, spec.token))
    );
    let _ = writeln!(
        script,
        "readonly FAILED_VALUE={}",
        shell_quote(&format!("{}:{}", tag::BOOTSTRAP_FAILED, spec.token))
    );
    script
}

/// The values both scripts start with: what runs, where, and the services.
fn header(task: &str, environment: &str, region: &str, services: &[ServiceImage], sequence: i64) -> String {
    let registries: BTreeSet<(&str, &str)> = services.iter().filter_map(|s| ecr_registry(&s.image)).collect();
    let mut script = String::new();
    script.push_str("#!/bin/bash\n");
    let _ = writeln!(script, "# featureenv-operator {task}. Generated; carries no secrets.");
    // -E so the ERR trap also fires inside functions; inherit_errexit so a failing
    // command inside `$(...)` fails the substitution instead of carrying on.
    script.push_str("set -Eeuo pipefail\nshopt -s inherit_errexit\n\n");
    let _ = writeln!(script, "readonly TASK={}", shell_quote(task));
    let _ = writeln!(script, "readonly ENVIRONMENT={}", shell_quote(environment));
    let _ = writeln!(script, "readonly REGION={}", shell_quote(region));
    let _ = writeln!(script, "readonly LOG_FILE={}", shell_quote(LOG_FILE));
    let _ = writeln!(script, "readonly SEQUENCE_FILE={}", shell_quote(SEQUENCE_FILE));
    let _ = writeln!(script, "readonly SEQUENCE={sequence}");
    script.push_str(&bash_array("SERVICE_NAMES", services.iter().map(|s| &s.name)));
    script.push_str(&bash_array("SERVICE_IMAGES", services.iter().map(|s| &s.image)));
    script.push_str(&bash_array("ECR_HOSTS", registries.iter().map(|(host, _)| host)));
    script.push_str(&bash_array("ECR_REGIONS", registries.iter().map(|(_, region)| region)));
    script
}

/// The fixed part both scripts share: logging, instance metadata, the outcome tag,
/// the ERR trap, the region, pulling images and rolling deployments. Every value it
/// uses comes from the quoted declarations above it.
const PRELUDE: &str = r#"
# cloud-init and SSM Run Command give no HOME, which minikube and kubectl need.
export HOME="${HOME:-/root}"

# Everything goes to a log file and to the serial console, which the operator reads
# (GetConsoleOutput) when a bootstrap times out. logger's tag marks every console line
# as ours, so our own lines lose their prefix there (unbuffered: a console read sees
# each line as it is written), not "featureenv: featureenv: ...".
exec > >(tee -a "$LOG_FILE" | sed -u 's/^featureenv: //' | logger -t featureenv -s 2>/dev/console) 2>&1

log() {
  echo "featureenv: $*"
}

# IMDSv2 only: every metadata read needs a session token. A transient failure of the
# metadata service is retried; a lasting one fails the call (never an empty token).
metadata() {
  local token
  token="$(curl -fsS --retry 3 --retry-connrefused -X PUT http://169.254.169.254/latest/api/token \
    -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')" || return
  curl -fsS --retry 3 --retry-connrefused -H "X-aws-ec2-metadata-token: ${token}" \
    "http://169.254.169.254/latest/meta-data/$1"
}

instance_id() {
  metadata instance-id
}

# The operator learns the outcome from this tag in its batched DescribeInstances.
tag_outcome() {
  local id
  id="$(instance_id)" || return
  if [[ -z "$id" ]]; then
    log "instance metadata gave no instance id"
    return 1
  fi
  aws ec2 create-tags --resources "$id" --tags "Key=${OUTCOME_TAG},Value=$1"
}

on_error() {
  local status=$? line=$1
  # With -E the trap also fires inside `$(...)`; only the script itself reports, once.
  if ((BASHPID != $$)); then
    exit "$status"
  fi
  trap - ERR
  log "${TASK} failed (exit ${status}) at line ${line}"
  if [[ -n "$FAILED_VALUE" ]]; then
    tag_outcome "$FAILED_VALUE" || log "could not tag the instance as failed"
  fi
  exit "$status"
}
trap 'on_error "$LINENO"' ERR

# An operator without a configured region renders an empty one; the instance
# knows its own.
region="$REGION"
if [[ -z "$region" ]]; then
  region="$(metadata placement/region)"
fi
export AWS_REGION="$region" AWS_DEFAULT_REGION="$region"

# Pulls into Minikube's own Docker daemon, where the cluster looks for images.
pull_images() {
  eval "$(minikube docker-env --shell bash)"
  local i image
  for i in "${!ECR_HOSTS[@]}"; do
    log "logging in to ${ECR_HOSTS[$i]}"
    aws ecr get-login-password --region "${ECR_REGIONS[$i]}" |
      docker login --username AWS --password-stdin "${ECR_HOSTS[$i]}"
  done
  for image in "${SERVICE_IMAGES[@]}"; do
    # A digest names one image for good: if it is here (a warm spare pulled the
    # baseline), there is nothing to fetch.
    if [[ "$image" == *@sha256:* ]] && docker image inspect "$image" >/dev/null 2>&1; then
      log "${image} already present"
      continue
    fi
    log "pulling ${image}"
    docker pull "$image"
  done
}

# SSM's agent runs several commands at once and they take the log's lock in no set
# order: a change of the services older (SEQUENCE, the environment's generation when
# sent) than the last one applied must not roll the instance back to its images.
superseded() {
  local applied
  applied="$(cat "$SEQUENCE_FILE" 2>/dev/null || true)"
  [[ "$applied" =~ ^[0-9]+$ ]] && ((SEQUENCE < applied))
}

roll_out() {
  local i name
  if superseded; then
    log "a newer change of the services is in place; keeping its images"
  else
    mkdir -p "${SEQUENCE_FILE%/*}"
    echo "$SEQUENCE" >"$SEQUENCE_FILE"
    for i in "${!SERVICE_NAMES[@]}"; do
      name="${SERVICE_NAMES[$i]}"
      log "deploying ${name} = ${SERVICE_IMAGES[$i]}"
      kubectl set image "deployment/${name}" "${name}=${SERVICE_IMAGES[$i]}"
    done
  fi
  for name in "${SERVICE_NAMES[@]}"; do
    log "waiting for ${name}"
    kubectl rollout status "deployment/${name}" --timeout=15m
  done
}
"#;

/// Minikube up, for the scripts that may find it stopped: the first boot (the AMI's
/// baked profile), a personalisation (a spare kept stopped) and a wake. Not in the
/// prelude: a services update runs on a cluster that is up, and must not start one.
const START_MINIKUBE: &str = r#"
# A started instance's containers do not come back by themselves.
start_minikube() {
  if ! minikube status >/dev/null 2>&1; then
    log "starting minikube"
    minikube start
  fi
}
"#;

/// The first boot: Minikube, images, the database Secret, addons, deployments.
const BOOTSTRAP: &str = r#"
log "bootstrapping environment ${ENVIRONMENT}"

start_minikube

pull_images
wire_database

for addon in "${ADDONS[@]}"; do
  log "enabling addon ${addon}"
  minikube addons enable "$addon"
done

roll_out

tag_outcome "$COMPLETE_VALUE"
log "bootstrap complete"
"#;

/// Reading the database connection into its Secret; `wire_database` does nothing
/// when no parameter is given (a spare of a warm pool has none until it is claimed).
const DATABASE: &str = r#"
# The operator writes the parameter once its database claim is confirmed, which may
# be long after this instance boots (an empty pool means a fresh restore). Retry with
# backoff (2 s doubling to 30 s) until DATABASE_WAIT_SECONDS have passed; a miss before
# that is not a failure. Sets `connection`.
read_database_connection() {
  local deadline=$((SECONDS + DATABASE_WAIT_SECONDS)) delay=2 errors
  # The CLI's error says why (not there yet, or AccessDenied, or KMS): keep it for the log.
  errors="$(mktemp)"
  until connection="$(aws ssm get-parameter --with-decryption --name "$DATABASE_PARAMETER" \
    --query Parameter.Value --output text 2>"$errors")"; do
    if ((SECONDS + delay > deadline)); then
      log "database parameter ${DATABASE_PARAMETER} still unreadable after ${DATABASE_WAIT_SECONDS}s: $(tail -n 1 "$errors")"
      rm -f "$errors"
      return 1
    fi
    log "database parameter ${DATABASE_PARAMETER} not readable yet ($(tail -n 1 "$errors")); retrying in ${delay}s"
    sleep "$delay"
    delay=$((delay * 2 > 30 ? 30 : delay * 2))
  done
  rm -f "$errors"
}

wire_database() {
  if [[ -z "$DATABASE_PARAMETER" ]]; then
    return 0
  fi
  log "wiring the database from SSM parameter ${DATABASE_PARAMETER}"
  # Held in a variable (not argv) and piped to kubectl, so the value never shows up
  # in a process list or in this log.
  local connection
  read_database_connection
  printf '%s' "$connection" |
    kubectl create secret generic "$DATABASE_SECRET" \
      --from-file="${DATABASE_SECRET_KEY}=/dev/stdin" --dry-run=client -o yaml |
    kubectl apply -f -
}
"#;

/// A claimed spare becoming one environment's. Its deployments ran without the
/// database Secret while it waited (the AMI's services start without it); with the
/// Secret written they are restarted to read it.
const PERSONALISE: &str = r#"
exec 9>>"$LOG_FILE"
flock 9
log "personalising a warm instance for environment ${ENVIRONMENT}"
start_minikube
pull_images
if [[ -n "$DATABASE_PARAMETER" ]]; then
  wire_database
  for name in "${SERVICE_NAMES[@]}"; do
    kubectl rollout restart "deployment/${name}"
  done
fi
roll_out
tag_outcome "$COMPLETE_VALUE"
log "personalised"
"#;

/// Fetching a claimed spare's images ahead of its personalisation. Best effort: a
/// failure here is not the environment's (the personalisation pulls again and
/// reports), so it neither stops the script nor tags the instance.
const PREFETCH: &str = r#"
log "fetching the images of environment ${ENVIRONMENT} while its claim is confirmed"
# In a job of its own, so that -e stops it at the first failed pull (in an `if`
# condition it would not) while this script carries on.
pull_images &
if wait "$!"; then
  log "prefetched"
else
  log "prefetch incomplete; the personalisation pulls what is missing"
fi
"#;

/// Waking after a sleep: Minikube started again, the deployments rolled out.
const WAKE: &str = r#"
exec 9>>"$LOG_FILE"
flock 9
log "waking environment ${ENVIRONMENT}"
start_minikube
roll_out
tag_outcome "$COMPLETE_VALUE"
log "awake"
"#;

/// A services update on a running instance: new images, rolled deployments.
const UPDATE: &str = r#"
# The agent runs several commands at once: an update superseding one still running
# waits for it, so the newest edit is the one left in place.
exec 9>>"$LOG_FILE"
flock 9
if superseded; then
  log "services update superseded by a newer change; nothing to do"
  exit 0
fi
log "updating the services of environment ${ENVIRONMENT}"
pull_images
roll_out
tag_outcome "$COMPLETE_VALUE"
log "services update complete"
"#;

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::process::Command;

    use super::*;

    fn spec() -> BootstrapSpec {
        BootstrapSpec {
            environment: "team-payments/payments-pr-123".into(),
            region: "ap-southeast-1".into(),
            services: vec![
                ServiceImage {
                    name: "payments".into(),
                    image: "123456789012.dkr.ecr.ap-southeast-1.amazonaws.com/payments:pr-123".into(),
                },
                ServiceImage {
                    name: "orders".into(),
                    image: "123456789012.dkr.ecr.ap-southeast-1.amazonaws.com/orders@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
                },
                ServiceImage { name: "search".into(), image: "docker.io/library/nginx:1.27".into() },
            ],
            addons: vec!["ingress".into(), "dashboard".into(), "logviewer".into()],
            database_parameter: Some("/featureenv/prod/team-payments/payments-pr-123/database".into()),
            database_wait_seconds: 1200,
        }
    }

    fn write_script(script: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".sh").tempfile().expect("temp file");
        file.write_all(script.as_bytes()).expect("write script");
        file
    }

    #[test]
    fn shell_quote_round_trips_through_bash() {
        for value in [
            "plain",
            "",
            "it's",
            "$(touch /tmp/pwned) `id` ${HOME} \"q\" \\ ;|&",
            "a\nb",
            "''",
        ] {
            let output = Command::new("bash")
                .arg("-c")
                .arg(format!("printf '%s' {}", shell_quote(value)))
                .output()
                .expect("bash runs");
            assert!(output.status.success());
            assert_eq!(String::from_utf8(output.stdout).unwrap(), value);
        }
    }

    #[test]
    fn script_carries_images_addons_and_parameter_name() {
        let script = render_user_data(&spec());
        assert!(script.starts_with("#!/bin/bash\n"));
        assert!(script.contains("set -Eeuo pipefail"));
        assert!(script.contains("'123456789012.dkr.ecr.ap-southeast-1.amazonaws.com/payments:pr-123'"));
        assert!(script.contains("'docker.io/library/nginx:1.27'"));
        assert!(
            script.contains("readonly DATABASE_PARAMETER='/featureenv/prod/team-payments/payments-pr-123/database'")
        );
        assert!(script.contains("aws ssm get-parameter --with-decryption"));
        assert!(script.contains("readonly -a ADDONS=('ingress' 'dashboard' 'logviewer')"));
        assert!(script.contains("readonly -a SERVICE_NAMES=('payments' 'orders' 'search')"));
        // One login per ECR registry, none for Docker Hub.
        assert!(script.contains("readonly -a ECR_HOSTS=('123456789012.dkr.ecr.ap-southeast-1.amazonaws.com')"));
        assert!(script.contains("trap 'on_error \"$LINENO\"' ERR"));
        assert!(script.contains("readonly OUTCOME_TAG='featureenv.io/bootstrap'"));
        assert!(script.contains("readonly COMPLETE_VALUE='complete'"));
        assert!(script.contains("readonly FAILED_VALUE='failed'"));
        assert!(script.contains("http://169.254.169.254/latest/api/token"));
        assert!(script.contains("readonly REGION='ap-southeast-1'"));
    }

    #[test]
    fn script_holds_no_database_credentials() {
        let script = render_user_data(&spec());
        // The only "password" is ECR's short-lived login token, fetched at run time.
        for line in script.lines().filter(|l| l.to_lowercase().contains("password")) {
            assert!(
                line.contains("get-login-password") || line.contains("--password-stdin"),
                "{line}"
            );
        }
        assert!(
            !script.contains("--from-literal"),
            "a secret on argv would be visible in ps"
        );
        assert!(!script.contains("set -x"), "xtrace would log the connection string");
    }

    #[test]
    fn without_region_the_instance_asks_imds() {
        let script = render_user_data(&BootstrapSpec {
            region: String::new(),
            ..spec()
        });
        assert!(script.contains("readonly REGION=''"));
        assert!(script.contains("metadata placement/region"));
        bash_syntax_ok(&script);
    }

    #[test]
    fn without_database_the_parameter_is_empty() {
        let script = render_user_data(&BootstrapSpec {
            database_parameter: None,
            ..spec()
        });
        assert!(script.contains("readonly DATABASE_PARAMETER=''"));
    }

    #[test]
    fn hostile_values_stay_data() {
        let mut spec = spec();
        spec.environment = "ns/x'; touch /tmp/pwned; echo '".into();
        spec.services[0].image = "repo/app:$(reboot)".into();
        let script = render_user_data(&spec);
        assert!(script.contains(r"readonly ENVIRONMENT='ns/x'\''; touch /tmp/pwned; echo '\'''"));
        assert!(script.contains("'repo/app:$(reboot)'"));
        bash_syntax_ok(&script);
    }

    /// Runs the script with stub `curl`, `aws`, `minikube`, `docker`, `kubectl` and
    /// `logger` that record their arguments, so its behaviour (not just its syntax)
    /// is checked. Only the host paths for the log and console are redirected.
    fn run_with_stubs(spec: &BootstrapSpec, rollout_exit: u8) -> (bool, String, String, String) {
        run_with_stubs_ssm(spec, rollout_exit, 0)
    }

    /// As [`run_with_stubs`], with `ssm get-parameter` failing (as AWS does with
    /// ParameterNotFound) the first `ssm_failures` times, and a `sleep` that only records.
    fn run_with_stubs_ssm(spec: &BootstrapSpec, rollout_exit: u8, ssm_failures: u32) -> (bool, String, String, String) {
        run_stubbed(spec, rollout_exit, ssm_failures, false)
    }

    /// The stubbed run with every knob: also an unreachable instance metadata service.
    fn run_stubbed(
        spec: &BootstrapSpec,
        rollout_exit: u8,
        ssm_failures: u32,
        imds_down: bool,
    ) -> (bool, String, String, String) {
        run_script_stubbed(&render_user_data(spec), rollout_exit, ssm_failures, imds_down)
    }

    /// Runs any rendered script with the stubs.
    fn run_script_stubbed(
        script: &str,
        rollout_exit: u8,
        ssm_failures: u32,
        imds_down: bool,
    ) -> (bool, String, String, String) {
        run_on_daemon_with(script, rollout_exit, ssm_failures, imds_down, &[])
    }

    /// Runs a rendered script with the stubs, the Docker daemon holding `present`.
    fn run_on_daemon_with(
        script: &str,
        rollout_exit: u8,
        ssm_failures: u32,
        imds_down: bool,
        present: &[&str],
    ) -> (bool, String, String, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        let present_file = dir.path().join("present");
        std::fs::write(
            &present_file,
            present.iter().map(|i| format!("{i}\n")).collect::<String>(),
        )
        .unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let stub = |name: &str, body: &str| {
            let path = bin.join(name);
            std::fs::write(
                &path,
                format!("#!/bin/bash\necho \"{name} $*\" >> \"$CALLS\"\n{body}\n"),
            )
            .unwrap();
            let mut permissions = std::fs::metadata(&path).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
            std::fs::set_permissions(&path, permissions).unwrap();
        };
        stub(
            "curl",
            r#"if [[ -n "$IMDS_DOWN" ]]; then echo "curl: (7) Failed to connect to 169.254.169.254 port 80" >&2; exit 7; fi
case "$*" in *api/token*) echo token ;; *instance-id*) echo i-0abc ;; *placement/region*) echo eu-west-1 ;; esac"#,
        );
        stub(
            "aws",
            r#"case "$1 $2" in
  "ssm get-parameter")
    left="$(cat "$SSM_FAILURES")"
    if ((left > 0)); then
      echo "$((left - 1))" > "$SSM_FAILURES"
      echo "An error occurred (ParameterNotFound) when calling the GetParameter operation" >&2
      exit 254
    fi
    echo 'postgres://app:S3cretPW@db:5432/app' ;;
  "ecr get-login-password") echo ecr-token ;;
esac"#,
        );
        stub("sleep", "");
        stub(
            "minikube",
            r#"if [[ "$1" == docker-env ]]; then echo 'export DOCKER_HOST=tcp://127.0.0.1:2376'; fi"#,
        );
        stub(
            "docker",
            r#"case "$1" in login) cat > /dev/null ;; image) grep -qxF "$3" "$PRESENT" || exit 1 ;; esac"#,
        );
        stub(
            "kubectl",
            r#"case "$*" in "create secret"*) cat > "$SECRET_STDIN"; echo 'kind: Secret' ;; "apply -f -") cat > /dev/null ;; "rollout status"*) exit "$ROLLOUT_EXIT" ;; esac"#,
        );
        stub("logger", r#"cat >> "$CONSOLE""#);

        let log = dir.path().join("bootstrap.log");
        let script = script
            .replace(LOG_FILE, log.to_str().unwrap())
            .replace(SEQUENCE_FILE, dir.path().join("sequence").to_str().unwrap())
            .replace("2>/dev/console", "2>/dev/null");
        let script_path = dir.path().join("user-data.sh");
        std::fs::write(&script_path, script).unwrap();
        let calls = dir.path().join("calls");
        let secret_stdin = dir.path().join("secret-stdin");
        let ssm_failures_file = dir.path().join("ssm-failures");
        std::fs::write(&ssm_failures_file, ssm_failures.to_string()).unwrap();
        let status = Command::new("bash")
            .arg(&script_path)
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("CALLS", &calls)
            .env("CONSOLE", dir.path().join("console"))
            .env("SECRET_STDIN", &secret_stdin)
            .env("ROLLOUT_EXIT", rollout_exit.to_string())
            .env("SSM_FAILURES", &ssm_failures_file)
            .env("IMDS_DOWN", if imds_down { "1" } else { "" })
            .env("PRESENT", &present_file)
            .status()
            .expect("bash runs");
        // The console pipeline is asynchronous; give it a moment to flush.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
        (status.success(), read(&calls), read(&secret_stdin), read(&log))
    }

    /// Every service's image was pulled and set on its deployment.
    fn assert_pulled_and_rolled(services: &[ServiceImage], calls: &str) {
        for service in services {
            assert!(calls.contains(&format!("docker pull {}\n", service.image)), "{calls}");
            let set = format!(
                "kubectl set image deployment/{0} {0}={1}\n",
                service.name, service.image
            );
            assert!(calls.contains(&set), "{calls}");
        }
    }

    #[test]
    fn script_deploys_everything_then_tags_complete() {
        let spec = spec();
        let (ok, calls, secret, log) = run_with_stubs(&spec, 0);
        assert!(ok, "script failed; calls:\n{calls}\nlog:\n{log}");
        assert_pulled_and_rolled(&spec.services, &calls);
        for service in &spec.services {
            assert!(calls.contains(&format!(
                "kubectl rollout status deployment/{} --timeout=15m\n",
                service.name
            )));
        }
        assert!(calls.contains(
            "docker login --username AWS --password-stdin 123456789012.dkr.ecr.ap-southeast-1.amazonaws.com\n"
        ));
        assert!(calls.contains("aws ecr get-login-password --region ap-southeast-1\n"));
        for addon in ["ingress", "dashboard", "logviewer"] {
            assert!(calls.contains(&format!("minikube addons enable {addon}\n")), "{calls}");
        }
        assert!(calls.contains(&format!(
            "aws ssm get-parameter --with-decryption --name {} --query Parameter.Value --output text\n",
            spec.database_parameter.as_deref().unwrap()
        )));
        // The connection string reaches the Secret through stdin only.
        assert_eq!(secret, "postgres://app:S3cretPW@db:5432/app");
        assert!(!calls.contains("S3cretPW"), "secret on a command line:\n{calls}");
        assert!(!log.contains("S3cretPW"), "secret in the log:\n{log}");
        let last = calls.lines().last().unwrap();
        assert_eq!(
            last,
            "aws ec2 create-tags --resources i-0abc --tags Key=featureenv.io/bootstrap,Value=complete"
        );
        assert!(log.contains("bootstrap complete"), "{log}");
    }

    /// The bootstrap races the database claim: a parameter that is not there yet (an
    /// empty pool means a restore of ten minutes or more) is waited for with backoff.
    #[test]
    fn a_missing_database_parameter_is_waited_for() {
        let (ok, calls, secret, log) = run_with_stubs_ssm(&spec(), 0, 3);
        assert!(ok, "script failed; calls:\n{calls}\nlog:\n{log}");
        assert_eq!(calls.matches("aws ssm get-parameter").count(), 4, "{calls}");
        let sleeps: Vec<&str> = calls.lines().filter(|l| l.starts_with("sleep ")).collect();
        assert_eq!(sleeps, ["sleep 2", "sleep 4", "sleep 8"]);
        assert_eq!(secret, "postgres://app:S3cretPW@db:5432/app");
        assert!(
            calls.ends_with("Key=featureenv.io/bootstrap,Value=complete\n"),
            "{calls}"
        );
        assert!(
            log.contains("not readable yet (An error occurred (ParameterNotFound)"),
            "{log}"
        );
        assert!(log.contains("; retrying in 2s"), "{log}");
    }

    /// Past the wait (the class's readiness timeout), a parameter still missing fails
    /// the bootstrap through the ERR trap, as any other step would.
    #[test]
    fn a_database_parameter_missing_past_the_wait_tags_failed() {
        let spec = BootstrapSpec {
            database_wait_seconds: 3,
            ..spec()
        };
        let (ok, calls, secret, log) = run_with_stubs_ssm(&spec, 0, 100);
        assert!(!ok);
        // 2 s of backoff fit in 3 s; the next 4 s would not.
        assert_eq!(calls.matches("aws ssm get-parameter").count(), 2, "{calls}");
        assert!(secret.is_empty());
        assert!(calls.ends_with("Key=featureenv.io/bootstrap,Value=failed\n"), "{calls}");
        // The CLI's reason is in the log, not swallowed.
        assert!(
            log.contains("still unreadable after 3s: An error occurred (ParameterNotFound)"),
            "{log}"
        );
    }

    /// Seen running the real script against an instance whose metadata service does
    /// not answer: the script used to carry on with an empty token and instance id,
    /// ran `create-tags --resources ''` and reported the failure three times, at the
    /// wrong line. It must fail once, at the token request, and tag nothing.
    #[test]
    fn an_unreachable_metadata_service_fails_once_and_tags_nothing() {
        // Without a rendered region the first metadata read fails; with one, the
        // last (the instance id for the completion tag).
        for region in ["", "eu-west-1"] {
            let spec = BootstrapSpec {
                region: region.into(),
                ..spec()
            };
            let (ok, calls, _, log) = run_stubbed(&spec, 0, 0, true);
            assert!(!ok, "region {region:?}");
            assert!(!calls.contains("create-tags"), "tagged with no instance id:\n{calls}");
            assert_eq!(log.matches("bootstrap failed").count(), 1, "{log}");
            assert!(log.contains("bootstrap failed (exit 7)"), "{log}");
            assert!(log.contains("could not tag the instance as failed"), "{log}");
        }
    }

    #[test]
    fn a_failing_step_tags_failed_via_the_trap() {
        let (ok, calls, _, log) = run_with_stubs(&spec(), 1);
        assert!(!ok);
        assert!(
            calls.contains("aws ec2 create-tags --resources i-0abc --tags Key=featureenv.io/bootstrap,Value=failed\n"),
            "{calls}"
        );
        assert!(!calls.contains("Value=complete"), "{calls}");
        assert!(log.contains("bootstrap failed (exit 1)"), "{log}");
    }

    #[test]
    fn an_empty_region_comes_from_instance_metadata() {
        let spec = BootstrapSpec {
            region: String::new(),
            database_parameter: None,
            ..spec()
        };
        let (ok, calls, secret, log) = run_with_stubs(&spec, 0);
        assert!(ok, "{calls}\n{log}");
        assert!(calls.contains("latest/meta-data/placement/region"), "{calls}");
        assert!(!calls.contains("ssm get-parameter"), "no database, no parameter read");
        assert!(secret.is_empty());
    }

    #[test]
    fn addon_names_map_to_minikube_addons() {
        assert_eq!(minikube_addon("logviewer"), "logviewer");
        assert_eq!(minikube_addon("logs"), "logviewer");
        assert_eq!(minikube_addon("metrics-server"), "metrics-server");
    }

    fn bash_syntax_ok(script: &str) {
        let file = write_script(script);
        let output = Command::new("bash")
            .arg("-n")
            .arg(file.path())
            .output()
            .expect("bash runs");
        assert!(
            output.status.success(),
            "bash -n: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The image of `update` pinned by digest.
    fn pinned_image(update: &UpdateSpec) -> String {
        let pinned = update.services.iter().find(|s| s.image.contains("@sha256:"));
        pinned.expect("a pinned image").image.clone()
    }

    fn update() -> UpdateSpec {
        let mut services = spec().services;
        services[0].image = "123456789012.dkr.ecr.ap-southeast-1.amazonaws.com/payments:pr-124".into();
        UpdateSpec {
            environment: "team-payments/payments-pr-123".into(),
            region: "ap-southeast-1".into(),
            services,
            token: "0123456789abcdef".into(),
            sequence: 2,
        }
    }

    #[test]
    fn an_update_pulls_and_rolls_the_new_images_then_tags_its_token() {
        let update = update();
        let (ok, calls, _, log) = run_script_stubbed(&render_update_script(&update), 0, 0, false);
        assert!(ok, "script failed; calls:\n{calls}\nlog:\n{log}");
        assert_pulled_and_rolled(&update.services, &calls);
        assert!(!calls.contains("minikube start"), "Minikube runs already:\n{calls}");
        assert!(
            !calls.contains("ssm get-parameter"),
            "the database is wired already:\n{calls}"
        );
        assert_eq!(
            calls.lines().last().unwrap(),
            "aws ec2 create-tags --resources i-0abc --tags Key=featureenv.io/services,Value=complete:0123456789abcdef"
        );
        assert!(log.contains("services update complete"), "{log}");
    }

    /// A claimed spare has the baseline (pinned by digest) in its daemon: only the
    /// image under test is pulled. A tag is pulled even when present (it may have moved).
    #[test]
    fn a_personalisation_pulls_only_the_pinned_images_it_lacks() {
        let update = update();
        let spec = PersonaliseSpec {
            update: update.clone(),
            database_parameter: Some("/featureenv/prod/x/database".into()),
            database_wait_seconds: 60,
        };
        let pinned = pinned_image(&update);
        let tagged = update
            .services
            .iter()
            .find(|s| !s.image.contains("@sha256:"))
            .expect("a tagged image")
            .image
            .clone();
        let script = render_personalise_script(&spec);
        let (ok, calls, secret, log) = run_on_daemon_with(&script, 0, 0, false, &[&pinned, &tagged]);
        assert!(ok, "script failed; calls:\n{calls}\nlog:\n{log}");
        assert!(!calls.contains(&format!("docker pull {pinned}\n")), "{calls}");
        assert!(calls.contains(&format!("docker pull {tagged}\n")), "{calls}");
        assert!(log.contains(&format!("{pinned} already present")), "{log}");
        assert!(secret.contains("postgres://"), "the database Secret is written");
        for service in &update.services {
            assert!(
                calls.contains(&format!("kubectl rollout restart deployment/{}\n", service.name)),
                "every deployment restarts to read the Secret:\n{calls}"
            );
        }
        assert!(
            calls
                .lines()
                .last()
                .unwrap()
                .ends_with("Value=complete:0123456789abcdef"),
            "{calls}"
        );
    }

    /// The prefetch a claim sends pulls what the spare lacks and nothing else: no
    /// deployment, no database, no outcome tag, even when a pull fails.
    #[test]
    fn a_prefetch_pulls_what_the_spare_lacks_and_tags_nothing() {
        let update = update();
        let pinned = pinned_image(&update);
        let script = render_prefetch_script(&update.environment, &update.region, &update.services);
        let (ok, calls, _, log) = run_on_daemon_with(&script, 0, 0, false, &[&pinned]);
        assert!(ok, "script failed; calls:\n{calls}\nlog:\n{log}");
        for service in update.services.iter().filter(|s| s.image != pinned) {
            assert!(calls.contains(&format!("docker pull {}\n", service.image)), "{calls}");
        }
        assert!(!calls.contains(&format!("docker pull {pinned}\n")), "{calls}");
        for untouched in ["kubectl", "create-tags", "ssm get-parameter", "minikube start"] {
            assert!(!calls.contains(untouched), "{untouched}:\n{calls}");
        }
        assert!(log.contains("prefetched"), "{log}");

        let failing = script.replace("docker pull \"$image\"", "docker pull \"$image\" && false");
        assert_ne!(failing, script, "the pull is where the test makes it fail");
        let (ok, calls, _, log) = run_on_daemon_with(&failing, 0, 0, false, &[]);
        assert!(ok, "a failed prefetch is not a failed script:\n{log}");
        assert!(!calls.contains("create-tags"), "no outcome tagged:\n{calls}");
        assert!(log.contains("prefetch incomplete"), "{log}");
    }

    /// SSM's agent runs several commands at once, and two services updates sent in
    /// quick succession take the instance's lock in no set order. The older one,
    /// running after the newer, must leave the newer images and tag nothing.
    #[test]
    fn an_update_older_than_the_one_applied_changes_nothing() {
        let state = tempfile::tempdir().unwrap();
        let sequence = state.path().join("sequence");
        let on_instance = |script: String| script.replace(SEQUENCE_FILE, sequence.to_str().unwrap());
        let newer = UpdateSpec {
            sequence: 3,
            token: "newer".into(),
            ..update()
        };
        let (ok, calls, _, log) = run_script_stubbed(&on_instance(render_update_script(&newer)), 0, 0, false);
        assert!(ok, "{log}");
        assert!(calls.contains("kubectl set image"), "{calls}");
        assert_eq!(std::fs::read_to_string(&sequence).unwrap().trim(), "3");

        let older = UpdateSpec {
            sequence: 2,
            token: "older".into(),
            ..update()
        };
        let (ok, calls, _, log) = run_script_stubbed(&on_instance(render_update_script(&older)), 0, 0, false);
        assert!(ok, "{log}");
        for untouched in ["kubectl set image", "docker pull", "create-tags"] {
            assert!(!calls.contains(untouched), "{untouched}:\n{calls}");
        }
        assert!(log.contains("superseded"), "{log}");
        assert_eq!(std::fs::read_to_string(&sequence).unwrap().trim(), "3");

        // A personalisation older than an update applied still wires the database and
        // restarts the deployments, but keeps the update's images.
        let personalisation = render_personalise_script(&PersonaliseSpec {
            update: older.clone(),
            database_parameter: Some("/featureenv/prod/x/database".into()),
            database_wait_seconds: 60,
        });
        let (ok, calls, secret, log) = run_script_stubbed(&on_instance(personalisation), 0, 0, false);
        assert!(ok, "{log}");
        assert!(secret.contains("postgres://"), "the database is wired");
        assert!(calls.contains("kubectl rollout restart"), "{calls}");
        assert!(!calls.contains("kubectl set image"), "{calls}");
        assert!(
            calls.contains("Value=complete:older"),
            "it reports its own outcome:\n{calls}"
        );

        // The same update sent again (a pass cut off before the status recorded it) runs.
        let (ok, calls, _, log) = run_script_stubbed(&on_instance(render_update_script(&newer)), 0, 0, false);
        assert!(ok, "{log}");
        assert!(calls.contains("kubectl set image"), "{calls}");
    }

    #[test]
    fn a_wake_starts_minikube_if_needed_rolls_out_and_tags_its_token() {
        let wake = update();
        let (ok, calls, _, log) = run_script_stubbed(&render_wake_script(&wake), 0, 0, false);
        assert!(ok, "script failed; calls:\n{calls}\nlog:\n{log}");
        assert!(calls.contains("minikube status"), "{calls}");
        assert!(calls.contains("rollout status"), "{calls}");
        assert!(
            !calls.contains("ssm get-parameter"),
            "the database is wired already:\n{calls}"
        );
        assert_eq!(
            calls.lines().last().unwrap(),
            "aws ec2 create-tags --resources i-0abc --tags Key=featureenv.io/services,Value=complete:0123456789abcdef"
        );
        assert!(log.contains("awake"), "{log}");
        let (ok, calls, _, log) = run_script_stubbed(&render_wake_script(&wake), 1, 0, false);
        assert!(!ok);
        assert!(calls.ends_with("Value=failed:0123456789abcdef\n"), "{calls}");
        assert!(log.contains("wake failed (exit 1)"), "{log}");
    }

    #[test]
    fn a_failed_rollout_tags_the_update_failed() {
        let (ok, calls, _, log) = run_script_stubbed(&render_update_script(&update()), 1, 0, false);
        assert!(!ok);
        assert_eq!(
            calls.lines().last().unwrap(),
            "aws ec2 create-tags --resources i-0abc --tags Key=featureenv.io/services,Value=failed:0123456789abcdef"
        );
        assert!(log.contains("services update failed (exit 1)"), "{log}");
    }

    #[test]
    fn script_passes_bash_n() {
        bash_syntax_ok(&render_update_script(&update()));
        bash_syntax_ok(&render_wake_script(&update()));
        bash_syntax_ok(&render_user_data(&spec()));
        bash_syntax_ok(&render_user_data(&BootstrapSpec {
            services: vec![],
            addons: vec![],
            database_parameter: None,
            ..spec()
        }));
    }

    #[test]
    fn script_passes_shellcheck() {
        let Ok(version) = Command::new("shellcheck").arg("--version").output() else {
            panic!("shellcheck is not installed; run `apt-get install shellcheck` (or `make setup`)");
        };
        assert!(version.status.success(), "shellcheck --version failed");
        for spec in [
            spec(),
            BootstrapSpec {
                services: vec![],
                addons: vec![],
                database_parameter: None,
                ..spec()
            },
        ] {
            for script in [
                render_user_data(&spec),
                render_update_script(&update()),
                render_wake_script(&update()),
                render_prefetch_script(&spec.environment, &spec.region, &spec.services),
                render_personalise_script(&PersonaliseSpec {
                    update: update(),
                    database_parameter: spec.database_parameter.clone(),
                    database_wait_seconds: 60,
                }),
            ] {
                let file = write_script(&script);
                let output = Command::new("shellcheck")
                    .args(["--shell=bash", "--severity=style"])
                    .arg(file.path())
                    .output()
                    .expect("shellcheck runs");
                assert!(
                    output.status.success(),
                    "shellcheck:\n{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }
}
