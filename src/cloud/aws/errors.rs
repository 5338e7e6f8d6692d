//! The one place that knows AWS error codes: maps SDK errors from EC2, RDS, SSM and
//! ECR to `CloudError` kinds. Pure; no I/O.

use std::error::Error as StdError;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::cloud::CloudError;

/// The kind of failure, before it is attached to an operation and message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    NotFound,
    AlreadyExists,
    Throttled,
    InsufficientCapacity,
    InvalidRequest,
    InvalidState,
    Other,
}

/// Codes every service shares or that a service returns in several spellings
/// (query-protocol services use the short code, JSON services the exception name).
fn kind_of_code(code: &str) -> Option<Kind> {
    let kind = match code {
        // Throttling, in the spellings EC2, RDS, SSM, ECR and S3-style endpoints use.
        "Throttling"
        | "ThrottlingException"
        | "ThrottledException"
        | "RequestLimitExceeded"
        | "RequestThrottled"
        | "RequestThrottledException"
        | "TooManyRequestsException"
        | "TooManyUpdates"
        | "SlowDown"
        | "EC2ThrottledException"
        | "PriorRequestNotComplete"
        | "BandwidthLimitExceeded" => Kind::Throttled,

        // Capacity and quotas: transient from our point of view (another AZ, a later
        // attempt, or someone raising a quota fixes them without a spec change).
        "InsufficientInstanceCapacity"
        | "InsufficientHostCapacity"
        | "InsufficientReservedInstanceCapacity"
        | "InsufficientCapacity"
        | "InsufficientFreeAddressesInSubnet"
        | "InstanceLimitExceeded"
        | "VcpuLimitExceeded"
        | "InsufficientDBInstanceCapacity"
        | "InsufficientDBInstanceCapacityFault"
        | "InstanceQuotaExceeded"
        | "InstanceQuotaExceededFault"
        | "StorageQuotaExceeded"
        | "StorageQuotaExceededFault" => Kind::InsufficientCapacity,

        // The thing the call targets does not exist. A malformed instance id can never
        // exist either; treating it as gone lets cleanup finish instead of looping.
        "InvalidInstanceID.NotFound"
        | "InvalidInstanceID.Malformed"
        | "InvalidAMIID.NotFound"
        | "InvalidAMIID.Unavailable"
        | "DBInstanceNotFound"
        | "DBInstanceNotFoundFault"
        | "DBSnapshotNotFound"
        | "DBSnapshotNotFoundFault"
        | "ParameterNotFound"
        | "RepositoryNotFoundException"
        | "ImageNotFoundException" => Kind::NotFound,

        "DBInstanceAlreadyExists"
        | "DBInstanceAlreadyExistsFault"
        | "ParameterAlreadyExists"
        | "RepositoryAlreadyExistsException"
        | "ImageAlreadyExistsException" => Kind::AlreadyExists,

        // Requests that will fail the same way until someone changes the spec or the
        // class (bad id syntax, a subnet group or security group that is not there).
        "InvalidParameterValue"
        | "InvalidParameterCombination"
        | "InvalidParameter"
        | "MissingParameter"
        | "InvalidParameterValueException"
        | "InvalidParameterException"
        | "ValidationError"
        | "ValidationException"
        | "InvalidAMIID.Malformed"
        | "IdempotentParameterMismatch"
        | "Unsupported"
        | "UnsupportedOperation"
        | "DBSubnetGroupNotFoundFault"
        | "InvalidSubnet"
        | "InvalidVPCNetworkStateFault"
        | "HierarchyLevelLimitExceededException"
        | "ParameterPatternMismatchException"
        | "InvalidDocument"
        | "InvalidParameters"
        | "UnsupportedPlatformType"
        | "MaxDocumentSizeExceeded" => Kind::InvalidRequest,

        // States that pass: RDS refuses to modify a DB that is still creating, and to
        // delete one that is already deleting. Retried; a caller that deletes reads it
        // as "already on its way".
        "InvalidDBInstanceState" | "InvalidDBInstanceStateFault" | "InvalidDBSnapshotState" => Kind::InvalidState,
        // SSM Run Command: the instance is no managed node yet (its agent has not
        // registered) or no longer (shutting down). Retried; the update waits.
        "InvalidInstanceId" => Kind::InvalidState,
        // StopInstances/StartInstances of an instance in a state they cannot change
        // (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html).
        "IncorrectInstanceState" => Kind::InvalidState,

        // Server side trouble: retried with bounded backoff.
        "InternalError"
        | "InternalFailure"
        | "InternalServerError"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "Unavailable" => Kind::Other,

        _ => return None,
    };
    Some(kind)
}

/// Classifies a failure from what the response carried. `code` wins; without a
/// known code the HTTP status decides (429 throttled, everything else other), and
/// EC2's open-ended `<Thing>.NotFound` family is recognised by suffix.
pub(crate) fn classify(code: Option<&str>, http_status: Option<u16>) -> Kind {
    if let Some(code) = code {
        if let Some(kind) = kind_of_code(code) {
            return kind;
        }
        if code.ends_with(".NotFound") || code.ends_with("NotFoundFault") {
            return Kind::NotFound;
        }
        if code.ends_with(".Malformed") {
            return Kind::InvalidRequest;
        }
    }
    match http_status {
        Some(429) => Kind::Throttled,
        _ => Kind::Other,
    }
}

/// Operations whose only "not found" can be a missing *referenced* resource (a subnet,
/// security group, image or instance profile named in the request). For them a
/// NotFound means a broken configuration, not that the target is already gone.
fn not_found_means_invalid(operation: &str) -> bool {
    matches!(operation, "RunInstances")
}

/// Turns a kind into a `CloudError` for `operation`.
pub(crate) fn cloud_error(
    operation: &'static str,
    kind: Kind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
) -> CloudError {
    let kind = if kind == Kind::NotFound && not_found_means_invalid(operation) {
        Kind::InvalidRequest
    } else {
        kind
    };
    match kind {
        Kind::NotFound => CloudError::NotFound { operation, message },
        Kind::AlreadyExists => CloudError::AlreadyExists { operation, message },
        Kind::Throttled => CloudError::Throttled { operation, message },
        Kind::InsufficientCapacity => CloudError::InsufficientCapacity { operation, message },
        Kind::InvalidRequest => CloudError::InvalidRequest { operation, message },
        Kind::InvalidState => CloudError::InvalidState { operation, message },
        Kind::Other => CloudError::Other {
            operation,
            message,
            source,
        },
    }
}

/// Maps any SDK error of any of our services. Transport failures (dispatch, timeout,
/// unparseable response) and construction failures are `Other`: retried, never
/// mistaken for "not found".
pub(crate) fn from_sdk<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> CloudError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(context) => {
            let service_err = context.err();
            let status = context.raw().status().as_u16();
            let code = service_err.code();
            let kind = classify(code, Some(status));
            let message = match (code, service_err.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_owned(),
                (None, Some(message)) => format!("HTTP {status}: {message}"),
                (None, None) => format!("HTTP {status}"),
            };
            cloud_error(operation, kind, message, Some(Box::new(err)))
        }
        SdkError::TimeoutError(_) => cloud_error(
            operation,
            Kind::Other,
            "request timed out".to_owned(),
            Some(Box::new(err)),
        ),
        SdkError::DispatchFailure(_) => {
            let message = format!("request could not be sent: {}", DisplayErrorContext(&err));
            cloud_error(operation, Kind::Other, message, Some(Box::new(err)))
        }
        SdkError::ResponseError(context) => {
            let status = context.raw().status().as_u16();
            let message = format!("unreadable response (HTTP {status}): {}", DisplayErrorContext(&err));
            cloud_error(operation, classify(None, Some(status)), message, Some(Box::new(err)))
        }
        _ => {
            let message = DisplayErrorContext(&err).to_string();
            cloud_error(operation, Kind::Other, message, Some(Box::new(err)))
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::error::{ConnectorError, ErrorMetadata};
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        let cases = [
            ("InvalidInstanceID.NotFound", Kind::NotFound),
            ("InvalidInstanceID.Malformed", Kind::NotFound),
            ("InvalidAMIID.NotFound", Kind::NotFound),
            ("InvalidAMIID.Malformed", Kind::InvalidRequest),
            ("DBInstanceNotFound", Kind::NotFound),
            ("DBInstanceNotFoundFault", Kind::NotFound),
            ("DBSnapshotNotFound", Kind::NotFound),
            ("ParameterNotFound", Kind::NotFound),
            ("RepositoryNotFoundException", Kind::NotFound),
            ("ImageNotFoundException", Kind::NotFound),
            ("DBInstanceAlreadyExists", Kind::AlreadyExists),
            ("ParameterAlreadyExists", Kind::AlreadyExists),
            ("Throttling", Kind::Throttled),
            ("ThrottlingException", Kind::Throttled),
            ("RequestLimitExceeded", Kind::Throttled),
            ("TooManyRequestsException", Kind::Throttled),
            ("SlowDown", Kind::Throttled),
            ("InsufficientInstanceCapacity", Kind::InsufficientCapacity),
            ("InsufficientDBInstanceCapacity", Kind::InsufficientCapacity),
            ("InvalidParameterValue", Kind::InvalidRequest),
            ("InvalidParameterCombination", Kind::InvalidRequest),
            ("ValidationException", Kind::InvalidRequest),
            ("DBSubnetGroupNotFoundFault", Kind::InvalidRequest),
            ("InternalError", Kind::Other),
            ("InvalidDBInstanceState", Kind::InvalidState),
            // EC2's open-ended families, recognised by suffix.
            ("InvalidVolume.NotFound", Kind::NotFound),
            ("InvalidGroupId.Malformed", Kind::InvalidRequest),
        ];
        for (code, want) in cases {
            assert_eq!(classify(Some(code), Some(400)), want, "code {code}");
        }
    }

    #[test]
    fn unknown_codes_fall_back_to_http_status() {
        assert_eq!(classify(Some("SomethingNew"), Some(429)), Kind::Throttled);
        assert_eq!(classify(None, Some(429)), Kind::Throttled);
        assert_eq!(classify(None, Some(503)), Kind::Other);
        assert_eq!(classify(Some("SomethingNew"), Some(400)), Kind::Other);
        assert_eq!(classify(None, None), Kind::Other);
    }

    #[test]
    fn missing_reference_in_run_instances_is_invalid_not_gone() {
        let err = cloud_error(
            "RunInstances",
            classify(Some("InvalidSubnetID.NotFound"), Some(400)),
            "x".into(),
            None,
        );
        assert_eq!(err.category(), "InvalidRequest");
        let err = cloud_error("TerminateInstances", Kind::NotFound, "x".into(), None);
        assert!(err.is_not_found());
    }

    fn response(status: u16) -> HttpResponse {
        HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty())
    }

    #[test]
    fn service_errors_carry_code_and_message() {
        use aws_sdk_ssm::operation::delete_parameter::DeleteParameterError;
        let meta = ErrorMetadata::builder()
            .code("ParameterNotFound")
            .message("Parameter /x not found.")
            .build();
        let err: SdkError<DeleteParameterError, HttpResponse> =
            SdkError::service_error(DeleteParameterError::generic(meta), response(400));
        let mapped = from_sdk("DeleteParameter", err);
        assert!(mapped.is_not_found());
        assert_eq!(mapped.operation(), "DeleteParameter");
        assert!(
            mapped
                .to_string()
                .contains("ParameterNotFound: Parameter /x not found."),
            "{mapped}"
        );
    }

    #[test]
    fn throttling_from_a_json_service() {
        use aws_sdk_ecr::operation::describe_images::DescribeImagesError;
        let meta = ErrorMetadata::builder().code("ThrottlingException").build();
        let err: SdkError<DescribeImagesError, HttpResponse> =
            SdkError::service_error(DescribeImagesError::generic(meta), response(400));
        assert_eq!(from_sdk("DescribeImages", err).category(), "Throttled");
    }

    #[test]
    fn server_errors_without_code_are_other() {
        use aws_sdk_rds::operation::describe_db_instances::DescribeDBInstancesError;
        let err: SdkError<DescribeDBInstancesError, HttpResponse> = SdkError::service_error(
            DescribeDBInstancesError::generic(ErrorMetadata::builder().build()),
            response(503),
        );
        let mapped = from_sdk("DescribeDBInstances", err);
        assert_eq!(mapped.category(), "CloudError");
        assert!(mapped.is_transient());
        assert!(mapped.to_string().contains("HTTP 503"), "{mapped}");
    }

    #[test]
    fn transport_failures_are_other_and_never_not_found() {
        use aws_sdk_ec2::operation::describe_instances::DescribeInstancesError;
        let timeout: SdkError<DescribeInstancesError, HttpResponse> = SdkError::timeout_error("deadline");
        let mapped = from_sdk("DescribeInstances", timeout);
        assert_eq!(mapped.category(), "CloudError");
        assert!(mapped.is_transient());

        let dispatch: SdkError<DescribeInstancesError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io("connection refused".into()));
        let mapped = from_sdk("DescribeInstances", dispatch);
        assert_eq!(mapped.category(), "CloudError");
        assert!(mapped.to_string().contains("could not be sent"), "{mapped}");
    }
}
