//! `x-kubernetes-validations`: CEL rules of CRD schemas evaluated with the `cel`
//! crate. A rule that cannot be compiled or evaluated is logged and skipped,
//! never turned into a rejection (no I/O).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cel::objects::Key;
use cel::{Context, Env, Value as CelValue};
use serde_json::Value;

use crate::error::Cause;
use crate::schema::{ListType, join, list_type_from_schema};

fn env() -> Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        for ext in [
            cel::extensions::strings as fn(&mut Env) -> Result<(), _>,
            cel::extensions::lists,
            cel::extensions::math,
        ] {
            if let Err(e) = env.add_extension(ext) {
                tracing::warn!(error = %e, "CEL extension unavailable");
            }
        }
        Arc::new(env)
    })
    .clone()
}

/// Compiled programs by source; `None` marks a rule that failed to compile.
fn compile(rule: &str) -> Option<Arc<cel::Program>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<Arc<cel::Program>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut c = cache.lock().expect("cel cache");
    c.entry(rule.to_string())
        .or_insert_with(|| match env().compile(rule) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                tracing::warn!(rule, error = %e, "CEL rule does not compile; skipped");
                None
            }
        })
        .clone()
}

pub fn to_cel(v: &Value) -> CelValue {
    match v {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                CelValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                CelValue::UInt(u)
            } else {
                CelValue::Float(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => CelValue::String(Arc::new(s.clone())),
        Value::Array(a) => CelValue::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: HashMap<Key, CelValue> = m
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            CelValue::from(map)
        }
    }
}

enum Outcome {
    Pass,
    Fail(Option<String>),
    Skip,
}

fn evaluate(rule: &str, message_expr: Option<&str>, new: &Value, old: Option<&Value>) -> Outcome {
    let Some(program) = compile(rule) else {
        return Outcome::Skip;
    };
    let mut ctx = Context::with_env(env());
    ctx.add_variable_from_value("self", to_cel(new));
    if let Some(o) = old {
        ctx.add_variable_from_value("oldSelf", to_cel(o));
    }
    match program.execute(&ctx) {
        Ok(CelValue::Bool(true)) => Outcome::Pass,
        Ok(CelValue::Bool(false)) => {
            let msg = message_expr.and_then(|m| {
                let p = compile(m)?;
                match p.execute(&ctx) {
                    Ok(CelValue::String(s)) => Some(s.to_string()),
                    _ => None,
                }
            });
            Outcome::Fail(msg)
        }
        Ok(other) => {
            tracing::warn!(rule, result = ?other, "CEL rule did not yield a bool; skipped");
            Outcome::Skip
        }
        Err(e) => {
            tracing::warn!(rule, error = %e, "CEL rule failed to evaluate; skipped");
            Outcome::Skip
        }
    }
}

fn schema_type(schema: &Value, v: &Value) -> String {
    schema["type"].as_str().map(String::from).unwrap_or_else(|| match v {
        Value::Object(_) => "object".into(),
        Value::Array(_) => "array".into(),
        Value::String(_) => "string".into(),
        Value::Number(_) => "number".into(),
        Value::Bool(_) => "boolean".into(),
        Value::Null => "null".into(),
    })
}

fn field_path_join(path: &str, field_path: &str) -> String {
    let fp = field_path.trim_start_matches('.');
    if fp.is_empty() {
        path.to_string()
    } else if fp.starts_with('[') {
        format!("{path}{fp}")
    } else {
        join(path, fp)
    }
}

/// Evaluates every rule in the schema tree; `old` is the stored object on update.
pub fn validate(schema: &Value, new: &Value, old: Option<&Value>, path: &str, errs: &mut Vec<Cause>) {
    if new.is_null() {
        return;
    }
    if let Some(rules) = schema["x-kubernetes-validations"].as_array() {
        for r in rules {
            let Some(rule) = r["rule"].as_str() else {
                continue;
            };
            let transition = rule.contains("oldSelf");
            if transition && old.is_none() && r["optionalOldSelf"].as_bool() != Some(true) {
                continue;
            }
            match evaluate(rule, r["messageExpression"].as_str(), new, old) {
                Outcome::Pass | Outcome::Skip => {}
                Outcome::Fail(msg_expr) => {
                    let message = msg_expr
                        .or_else(|| r["message"].as_str().map(String::from))
                        .unwrap_or_else(|| format!("failed rule: {rule}"));
                    let field = match r["fieldPath"].as_str() {
                        Some(fp) => field_path_join(path, fp),
                        None => path.to_string(),
                    };
                    let reason = r["reason"].as_str().unwrap_or("FieldValueInvalid");
                    let rendered = match reason {
                        "FieldValueForbidden" => format!("Forbidden: {message}"),
                        "FieldValueRequired" => format!("Required value: {message}"),
                        "FieldValueDuplicate" => format!("Duplicate value: {message}"),
                        _ => format!("Invalid value: \"{}\": {message}", schema_type(schema, new)),
                    };
                    errs.push(Cause::new(reason, rendered, field));
                }
            }
        }
    }
    match new {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let addl = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, v) in map {
                if path.is_empty() && (k == "metadata" || k == "apiVersion" || k == "kind") {
                    continue;
                }
                let (cs, child_path) = match props.and_then(|p| p.get(k)) {
                    Some(cs) => (cs, join(path, k)),
                    None => match addl {
                        Some(a) => (a, format!("{path}[{k}]")),
                        None => continue,
                    },
                };
                let old_child = old.and_then(|o| o.get(k));
                validate(cs, v, old_child, &child_path, errs);
            }
        }
        Value::Array(items) => {
            let Some(is) = schema.get("items") else {
                return;
            };
            let lt = list_type_from_schema(schema);
            let old_items = old.and_then(Value::as_array);
            for (i, item) in items.iter().enumerate() {
                let old_item = match (&lt, old_items) {
                    (ListType::Map(keys), Some(olds)) => {
                        olds.iter().find(|o| keys.iter().all(|k| o.get(k) == item.get(k)))
                    }
                    (ListType::Set, Some(olds)) => olds.iter().find(|o| *o == item),
                    _ => None,
                };
                validate(is, item, old_item, &format!("{path}[{i}]"), errs);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules() {
        let schema = json!({"type": "object", "properties": {"spec": {
            "type": "object",
            "x-kubernetes-validations": [
                {"rule": "self.min <= self.max", "message": "min must not exceed max"},
                {"rule": "self.all(k, k != 'bad')", "message": "no bad keys"},
                {"rule": "!has(self.name) || self.name.matches('^[a-z]+$')", "message": "lowercase"},
                {"rule": "this is not CEL ((", "message": "never"},
                {"rule": "self.min >= oldSelf.min", "message": "min cannot shrink"},
                {"rule": "undefinedFunction(self)", "message": "never either"}
            ],
            "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}, "name": {"type": "string"}}
        }}});
        let mut errs = vec![];
        validate(
            &schema,
            &json!({"spec": {"min": 1, "max": 5, "name": "abc"}}),
            None,
            "",
            &mut errs,
        );
        assert!(errs.is_empty(), "{errs:?}");
        validate(
            &schema,
            &json!({"spec": {"min": 9, "max": 5, "name": "ABC"}}),
            None,
            "",
            &mut errs,
        );
        let msgs: Vec<&str> = errs.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            msgs,
            vec![
                "Invalid value: \"object\": min must not exceed max",
                "Invalid value: \"object\": lowercase",
            ]
        );
        let mut errs = vec![];
        validate(
            &schema,
            &json!({"spec": {"min": 1, "max": 5}}),
            Some(&json!({"spec": {"min": 2, "max": 5}})),
            "",
            &mut errs,
        );
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("min cannot shrink"));
    }
}
