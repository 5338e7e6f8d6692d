//! Counts every failed HTTP attempt, including those the SDK's standard retry hides:
//! a call that succeeds on its third attempt still reports two failures, so
//! throttling and 5xx storms show in metrics even when no call fails outright. An SDK
//! interceptor; no I/O of its own.

use std::fmt;
use std::sync::Arc;

use aws_sdk_ec2::config::interceptors::FinalizerInterceptorContextRef;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ec2::error::BoxError;

use crate::cloud::CallObserver;

/// Why an attempt failed, from its HTTP status (the error body is not parsed here).
pub fn attempt_failure(status: Option<u16>) -> Option<&'static str> {
    match status {
        None => Some("transport"),
        Some(429) => Some("throttled"),
        Some(s) if (200..300).contains(&s) => None,
        Some(s) if s >= 500 => Some("server_error"),
        Some(_) => Some("client_error"),
    }
}

pub struct FailedAttempts {
    pub service: &'static str,
    pub observer: Arc<dyn CallObserver>,
}

impl fmt::Debug for FailedAttempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailedAttempts")
            .field("service", &self.service)
            .finish()
    }
}

impl Intercept for FailedAttempts {
    fn name(&self) -> &'static str {
        "featureenv-failed-attempts"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(reason) = attempt_failure(context.response().map(|r| r.status().as_u16())) {
            self.observer.failed_attempt(self.service, reason);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_reasons() {
        assert_eq!(attempt_failure(Some(200)), None);
        assert_eq!(attempt_failure(Some(503)), Some("server_error"));
        assert_eq!(attempt_failure(Some(400)), Some("client_error"));
        assert_eq!(attempt_failure(Some(429)), Some("throttled"));
        assert_eq!(attempt_failure(None), Some("transport"));
    }
}
