//! Label and field selector grammar and matching, as `labels.Parse` / `fields.ParseSelector` (no I/O).

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector {
    reqs: Vec<Req>,
}

fn valid_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && !crate::meta::is_dns_subdomain(p)
    {
        return false;
    }
    valid_name_part(name) && !name.is_empty()
}

fn valid_name_part(n: &str) -> bool {
    n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && n.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && n.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
}

fn valid_value(v: &str) -> bool {
    valid_name_part(v)
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c)
            }
            ')' => {
                depth -= 1;
                cur.push(c)
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self { reqs });
        }
        for part in split_top(s) {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!("unable to parse requirement: empty requirement in {s:?}"));
            }
            let req = parse_req(part)?;
            reqs.push(req);
        }
        Ok(Self { reqs })
    }

    pub fn matches(&self, labels: Option<&Value>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::NotEq(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }
}

fn parse_req(part: &str) -> Result<Req, String> {
    let err = |m: &str| format!("unable to parse requirement: {m}: {part:?}");
    if let Some(k) = part.strip_prefix('!') {
        let k = k.trim();
        if !valid_key(k) {
            return Err(err("invalid label key"));
        }
        return Ok(Req::NotExists(k.into()));
    }
    for (op, ctor) in [("!=", 1), ("==", 0), ("=", 0)] {
        if let Some((k, v)) = part.split_once(op) {
            let (k, v) = (k.trim(), v.trim());
            if !valid_key(k) {
                return Err(err("invalid label key"));
            }
            if !valid_value(v) {
                return Err(err("invalid label value"));
            }
            return Ok(if ctor == 1 {
                Req::NotEq(k.into(), v.into())
            } else {
                Req::Eq(k.into(), v.into())
            });
        }
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let k = words[0].trim();
        let rest = words[1].trim();
        let (neg, list) = if let Some(r) = rest.strip_prefix("notin") {
            (true, r.trim())
        } else if let Some(r) = rest.strip_prefix("in") {
            (false, r.trim())
        } else {
            return Err(err("found unexpected operator"));
        };
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| err("expected '(' ... ')'"))?;
        if !valid_key(k) {
            return Err(err("invalid label key"));
        }
        let vals: Vec<String> = inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        if vals.iter().any(|v| !valid_value(v)) {
            return Err(err("invalid label value"));
        }
        if vals.is_empty() && !neg {
            return Err(err("for 'in' operator, values set can't be empty"));
        }
        return Ok(if neg {
            Req::NotIn(k.into(), vals)
        } else {
            Req::In(k.into(), vals)
        });
    }
    if !valid_key(part) {
        return Err(err("invalid label key"));
    }
    Ok(Req::Exists(part.into()))
}

/// A parsed field selector: a conjunction of `path=value` / `path!=value`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses and checks the field labels this resource supports.
    pub fn parse(s: &str, supported: &[&str]) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self { reqs });
        }
        for part in s.split(',') {
            let part = part.trim();
            let (k, neg, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, false, v)
            } else {
                return Err(format!("invalid selector: '{s}'; can't understand '{part}'"));
            };
            let k = k.trim();
            if !supported.contains(&k) {
                return Err(format!("field label not supported: {k}"));
            }
            reqs.push((k.to_string(), neg, v.trim().to_string()));
        }
        Ok(Self { reqs })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(path, neg, want)| {
            let mut cur = Some(obj);
            for seg in path.split('.') {
                cur = cur.and_then(|c| c.get(seg));
            }
            let got = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (got == *want) != *neg
        })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }
}

/// Field labels each resource accepts, beyond `metadata.name`/`metadata.namespace`.
pub fn supported_fields(group: &str, plural: &str) -> Vec<&'static str> {
    let mut v = vec!["metadata.name", "metadata.namespace"];
    match (group, plural) {
        ("", "events") => v.extend([
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ]),
        ("events.k8s.io", "events") => v.extend([
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "regarding.resourceVersion",
            "regarding.fieldPath",
            "reason",
            "reportingController",
            "type",
        ]),
        ("", "secrets") => v.push("type"),
        ("", "namespaces") => v.push("status.phase"),
        ("", "pods") => v.extend(["spec.nodeName", "status.phase"]),
        _ => {}
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_grammar() {
        let l = json!({"app": "a", "tier": "web"});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(Some(&l));
        assert!(m("app=a"));
        assert!(m("app==a,tier"));
        assert!(!m("app!=a"));
        assert!(m("tier in (web, db)"));
        assert!(!m("tier notin (web)"));
        assert!(m("!missing"));
        assert!(!m("missing"));
        assert!(m(""));
        assert!(LabelSelector::parse("a in b").is_err());
        assert!(LabelSelector::parse("=x").is_err());
        assert!(LabelSelector::parse("a=b c").is_err());
    }

    #[test]
    fn fields() {
        let o = json!({"metadata": {"name": "x", "namespace": "ns"}});
        let f = FieldSelector::parse("metadata.name=x", &supported_fields("", "configmaps")).unwrap();
        assert!(f.matches(&o));
        let f = FieldSelector::parse("metadata.name!=x", &supported_fields("", "configmaps")).unwrap();
        assert!(!f.matches(&o));
        assert!(FieldSelector::parse("spec.x=y", &supported_fields("", "configmaps")).is_err());
    }
}
