//! Refuses to let a request leave while the fence is closed: the last check before
//! transmission, after signing and after every retry decision, so no path through
//! the SDK (a retry, a paginator's next page) sends a request past the leader's
//! deadline. An SDK interceptor; no I/O of its own.

use std::fmt;
use std::sync::Arc;

use aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ec2::error::BoxError;

use crate::fence::Fence;

/// The error a fenced request fails with (its text reaches logs and metrics).
pub const FENCED: &str = "not sent: this replica's leadership deadline has passed (fenced)";

pub struct Fencing {
    pub fence: Arc<Fence>,
}

impl fmt::Debug for Fencing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fencing").field("open", &self.fence.is_open()).finish()
    }
}

impl Intercept for Fencing {
    fn name(&self) -> &'static str {
        "featureenv-fencing"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if self.fence.is_open() {
            Ok(())
        } else {
            Err(FENCED.into())
        }
    }
}
