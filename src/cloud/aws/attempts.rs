//! Counts every failed HTTP attempt, including those the SDK's standard retry hides:
//! a call that succeeds on its third attempt still reports two failures, so
//! throttling and 5xx storms show in metrics even when no call fails outright.
//! Throttling is told by the error code, not the status: RDS, SSM and ECR throttle
//! with HTTP 400 (`Throttling`, `ThrottlingException`), EC2 with 503
//! (`RequestLimitExceeded`). An SDK interceptor; no I/O of its own.

use std::fmt;
use std::sync::Arc;

use aws_sdk_ec2::config::interceptors::FinalizerInterceptorContextRef;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ec2::error::BoxError;

use crate::cloud::CallObserver;

/// Why an attempt failed, from its HTTP status and the error code it carried.
pub fn attempt_failure(status: Option<u16>, code: Option<&str>) -> Option<&'static str> {
    match status {
        None => Some("transport"),
        Some(s) if (200..300).contains(&s) => None,
        Some(s) if super::errors::classify(code, Some(s)) == super::errors::Kind::Throttled => Some("throttled"),
        Some(s) if s >= 500 => Some("server_error"),
        Some(_) => Some("client_error"),
    }
}

/// The error code of a failed response, in the three shapes our services answer
/// with: the `x-amzn-ErrorType` header (JSON protocols: SSM, ECR), `"__type"` in a
/// JSON body, or `<Code>` in an XML body (query protocols: EC2, RDS).
pub fn error_code<'a>(error_type_header: Option<&'a str>, body: &'a [u8]) -> Option<&'a str> {
    if let Some(header) = error_type_header {
        // `ThrottlingException:http://internal.amazon.com/coral/...`
        return header.split(':').next().filter(|c| !c.is_empty());
    }
    let text = std::str::from_utf8(body).ok()?;
    if let Some(start) = text.find("<Code>") {
        let rest = &text[start + "<Code>".len()..];
        return rest.find("</Code>").map(|end| &rest[..end]);
    }
    let start = text.find("\"__type\"")?;
    let rest = &text[start + "\"__type\"".len()..];
    let rest = &rest[rest.find('"')? + 1..];
    let code = &rest[..rest.find('"')?];
    // `com.amazonaws.ssm#ThrottlingException` in some services' bodies.
    Some(code.rsplit('#').next().unwrap_or(code))
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
        let response = context.response();
        let status = response.map(|r| r.status().as_u16());
        let code = response.and_then(|r| {
            let header = r.headers().get("x-amzn-errortype");
            error_code(header, r.body().bytes().unwrap_or_default())
        });
        if let Some(reason) = attempt_failure(status, code) {
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
        assert_eq!(attempt_failure(Some(200), None), None);
        assert_eq!(attempt_failure(Some(503), None), Some("server_error"));
        assert_eq!(attempt_failure(Some(400), None), Some("client_error"));
        assert_eq!(attempt_failure(Some(429), None), Some("throttled"));
        assert_eq!(attempt_failure(None, None), Some("transport"));
    }

    /// Throttles come as HTTP 400 from RDS, SSM and ECR and as 503 from EC2; the code
    /// says what they are (they used to count as client or server errors).
    #[test]
    fn throttles_are_told_by_their_code() {
        assert_eq!(attempt_failure(Some(400), Some("Throttling")), Some("throttled"));
        assert_eq!(
            attempt_failure(Some(400), Some("ThrottlingException")),
            Some("throttled")
        );
        assert_eq!(
            attempt_failure(Some(503), Some("RequestLimitExceeded")),
            Some("throttled")
        );
        assert_eq!(
            attempt_failure(Some(400), Some("InvalidParameterValue")),
            Some("client_error")
        );
    }

    #[test]
    fn error_codes_are_read_in_each_protocol() {
        let ec2 = b"<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>slow</Message></Error></Errors></Response>";
        assert_eq!(error_code(None, ec2), Some("RequestLimitExceeded"));
        let rds = b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code></Error></ErrorResponse>";
        assert_eq!(error_code(None, rds), Some("Throttling"));
        let json = br#"{"__type": "com.amazonaws.ssm#ThrottlingException", "message": "slow"}"#;
        assert_eq!(error_code(None, json), Some("ThrottlingException"));
        assert_eq!(
            error_code(
                Some("ThrottlingException:http://internal.amazon.com/coral/com.amazonaws.ssm/"),
                b""
            ),
            Some("ThrottlingException")
        );
        assert_eq!(error_code(None, b"not an error body"), None);
    }
}
