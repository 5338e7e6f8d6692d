//! Deterministic names for everything the operator creates in AWS and Kubernetes,
//! so a retried or restarted reconcile finds what an earlier attempt made instead of
//! making it twice. Pure.

use sha2::{Digest, Sha256};

/// RDS DB instance identifiers: 1–63 chars, letters, digits and hyphens, a letter
/// first, no `--`, no trailing `-`.
pub const RDS_ID_MAX: usize = 63;

fn short_hash(parts: &[&str], len: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>()[..len].to_owned()
}

/// Names a set of services and their requested images: 16 hex characters, the same
/// for the same `(name, image)` pairs in the same order. A services update tags its
/// outcome with it.
pub fn services_token<'a>(services: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let lines: Vec<String> = services
        .into_iter()
        .map(|(name, image)| format!("{name}={image}"))
        .collect();
    let parts: Vec<&str> = lines.iter().map(String::as_str).collect();
    short_hash(&parts, 16)
}

/// Lower-case letters and digits of `s`, runs of anything else collapsed to one `-`,
/// trimmed of hyphens, cut to `max` chars.
fn slug(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out: String = out.trim_matches('-').chars().take(max).collect();
    out.trim_end_matches('-').to_owned()
}

/// The `featureenv.io/snapshot` tag value for a snapshot id. RDS refuses tag values
/// that start with `rds:` or `aws:` (RDS API reference, `Tag`), and automated
/// snapshots are named `rds:<db>-<date>`: their prefix becomes `automated:`. A manual
/// snapshot's id has no `:`, so the mapping cannot collide and [`snapshot_from_tag`]
/// undoes it.
pub fn snapshot_tag(snapshot_id: &str) -> String {
    match snapshot_id.strip_prefix("rds:") {
        Some(rest) => format!("automated:{rest}"),
        None => snapshot_id.to_owned(),
    }
}

/// The snapshot id a `featureenv.io/snapshot` tag value stands for.
pub fn snapshot_from_tag(value: &str) -> String {
    match value.strip_prefix("automated:") {
        Some(rest) => format!("rds:{rest}"),
        None => value.to_owned(),
    }
}

/// Identifier of the `slot`-th spare of `pool` restored from `snapshot`:
/// `fe-<pool slug>-<hash of pool and snapshot>-<slot>`. The hash keeps distinct pools
/// (and snapshots) apart however their slugs collide; the slug keeps it readable.
pub fn pool_database_id(pool: &str, snapshot: &str, slot: u32) -> String {
    let hash = short_hash(&[pool, snapshot], 10);
    let slot = slot.to_string();
    // "fe-" + slug + "-" + hash + "-" + slot
    let room = RDS_ID_MAX - 3 - 1 - hash.len() - 1 - slot.len();
    let pool_slug = slug(pool, room.min(30));
    if pool_slug.is_empty() {
        format!("fe-{hash}-{slot}")
    } else {
        format!("fe-{pool_slug}-{hash}-{slot}")
    }
}

/// Whether `id` is a valid RDS DB instance identifier.
pub fn is_valid_rds_identifier(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= RDS_ID_MAX
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.contains("--")
        && !id.ends_with('-')
}

/// RunInstances ClientToken for an environment's `attempt`-th launch (≤ 64 chars).
pub fn launch_token(uid: &str, attempt: u32) -> String {
    format!("fe-{}-{attempt}", short_hash(&[uid], 40))
}

/// The attempt a launch token was made for (the inverse of [`launch_token`]).
pub fn launch_attempt(token: &str) -> Option<u32> {
    token.strip_prefix("fe-")?.rsplit_once('-')?.1.parse().ok()
}

/// RunInstances ClientToken for a class's `number`-th spare (≤ 64 chars). Keyed by
/// the class's uid, so a class deleted and made again never reuses a token EC2 still
/// remembers.
pub fn spare_token(class_uid: &str, number: u64) -> String {
    format!("spare-{}-{number}", short_hash(&[class_uid], 40))
}

/// Names the personalisation of a claimed spare for one environment and its
/// services (the outcome tag `featureenv.io/services=complete:<token>` carries it).
pub fn personalisation_token(uid: &str, services_token: &str) -> String {
    format!("p{}", short_hash(&[uid, services_token], 15))
}

/// SSM parameter holding an environment's database credentials. Keyed by uid so a
/// re-created environment of the same name never reads its predecessor's.
pub fn database_parameter(prefix: &str, cluster_id: &str, uid: &str) -> String {
    format!("{}/{}/{uid}/database", prefix.trim_end_matches('/'), cluster_id)
}

/// Path under which an environment's parameters live (its database parameter is
/// the one below it).
pub fn environment_parameters(prefix: &str, cluster_id: &str, uid: &str) -> String {
    format!("{}/{uid}", parameter_root(prefix, cluster_id))
}

/// Path under which every parameter of this operator installation lives.
pub fn parameter_root(prefix: &str, cluster_id: &str) -> String {
    format!("{}/{}", prefix.trim_end_matches('/'), cluster_id)
}

/// Secret with an environment's database credentials, in its namespace.
pub fn database_secret(environment: &str) -> String {
    // Names are ≤ 253 chars; "-db" fits unless the name is at the limit.
    let mut base = environment.to_owned();
    base.truncate(250);
    format!("{}-db", base.trim_end_matches(['-', '.']))
}

/// The `Name` tag of an environment's instance (a spare's once claimed). Descriptive
/// only; AWS refuses tag values over 256 characters (a 63-character namespace with a
/// 192-character name would make 267), so it is cut there.
pub fn instance_name(namespace: &str, name: &str) -> String {
    format!("featureenv-{namespace}-{name}").chars().take(256).collect()
}

/// The `Name` tag of an unclaimed spare of `class`'s warm pool.
pub fn spare_name(class: &str) -> String {
    format!("featureenv-spare-{class}").chars().take(256).collect()
}

/// `namespace/name`, the value of the `featureenv.io/environment` tag.
pub fn environment_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn readable_ids() {
        let id = pool_database_id("integration", "rds:integration-db-2026-11-28-03-00", 0);
        assert!(id.starts_with("fe-integration-"), "{id}");
        assert!(id.ends_with("-0"));
        assert!(is_valid_rds_identifier(&id));
        assert!(is_valid_rds_identifier(&pool_database_id("---", "s", 3)));
        assert!(launch_token("0b3c4f8e-1d2a-4c5b-9e8f-7a6b5c4d3e2f", 12).len() <= 64);
        assert_eq!(
            launch_attempt(&launch_token("0b3c4f8e-1d2a-4c5b-9e8f-7a6b5c4d3e2f", 12)),
            Some(12)
        );
        assert_eq!(launch_attempt("not-a-token"), None);
    }

    fn dns_subdomain() -> impl Strategy<Value = String> {
        // Kubernetes object names: DNS-1123 subdomains up to 253 chars.
        proptest::string::string_regex("[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?){0,3}")
            .unwrap()
            .prop_filter("≤ 253", |s| s.len() <= 253)
    }

    proptest! {
        #[test]
        fn any_kubernetes_name_yields_a_valid_rds_id(pool in dns_subdomain(), snapshot in "[a-z:0-9-]{1,80}", slot in 0u32..10_000) {
            let id = pool_database_id(&pool, &snapshot, slot);
            prop_assert!(is_valid_rds_identifier(&id), "{id}");
        }

        #[test]
        fn distinct_names_yield_distinct_ids(a in dns_subdomain(), b in dns_subdomain(), slot in 0u32..100) {
            prop_assume!(a != b);
            prop_assert_ne!(pool_database_id(&a, "snap", slot), pool_database_id(&b, "snap", slot));
        }

        #[test]
        fn slots_and_snapshots_are_distinct(pool in dns_subdomain(), s1 in 0u32..1000, s2 in 0u32..1000) {
            prop_assume!(s1 != s2);
            prop_assert_ne!(pool_database_id(&pool, "snap", s1), pool_database_id(&pool, "snap", s2));
            prop_assert_ne!(pool_database_id(&pool, "a", s1), pool_database_id(&pool, "b", s1));
        }
    }
}
