//! featureenv-operator: provisions private full-stack feature environments (an EC2
//! instance plus a claimed warm RDS database) from `FeatureEnvironment` objects.
#![forbid(unsafe_code)]

pub mod api;
pub mod bootstrap;
pub mod cloud;
pub mod config;
pub mod controller;
pub mod cron;
pub mod fence;
pub mod http;
pub mod inventory;
pub mod janitor;
pub mod leader;
pub mod metrics;
pub mod naming;
pub mod plugin;
pub mod runtime;

#[cfg(any(test, feature = "test-fixtures"))]
#[doc(hidden)]
pub mod test_fixtures;
