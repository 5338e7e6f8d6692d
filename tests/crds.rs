//! `crds/` (and the chart's copy) must be exactly what the binary generates from the
//! Rust types; regenerate with `make crds` when this fails.

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
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
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
