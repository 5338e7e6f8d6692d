//! Container image references (`registry/repository[:tag][@sha256:digest]`): the
//! admission pattern and a parser for the parts the operator needs. Pure.

/// The OpenAPI pattern for image references: a registry host (optionally with a port),
/// one or more lower-case path components, an optional tag and an optional digest.
pub const IMAGE_REFERENCE_PATTERN: &str = r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    /// `registry/path` without tag or digest.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: expected registry/repository[:tag][@sha256:digest]")]
pub struct ImageReferenceError {
    pub input: String,
}

impl ImageReference {
    pub fn parse(input: &str) -> Result<Self, ImageReferenceError> {
        let err = || ImageReferenceError {
            input: input.to_owned(),
        };
        let (name, digest) = match input.split_once('@') {
            Some((name, digest)) => {
                let hex = digest.strip_prefix("sha256:").ok_or_else(err)?;
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) {
                    return Err(err());
                }
                (name, Some(digest.to_owned()))
            }
            None => (input, None),
        };
        let (host, path) = name.split_once('/').ok_or_else(err)?;
        // A tag is a ':' after the last '/'; a ':' in the host is a port.
        let (path, tag) = match path.rsplit_once(':') {
            Some((path, tag)) => (path, Some(tag)),
            None => (path, None),
        };
        let host_ok = {
            let (h, port) = host.split_once(':').map_or((host, None), |(h, p)| (h, Some(p)));
            component_ok(h) && port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        };
        let path_ok = !path.is_empty() && path.split('/').all(component_ok);
        let tag_ok = tag.is_none_or(|t| {
            !t.is_empty()
                && t.len() <= 128
                && !t.starts_with(['.', '-'])
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        });
        if !(host_ok && path_ok && tag_ok) {
            return Err(err());
        }
        Ok(Self {
            repository: format!("{host}/{path}"),
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// `repository@digest` when a digest is known, else the reference as given.
    pub fn pinned(&self, digest: Option<&str>) -> String {
        match (digest.or(self.digest.as_deref()), &self.tag) {
            (Some(d), _) => format!("{}@{d}", self.repository),
            (None, Some(t)) => format!("{}:{t}", self.repository),
            (None, None) => self.repository.clone(),
        }
    }
}

/// The parts of a reference into a private Amazon ECR registry
/// (`<account>.dkr.ecr.<region>.amazonaws.com[.cn]/<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcrRepository<'a> {
    pub host: &'a str,
    pub account: &'a str,
    pub region: &'a str,
    /// Repository name, plus any `:tag` / `@digest` the reference carried.
    pub name: &'a str,
}

/// Recognises private ECR registries: the operator resolves their tags to digests and
/// the bootstrap script logs in to them. Anything else is `None`.
pub fn ecr_repository(reference: &str) -> Option<EcrRepository<'_>> {
    let (host, name) = reference.split_once('/')?;
    let labels: Vec<&str> = host.split('.').collect();
    let [
        account,
        "dkr",
        "ecr" | "ecr-fips",
        region,
        "amazonaws",
        "com",
        rest @ ..,
    ] = labels.as_slice()
    else {
        return None;
    };
    let valid = account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !region.is_empty()
        && matches!(rest, [] | ["cn"])
        && !name.is_empty();
    valid.then_some(EcrRepository {
        host,
        account,
        region,
        name,
    })
}

fn component_ok(component: &str) -> bool {
    // Host components may also contain '_' in practice (registries accept it).
    let separators: &[char] = &['.', '-', '_'];
    !component.is_empty()
        && component
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || separators.contains(&c))
        && !component.starts_with(separators)
        && !component.ends_with(separators)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ECR: &str = "123456789012.dkr.ecr.ap-southeast-1.amazonaws.com/payments";

    #[test]
    fn parses_tag_and_digest() {
        let r = ImageReference::parse(&format!("{ECR}:pr-123")).unwrap();
        assert_eq!(r.repository, ECR);
        assert_eq!(r.tag.as_deref(), Some("pr-123"));
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = ImageReference::parse(&format!("{ECR}@{digest}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(digest.as_str()));
        assert!(ImageReference::parse("localhost:5000/team/app:v1").is_ok());
    }

    #[test]
    fn rejects_malformed_references() {
        for bad in [
            "payments",
            "Registry/app",
            "host/App:v1",
            "host/app:",
            "host/app@sha256:abc",
            "host//app",
            "host/app:-x",
            "",
        ] {
            assert!(ImageReference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn pattern_and_parser_agree_on_examples() {
        let re = regex_lite::Regex::new(IMAGE_REFERENCE_PATTERN).unwrap();
        for s in [
            format!("{ECR}:pr-123"),
            ECR.to_string(),
            "localhost:5000/team/app:v1".into(),
            "payments".into(),
            "host/App:v1".into(),
            "host//app".into(),
        ] {
            assert_eq!(re.is_match(&s), ImageReference::parse(&s).is_ok(), "{s}");
        }
    }
}
