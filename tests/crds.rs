//! `crds/` (and the chart's copy) must be exactly what the binary generates from the
//! Rust types; regenerate with `make crds` when this fails.

#[path = "support/root.rs"]
mod root;

use std::path::Path;
use std::process::Command;

#[test]
fn committed_crds_match_the_generated_ones() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_featureenv-operator"))
        .args(["crds", "--out-dir"])
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let root = Path::new(root::repo_root());
    let mut generated: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    generated.sort();
    assert_eq!(generated.len(), 3);
    for dir in ["crds", "charts/featureenv-operator/crds"] {
        let mut committed: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        committed.sort();
        assert_eq!(committed, generated, "{dir} holds other files than the generated CRDs");
        for file in &generated {
            let want = std::fs::read_to_string(out.path().join(file)).unwrap();
            let have = std::fs::read_to_string(root.join(dir).join(file)).unwrap();
            assert!(
                have == want,
                "{dir}/{} is stale: run `make crds`",
                file.to_string_lossy()
            );
        }
    }
}

#[test]
fn printing_gives_one_document_per_crd() {
    let output = Command::new(env!("CARGO_BIN_EXE_featureenv-operator"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text.matches("kind: CustomResourceDefinition").count(), 3);
    for name in [
        "featureenvs.featureenv.io",
        "featureenvironmentclasses.featureenv.io",
        "rdspools.featureenv.io",
    ] {
        assert!(text.contains(&format!("name: {name}")), "{name} missing");
    }
}

/// Paths of schema properties without a description, under `schema` at `path`.
fn undocumented(schema: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    let Some(properties) = schema["properties"].as_object() else {
        if let Some(items) = schema.get("items") {
            undocumented(items, &format!("{path}[]"), out);
        }
        return;
    };
    for (name, property) in properties {
        let here = format!("{path}.{name}");
        // Condition and the like are Kubernetes' own types, documented upstream.
        let upstream = path.contains(".conditions[]");
        if !upstream && property["description"].as_str().is_none_or(str::is_empty) {
            out.push(here.clone());
        }
        undocumented(property, &here, out);
    }
}

/// `kubectl explain` shows every kind's own description (not kube-derive's
/// placeholder) and a description for every spec and status field; the kinds share
/// the `featureenv` category (`kubectl get featureenv`), and conditions are a map
/// list keyed by type.
#[test]
fn every_kind_and_field_is_described() {
    for (file, crd) in featureenv_operator::api::crds() {
        let crd = serde_json::to_value(&crd).unwrap();
        assert_eq!(
            crd["spec"]["names"]["categories"],
            serde_json::json!(["featureenv"]),
            "{file}"
        );
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let top = schema["description"].as_str().unwrap_or_default();
        assert!(
            top.len() > 80 && !top.contains("Auto-generated"),
            "{file}: the kind's description is {top:?}"
        );
        let mut missing = Vec::new();
        for part in ["spec", "status"] {
            if !schema["properties"][part].is_null() {
                undocumented(&schema["properties"][part], part, &mut missing);
            }
        }
        assert!(missing.is_empty(), "{file}: fields without a description: {missing:?}");
        let conditions = &schema["properties"]["status"]["properties"]["conditions"];
        if !conditions.is_null() {
            assert_eq!(conditions["x-kubernetes-list-type"], "map", "{file}");
            assert_eq!(
                conditions["x-kubernetes-list-map-keys"],
                serde_json::json!(["type"]),
                "{file}"
            );
        }
    }
}
