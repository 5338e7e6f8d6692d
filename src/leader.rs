//! Leader election on a `coordination.k8s.io/v1` Lease, with a fencing deadline of
//! our own. The leader renews every retry period; after each renewal that
//! succeeds it opens the [`Fence`] until the moment that renewal *started* plus the
//! renew deadline. A candidate takes a Lease over only when the record has not
//! changed for the lease duration, measured on its own clock from when it first saw
//! that record (as client-go does, so clocks need not agree). Since the renew
//! deadline is shorter than the lease duration, a leader cut off from the API server
//! stops acting (the fence closes, and [`Elector::hold`] returns) before anyone can
//! take over. kube-lease-manager, used before, logged failed renewals but never
//! reported a lost lease. Does I/O (the Lease); the rules are in [`LeaseTiming`].
//!
//! Every write carries the resourceVersion it was based on, so two candidates can
//! never both win: the second write fails with a conflict.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::fence::Fence;

/// How long leadership lasts and how often it is renewed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// Written into the Lease: how long candidates wait for a silent holder.
    pub duration: Duration,
    /// How long after the start of its last successful renewal the leader may act.
    pub renew_deadline: Duration,
    /// How often the leader renews and a candidate looks at the Lease.
    pub retry_period: Duration,
}

impl LeaseTiming {
    /// From the flags: the renew deadline defaults to two thirds of the lease
    /// duration and the retry period to a fifth of it, at most 2 s (client-go's
    /// 15 s / 10 s / 2 s at the default duration).
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let duration = config.lease_duration;
        let timing = Self {
            duration,
            renew_deadline: config.lease_renew_deadline.unwrap_or(duration * 2 / 3),
            retry_period: config
                .lease_retry_period
                .unwrap_or_else(|| (duration / 5).min(Duration::from_secs(2))),
        };
        timing.check()?;
        Ok(timing)
    }

    /// The deadline must end before a candidate may take over, and leave room for
    /// a second renewal attempt after a failed one.
    fn check(&self) -> Result<(), String> {
        if self.duration < Duration::from_secs(1) {
            return Err(format!("--lease-duration must be at least 1s, got {:?}", self.duration));
        }
        if self.renew_deadline >= self.duration {
            return Err(format!(
                "--lease-renew-deadline ({:?}) must be shorter than --lease-duration ({:?}), or a cut-off leader could still act after another replica took over",
                self.renew_deadline, self.duration
            ));
        }
        if self.retry_period.is_zero() || self.retry_period * 2 > self.renew_deadline {
            return Err(format!(
                "--lease-retry-period ({:?}) must be above zero and at most half of --lease-renew-deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        Ok(())
    }

    /// Lease durations are whole seconds in the API; rounded up, never down.
    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs() + u64::from(self.duration.subsec_nanos() > 0)).unwrap_or(i32::MAX)
    }
}

/// Why a leader stopped leading.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    #[error("the Lease is now held by {0:?}")]
    TakenBy(String),
    #[error("no renewal succeeded within the renew deadline ({0:?})")]
    DeadlinePassed(Duration),
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
    fence: Arc<Fence>,
    /// The resourceVersion of our last write: the next write must be based on it.
    resource_version: Option<String>,
    /// When the last successful write of ours started.
    renewed_at: Option<Instant>,
}

/// A record of someone else's, and when we first saw it unchanged.
struct Observed {
    resource_version: Option<String>,
    since: Instant,
}

enum Attempt {
    Acquired,
    /// Someone else holds it; look again no later than this.
    Held {
        expires: Instant,
    },
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: LeaseTiming,
        fence: Arc<Fence>,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
            fence,
            resource_version: None,
            renewed_at: None,
        }
    }

    /// Waits until this replica holds the Lease, then opens the fence.
    pub async fn acquire(&mut self) {
        let mut observed: Option<Observed> = None;
        loop {
            let started = Instant::now();
            let attempt =
                tokio::time::timeout(self.timing.retry_period, self.try_acquire(&mut observed, started)).await;
            let mut wait = self.timing.retry_period;
            match attempt {
                Ok(Ok(Attempt::Acquired)) => {
                    self.renewed(started);
                    info!(identity = %self.identity, lease = %self.name, "acquired the Lease");
                    return;
                }
                Ok(Ok(Attempt::Held { expires })) => {
                    // Look again when it would expire if that is sooner: takeover
                    // then follows a dead leader by about the lease duration.
                    wait = wait.min(expires.saturating_duration_since(Instant::now()));
                }
                Ok(Err(e)) => warn!(error = %e, lease = %self.name, "reading or taking the Lease failed"),
                Err(_) => warn!(lease = %self.name, "reading or taking the Lease timed out"),
            }
            tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
        }
    }

    async fn try_acquire(&mut self, observed: &mut Option<Observed>, now: Instant) -> kube::Result<Attempt> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            return match self
                .api
                .create(&PostParams::default(), &self.record(None, Some(0)))
                .await
            {
                Ok(created) => {
                    self.resource_version = created.metadata.resource_version;
                    Ok(Attempt::Acquired)
                }
                // Another candidate created it first.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Held { expires: now }),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.unwrap_or_default();
        let holder = spec.holder_identity.filter(|h| !h.is_empty());
        let transitions = spec.lease_transitions.unwrap_or(0);
        let rv = lease.metadata.resource_version;
        if let Some(holder) = holder.as_ref().filter(|h| **h != self.identity) {
            // Someone else's. It expires a lease duration after we first saw this
            // version of it; any write (a renewal) starts the count again.
            let seen = match observed {
                Some(o) if o.resource_version == rv => o.since,
                _ => {
                    *observed = Some(Observed {
                        resource_version: rv.clone(),
                        since: now,
                    });
                    now
                }
            };
            let lasts = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.timing.duration, Duration::from_secs);
            if now.duration_since(seen) < lasts {
                debug!(holder = %holder, "the Lease is held");
                return Ok(Attempt::Held { expires: seen + lasts });
            }
            info!(holder = %holder, "the Lease expired; taking it over");
        }
        // Free, released, expired, or ours from an earlier life of this replica.
        let taken_over = holder.is_some_and(|h| h != self.identity);
        let record = self.record(rv, Some(transitions + i32::from(taken_over)));
        match self.write(record).await {
            Ok(()) => Ok(Attempt::Acquired),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Held { expires: now }),
            Err(e) => Err(e),
        }
    }

    /// Renews until leadership is lost; the fence is closed when this returns.
    pub async fn hold(&mut self) -> Lost {
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            let deadline = self.deadline();
            let started = Instant::now();
            let Some(left) = deadline.checked_duration_since(started).filter(|d| !d.is_zero()) else {
                return self.lose(Lost::DeadlinePassed(self.timing.renew_deadline));
            };
            match tokio::time::timeout(left, self.renew()).await {
                Ok(Ok(())) => self.renewed(started),
                Ok(Err(Renewal::TakenBy(holder))) => return self.lose(Lost::TakenBy(holder)),
                Ok(Err(Renewal::Failed(e))) => {
                    warn!(error = %e, lease = %self.name, "renewing the Lease failed; retrying until the renew deadline");
                }
                Err(_) => return self.lose(Lost::DeadlinePassed(self.timing.renew_deadline)),
            }
        }
    }

    /// Closes the fence, then hands the Lease back so a stand-by takes over at once.
    pub async fn release(&mut self) {
        self.fence.close();
        let Some(rv) = self.resource_version.clone() else {
            return;
        };
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": rv},
            "spec": {"holderIdentity": null, "leaseDurationSeconds": 1, "renewTime": MicroTime(jiff::Timestamp::now())},
        });
        let released = tokio::time::timeout(
            self.timing.retry_period,
            self.api
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await;
        match released {
            Ok(Ok(_)) => info!(lease = %self.name, "released the Lease"),
            Ok(Err(e)) => warn!(error = %e, "releasing the Lease failed; a stand-by takes over when it expires"),
            Err(_) => warn!("releasing the Lease timed out; a stand-by takes over when it expires"),
        }
    }

    /// One renewal: a write based on our last one. A conflict means someone wrote in
    /// between; if it is still ours (a person editing it), the next attempt uses the
    /// version read here.
    async fn renew(&mut self) -> Result<(), Renewal> {
        let record = self.record(self.resource_version.clone(), None);
        match self.write(record).await {
            Ok(()) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                let current = self.api.get_opt(&self.name).await.map_err(Renewal::Failed)?;
                let holder = current
                    .as_ref()
                    .and_then(|l| l.spec.as_ref())
                    .and_then(|s| s.holder_identity.clone())
                    .unwrap_or_default();
                if holder != self.identity {
                    return Err(Renewal::TakenBy(holder));
                }
                self.resource_version = current.and_then(|l| l.metadata.resource_version);
                Err(Renewal::Failed(kube::Error::Api(e)))
            }
            Err(e) => Err(Renewal::Failed(e)),
        }
    }

    /// Writes `record` (a merge patch that carries its resourceVersion, so it fails
    /// with a conflict when the Lease changed since).
    async fn write(&mut self, record: Lease) -> kube::Result<()> {
        let written = self
            .api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&record))
            .await?;
        self.resource_version = written.metadata.resource_version;
        Ok(())
    }

    /// The Lease as we hold it, based on `resource_version`. Renewals leave
    /// `transitions` and the acquire time out, and the merge patch keeps them.
    fn record(&self, resource_version: Option<String>, transitions: Option<i32>) -> Lease {
        let now = MicroTime(jiff::Timestamp::now());
        let acquired = if self.renewed_at.is_some() {
            None
        } else {
            Some(now.clone())
        };
        Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(self.name.clone()),
                resource_version,
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.timing.duration_seconds()),
                acquire_time: acquired,
                renew_time: Some(now),
                lease_transitions: transitions,
                ..Default::default()
            }),
        }
    }

    fn renewed(&mut self, started: Instant) {
        self.renewed_at = Some(started);
        self.fence.open_until(started + self.timing.renew_deadline);
    }

    fn deadline(&self) -> Instant {
        self.renewed_at
            .map_or_else(Instant::now, |at| at + self.timing.renew_deadline)
    }

    fn lose(&mut self, why: Lost) -> Lost {
        self.fence.close();
        warn!(lease = %self.name, reason = %why, "lost leadership; stopped acting");
        why
    }
}

enum Renewal {
    TakenBy(String),
    Failed(kube::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(duration: u64, renew: Option<u64>, retry: Option<u64>) -> Config {
        let mut config = Config::for_tests("c");
        config.lease_duration = Duration::from_secs(duration);
        config.lease_renew_deadline = renew.map(Duration::from_secs);
        config.lease_retry_period = retry.map(Duration::from_secs);
        config
    }

    #[test]
    fn defaults_follow_client_go_at_fifteen_seconds() {
        let timing = LeaseTiming::from_config(&config(15, None, None)).unwrap();
        assert_eq!(timing.renew_deadline, Duration::from_secs(10));
        assert_eq!(timing.retry_period, Duration::from_secs(2));
        let short = LeaseTiming::from_config(&config(6, None, None)).unwrap();
        assert_eq!(short.renew_deadline, Duration::from_secs(4));
        assert_eq!(short.retry_period, Duration::from_millis(1200));
    }

    #[test]
    fn a_deadline_as_long_as_the_lease_is_refused_naming_the_flags() {
        let error = LeaseTiming::from_config(&config(10, Some(10), None)).unwrap_err();
        assert!(
            error.contains("--lease-renew-deadline") && error.contains("--lease-duration"),
            "{error}"
        );
        let error = LeaseTiming::from_config(&config(10, Some(6), Some(4))).unwrap_err();
        assert!(error.contains("--lease-retry-period"), "{error}");
    }

    #[test]
    fn durations_round_up_to_whole_seconds() {
        let timing = LeaseTiming {
            duration: Duration::from_millis(4500),
            renew_deadline: Duration::from_secs(3),
            retry_period: Duration::from_secs(1),
        };
        assert_eq!(timing.duration_seconds(), 5);
    }
}
