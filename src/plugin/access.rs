//! The plugin's commands that reach into one environment: its database credentials
//! (the Secret), its URLs, a shell (SSM Session Manager through the AWS CLI) and the
//! bootstrap log (EC2's serial console output). Kubernetes calls with the caller's
//! kubeconfig; AWS calls with the caller's AWS credentials.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail};
use aws_config::BehaviorVersion;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::environments::get;
use super::output::table;
use super::{CredsFormat, Target};
use crate::api::FeatureEnvironment;
use crate::api::conditions::{DATABASE_READY, find};
use crate::cloud::aws::decode_console;

/// The tag the bootstrap script logs under (`logger -t featureenv`, src/bootstrap.rs).
const BOOTSTRAP_TAG: &str = "featureenv";

/// The Session Manager plugin's install page, for when `aws` cannot start a session.
const SESSION_MANAGER_PLUGIN: &str =
    "https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin.html";

pub async fn creds(t: &Target, name: &str, format: CredsFormat) -> anyhow::Result<()> {
    let env = get(t, name).await?;
    let status = env.status.clone().unwrap_or_default();
    let Some(secret_name) = status.database.as_ref().and_then(|d| d.secret_name.clone()) else {
        let why = find(&status.conditions, DATABASE_READY)
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_else(|| "its class names no database pool, or it has not claimed one yet".into());
        bail!("featureenvironment {name} has no database credentials yet ({why})");
    };
    let secrets: Api<Secret> = Api::namespaced(t.client.clone(), &t.namespace);
    let secret = match secrets.get(&secret_name).await {
        Ok(secret) => secret,
        Err(kube::Error::Api(e)) if e.code == 403 => {
            bail!(
                "you may not read Secret {secret_name} in namespace {}: {}",
                t.namespace,
                e.message
            )
        }
        Err(e) => return Err(e.into()),
    };
    let values: BTreeMap<String, String> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    print!("{}", render_creds(&values, format));
    Ok(())
}

/// The credentials as asked: `key: value` lines, `export DB_KEY='value'` lines, or JSON.
pub fn render_creds(values: &BTreeMap<String, String>, format: CredsFormat) -> String {
    match format {
        CredsFormat::Text => values.iter().map(|(k, v)| format!("{k}: {v}\n")).collect(),
        CredsFormat::Env => values
            .iter()
            .map(|(k, v)| {
                let key: String = k
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_uppercase()
                        } else {
                            '_'
                        }
                    })
                    .collect();
                format!("export DB_{key}={}\n", shell_quote(v))
            })
            .collect(),
        CredsFormat::Json => format!("{}\n", serde_json::to_string_pretty(values).expect("strings serialize")),
    }
}

/// `value` in single quotes for a POSIX shell (a `'` becomes `'\''`).
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

pub async fn open(t: &Target, name: &str) -> anyhow::Result<()> {
    let env = get(t, name).await?;
    let status = env.status.unwrap_or_default();
    if status.endpoints.is_empty() {
        bail!(
            "featureenvironment {name} has no URLs yet (it is {})",
            status.phase.as_str()
        );
    }
    let rows: Vec<Vec<String>> = status.endpoints.into_iter().map(|(k, v)| vec![k, v]).collect();
    print!("{}", table(&["NAME", "URL"], &rows));
    Ok(())
}

/// The running instance of `env`, or why there is none to reach.
fn instance_id(env: &FeatureEnvironment, name: &str) -> anyhow::Result<String> {
    let status = env.status.clone().unwrap_or_default();
    let instance = status.instance.unwrap_or_default();
    let id = instance.id.ok_or_else(|| {
        anyhow!(
            "featureenvironment {name} has no instance yet (it is {})",
            status.phase.as_str()
        )
    })?;
    match instance.state.as_deref() {
        Some("running") | None => Ok(id),
        Some(state) => bail!("instance {id} of featureenvironment {name} is {state}, not running"),
    }
}

pub async fn shell(t: &Target, name: &str) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let env = get(t, name).await?;
    let id = instance_id(&env, name)?;
    eprintln!("starting an SSM session on {id} (aws ssm start-session)");
    // exec only returns on failure; on success the session replaces this process, so
    // the terminal belongs to the Session Manager plugin.
    let error = std::process::Command::new("aws")
        .args(["ssm", "start-session", "--target", &id])
        .exec();
    match error.kind() {
        std::io::ErrorKind::NotFound => bail!(
            "the AWS CLI (aws) is not on PATH; install it and the Session Manager plugin: {SESSION_MANAGER_PLUGIN}"
        ),
        _ => bail!("starting `aws ssm start-session --target {id}`: {error}"),
    }
}

pub async fn logs(t: &Target, name: &str, all: bool) -> anyhow::Result<()> {
    let env = get(t, name).await?;
    let id = env
        .status
        .as_ref()
        .and_then(|s| s.instance.as_ref())
        .and_then(|i| i.id.clone())
        .ok_or_else(|| anyhow!("featureenvironment {name} has no instance yet"))?;
    let config = aws_config::load_defaults(BehaviorVersion::latest()).await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let output = ec2
        .get_console_output()
        .instance_id(&id)
        .latest(true)
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "ec2:GetConsoleOutput of {id}: {}",
                aws_sdk_ec2::error::DisplayErrorContext(e)
            )
        })?;
    let Some(text) = output.output().filter(|t| !t.is_empty()).map(decode_console) else {
        bail!("instance {id} has no console output yet (EC2 has it shortly after boot)");
    };
    let lines = bootstrap_lines(&text, all);
    if lines.is_empty() {
        bail!("instance {id}'s console output has no bootstrap lines yet; --all prints all of it");
    }
    print!("{lines}");
    Ok(())
}

/// The console lines of the bootstrap (those its `logger` tag marks), or all of them.
pub fn bootstrap_lines(console: &str, all: bool) -> String {
    console
        .lines()
        .filter(|line| all || line.contains(BOOTSTRAP_TAG))
        .map(|line| format!("{line}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("host".to_owned(), "fe-1.abc.us-east-1.rds.amazonaws.com".to_owned()),
            ("password".to_owned(), "it's-secret".to_owned()),
            ("port".to_owned(), "5432".to_owned()),
        ])
    }

    #[test]
    fn credentials_print_as_text_shell_exports_or_json() {
        assert_eq!(
            render_creds(&creds(), CredsFormat::Text),
            "host: fe-1.abc.us-east-1.rds.amazonaws.com\npassword: it's-secret\nport: 5432\n"
        );
        let env = render_creds(&creds(), CredsFormat::Env);
        assert!(env.contains("export DB_PASSWORD='it'\\''s-secret'\n"), "{env}");
        assert!(env.contains("export DB_PORT='5432'\n"), "{env}");
        let json: BTreeMap<String, String> = serde_json::from_str(&render_creds(&creds(), CredsFormat::Json)).unwrap();
        assert_eq!(json, creds());
    }

    #[test]
    fn only_the_bootstrap_lines_unless_all() {
        let console = "[    0.000] Linux version 6.1\n<13>Dec  3 10:00:00 featureenv: pulling images\ncloud-init ok\n";
        assert_eq!(
            bootstrap_lines(console, false),
            "<13>Dec  3 10:00:00 featureenv: pulling images\n"
        );
        assert_eq!(bootstrap_lines(console, true), console);
    }

    #[test]
    fn shell_and_logs_say_why_there_is_no_instance() {
        let mut env = FeatureEnvironment::new("pr-1", crate::test_fixtures::environment_spec());
        let err = instance_id(&env, "pr-1").unwrap_err().to_string();
        assert!(err.contains("no instance yet"), "{err}");
        env.status = Some(crate::api::FeatureEnvironmentStatus {
            instance: Some(crate::api::environment::InstanceStatus {
                id: Some("i-0abc".into()),
                state: Some("stopped".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = instance_id(&env, "pr-1").unwrap_err().to_string();
        assert!(err.contains("instance i-0abc") && err.contains("is stopped"), "{err}");
    }
}
