//! The CLI as documented: `version`, and every flag and environment variable the
//! README's configuration table lists is one `run --help` knows (and vice versa).

#[path = "support/root.rs"]
mod root;

use std::collections::BTreeSet;
use std::process::Command;

fn operator(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_featureenv-operator"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn version_prints_the_package_version() {
    assert_eq!(
        operator(&["version"]).trim(),
        format!("featureenv-operator {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_readme_configuration_table_matches_run_help() {
    let help = operator(&["run", "--help"]);
    let readme = std::fs::read_to_string(format!("{}/README.md", root::repo_root())).unwrap();
    let table: Vec<(String, String)> = readme
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(|c| c.trim().trim_matches('`')).collect();
            (cells[1].to_owned(), cells[2].to_owned())
        })
        .collect();
    assert!(table.len() >= 10, "README configuration table not found");
    for (flag, env) in &table {
        assert!(
            help.contains(flag.as_str()),
            "README lists {flag}, which `run --help` does not know"
        );
        assert!(
            help.contains(&format!("env: {env}")),
            "README says {flag} falls back to {env}; `run --help` disagrees"
        );
    }
    let documented: BTreeSet<&str> = table.iter().map(|(f, _)| f.as_str()).collect();
    for word in help.split_whitespace() {
        let flag = word.trim_end_matches(',').split('=').next().unwrap_or_default();
        if flag.starts_with("--") && flag != "--help" && flag != "--version" {
            assert!(
                documented.contains(flag),
                "`run --help` has {flag}, which the README does not document"
            );
        }
    }
}
