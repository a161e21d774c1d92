//! The README and `docs/` stay true: the README's `gru` commands run as written; every option a
//! `gru` command line in them names is one the binary takes; every example and script they
//! name exists. (The README's first two commands are CI's own: `.ci/run` runs them.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// README.md and every page of docs/, with their text.
fn pages() -> Vec<(String, String)> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect()
}

/// The lines of a page's ```sh blocks, without their trailing comments.
fn shell_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("```") {
            inside = line == "```sh";
            continue;
        }
        if inside {
            let code = line.split(" # ").next().unwrap_or("").trim();
            if !code.is_empty() {
                out.push(code.to_string());
            }
        }
    }
    out
}

/// The arguments of a `gru` command line (`gru ...` or `target/release/gru ...`).
fn gru_args(line: &str) -> Option<Vec<&str>> {
    let rest = line
        .strip_prefix("target/release/gru ")
        .or_else(|| line.strip_prefix("gru "))?;
    Some(rest.split_whitespace().collect())
}

fn help_of(sub: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gru"))
        .args([sub, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "gru {sub} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_readme_commands_run_as_written() {
    let (_, readme) = &pages()[0];
    let dir = tempfile::tempdir().unwrap();
    let mut ran = 0;
    for line in shell_lines(readme) {
        let Some(args) = gru_args(&line) else {
            continue;
        };
        // Outputs go to a scratch folder, not the checkout.
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if let Some(i) = args.iter().position(|a| a == "--out") {
            args[i + 1] = dir.path().join(&args[i + 1]).display().to_string();
        }
        let out = Command::new(env!("CARGO_BIN_EXE_gru"))
            .args(&args)
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README: `{line}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 4, "the README shows {ran} gru commands");
}

#[test]
fn every_documented_option_is_one_the_binary_takes() {
    let mut checked = 0;
    for (page, text) in pages() {
        for line in shell_lines(&text) {
            let Some(args) = gru_args(&line) else {
                continue;
            };
            let help = help_of(args[0]);
            for a in &args[1..] {
                // `[--flag X]`, `--flag=X`, `--kernel auto|step`: the option's name.
                let a = a.trim_start_matches('[');
                let Some(name) = a.strip_prefix("--") else {
                    continue;
                };
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                assert!(
                    help.contains(&format!("--{name}")),
                    "{page}: `gru {} --{name}` is not an option of the binary",
                    args[0]
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 30, "only {checked} documented options");
}

#[test]
fn every_documented_example_and_script_exists() {
    for (page, text) in pages() {
        let words = text.split(|c: char| c.is_whitespace() || "`()[],;:".contains(c));
        let mut words = words.peekable();
        while let Some(w) = words.next() {
            if w == "--example" {
                if let Some(name) = words.peek() {
                    let path = root().join("examples").join(format!("{name}.rs"));
                    assert!(path.exists(), "{page}: no example {name}");
                }
            }
            if let Some(script) = w.strip_prefix("scripts/") {
                let script = script.trim_end_matches(['.', '\'', '"']);
                // A folder (`scripts/`) or a pattern is not a file to check.
                if script.is_empty() || script.contains('*') || !script.contains('.') {
                    continue;
                }
                assert!(
                    root().join("scripts").join(script).exists(),
                    "{page}: no scripts/{script}"
                );
            }
        }
    }
}
