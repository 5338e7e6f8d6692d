//! The cloud traits on the AWS SDK (EC2, RDS, SSM, ECR). Does network I/O; the only
//! module that imports `aws-sdk-*`. Error codes are mapped in `errors`.

mod attempts;
mod ec2;
mod ecr;
mod errors;
mod fencing;
mod rds;
mod ssm;

use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;

use aws_config::BehaviorVersion;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::primitives::DateTime;
use jiff::Timestamp;

pub use self::ec2::decode_console;
use crate::cloud::{CallObserver, CloudResult};
use crate::fence::Fence;

/// Page sizes for the batched Describe calls. The defaults are the services' maxima,
/// so a stable fleet costs one request per service per poll.
#[derive(Clone, Copy, Debug)]
pub struct PageSizes {
    /// DescribeInstances `MaxResults` (5..=1000).
    pub ec2: i32,
    /// DescribeDBInstances / DescribeDBSnapshots `MaxRecords` (20..=100).
    pub rds: i32,
    /// GetParametersByPath `MaxResults` (1..=10).
    pub ssm: i32,
}

impl Default for PageSizes {
    fn default() -> Self {
        Self {
            ec2: 1000,
            rds: 100,
            ssm: 10,
        }
    }
}

/// EC2, RDS, SSM and ECR clients sharing one SDK configuration, plus the observer
/// every request reports to.
#[derive(Clone)]
pub struct AwsCloud {
    ec2: aws_sdk_ec2::Client,
    rds: aws_sdk_rds::Client,
    ssm: aws_sdk_ssm::Client,
    ecr: aws_sdk_ecr::Client,
    region: Option<String>,
    page_sizes: PageSizes,
    observer: Arc<dyn CallObserver>,
    /// Root device name per image id (immutable per image; a handful of AMIs).
    root_devices: Arc<tokio::sync::Mutex<std::collections::HashMap<String, String>>>,
}

/// How long one attempt of a request may take before it is retried (the SDK's
/// standard retry policy decides whether).
const ATTEMPT_TIMEOUT_SHARE: u32 = 3;

/// Bounds on every request: the whole operation (all attempts) within
/// `operation`, each attempt within a third of it. Without them a request to an
/// endpoint that accepts and never answers waits forever, holding its reconcile.
fn timeouts(operation: std::time::Duration) -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(operation.min(std::time::Duration::from_secs(5)))
        .operation_attempt_timeout(operation / ATTEMPT_TIMEOUT_SHARE)
        .operation_timeout(operation)
        .build()
}

impl AwsCloud {
    /// Clients from `config`, every request bounded by `operation_timeout` and sent
    /// only while `fence` is open.
    pub fn new(
        config: &aws_config::SdkConfig,
        observer: Arc<dyn CallObserver>,
        operation_timeout: std::time::Duration,
        fence: Arc<Fence>,
    ) -> Self {
        let attempts = |service| attempts::FailedAttempts {
            service,
            observer: observer.clone(),
        };
        let timeouts = timeouts(operation_timeout);
        Self {
            ec2: aws_sdk_ec2::Client::from_conf(
                aws_sdk_ec2::config::Builder::from(config)
                    .interceptor(attempts("ec2"))
                    .interceptor(fencing::Fencing { fence: fence.clone() })
                    .timeout_config(timeouts.clone())
                    .build(),
            ),
            rds: aws_sdk_rds::Client::from_conf(
                aws_sdk_rds::config::Builder::from(config)
                    .interceptor(attempts("rds"))
                    .interceptor(fencing::Fencing { fence: fence.clone() })
                    .timeout_config(timeouts.clone())
                    .build(),
            ),
            ssm: aws_sdk_ssm::Client::from_conf(
                aws_sdk_ssm::config::Builder::from(config)
                    .interceptor(attempts("ssm"))
                    .interceptor(fencing::Fencing { fence: fence.clone() })
                    .timeout_config(timeouts.clone())
                    .build(),
            ),
            ecr: aws_sdk_ecr::Client::from_conf(
                aws_sdk_ecr::config::Builder::from(config)
                    .interceptor(attempts("ecr"))
                    .interceptor(fencing::Fencing { fence: fence.clone() })
                    .timeout_config(timeouts)
                    .build(),
            ),
            region: config.region().map(|r| r.to_string()),
            page_sizes: PageSizes::default(),
            observer,
            root_devices: Arc::default(),
        }
    }

    /// Loads the standard AWS configuration chain (environment, profile, IMDS, IRSA),
    /// which also honours `AWS_ENDPOINT_URL` — how tests point us at moto.
    pub async fn from_env(
        region: Option<String>,
        observer: Arc<dyn CallObserver>,
        operation_timeout: std::time::Duration,
        fence: Arc<Fence>,
    ) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region));
        }
        Self::new(&loader.load().await, observer, operation_timeout, fence)
    }

    /// The region requests go to (what instance ARNs are built with); the SDK
    /// refuses to send a request without one, so empty only before the first call.
    fn region_name(&self) -> String {
        self.region.clone().unwrap_or_default()
    }

    /// Smaller pages, so tests can exercise pagination with a handful of resources.
    pub fn with_page_sizes(mut self, page_sizes: PageSizes) -> Self {
        self.page_sizes = page_sizes;
        self
    }

    /// Reports one request's outcome to the observer and passes the result on.
    fn record<T>(&self, service: &'static str, operation: &'static str, result: CloudResult<T>) -> CloudResult<T> {
        let outcome = match &result {
            Ok(_) => "ok",
            Err(err) => err.category(),
        };
        self.observer.observe(service, operation, outcome);
        if let Err(err) = &result {
            tracing::debug!(service, operation, category = outcome, error = %err, "AWS call failed");
        }
        result
    }

    /// Sends one request, maps its error and reports it.
    async fn call<T, E>(
        &self,
        service: &'static str,
        operation: &'static str,
        request: impl Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    ) -> CloudResult<T>
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let result = request.await.map_err(|err| errors::from_sdk(operation, err));
        self.record(service, operation, result)
    }

    /// Maps and reports one page of a paginated call.
    fn page<T, E>(
        &self,
        service: &'static str,
        operation: &'static str,
        page: Result<T, SdkError<E, HttpResponse>>,
    ) -> CloudResult<T>
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        self.record(service, operation, page.map_err(|err| errors::from_sdk(operation, err)))
    }
}

/// SDK timestamps to domain timestamps; out-of-range values (never seen from AWS)
/// become `None` rather than a panic.
fn timestamp(value: &DateTime) -> Option<Timestamp> {
    Timestamp::new(value.secs(), i32::try_from(value.subsec_nanos()).ok()?).ok()
}

/// A malformed response: the service answered 200 but left out a field it documents
/// as always present.
fn missing(operation: &'static str, field: &str) -> crate::cloud::CloudError {
    errors::cloud_error(operation, errors::Kind::Other, format!("response has no {field}"), None)
}
