//! Cloud errors in domain terms. The AWS adapter maps every service error code to
//! one of these kinds in one place (`aws::errors`); nothing else inspects AWS codes.

/// What kind of failure a cloud call had; decides retry policy and condition reasons.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("{operation}: not found: {message}")]
    NotFound { operation: &'static str, message: String },
    #[error("{operation}: already exists: {message}")]
    AlreadyExists { operation: &'static str, message: String },
    #[error("{operation}: throttled: {message}")]
    Throttled { operation: &'static str, message: String },
    #[error("{operation}: insufficient capacity: {message}")]
    InsufficientCapacity { operation: &'static str, message: String },
    #[error("{operation}: invalid request: {message}")]
    InvalidRequest { operation: &'static str, message: String },
    /// The resource is in a state that refuses the call for now (RDS's
    /// InvalidDBInstanceState: a second delete while it is deleting, a password change
    /// while it is still creating). Passes with time.
    #[error("{operation}: not in a state for this: {message}")]
    InvalidState { operation: &'static str, message: String },
    #[error("{operation}: {message}")]
    Other {
        operation: &'static str,
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

pub type CloudResult<T> = Result<T, CloudError>;

impl CloudError {
    /// Stable label for metrics, condition reasons and Events.
    pub fn category(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "NotFound",
            Self::AlreadyExists { .. } => "AlreadyExists",
            Self::Throttled { .. } => "Throttled",
            Self::InsufficientCapacity { .. } => "InsufficientCapacity",
            Self::InvalidRequest { .. } => "InvalidRequest",
            Self::InvalidState { .. } => "InvalidState",
            Self::Other { .. } => "CloudError",
        }
    }

    pub fn operation(&self) -> &'static str {
        match self {
            Self::NotFound { operation, .. }
            | Self::AlreadyExists { operation, .. }
            | Self::Throttled { operation, .. }
            | Self::InsufficientCapacity { operation, .. }
            | Self::InvalidRequest { operation, .. }
            | Self::InvalidState { operation, .. }
            | Self::Other { operation, .. } => operation,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// Worth retrying with backoff (as opposed to a request that will never work).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Throttled { .. } | Self::InsufficientCapacity { .. } | Self::InvalidState { .. } | Self::Other { .. }
        )
    }
}
