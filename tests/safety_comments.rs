//! Every `unsafe` block and `unsafe impl` in src/ states the invariant it relies on in a
//! `// SAFETY:` comment right above it (or on its line), and every `unsafe fn` has a
//! `# Safety` section in its doc comment (issue 13). A new unsafe block without one fails
//! this test, so the rule holds without anyone re-reading the whole crate.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code part of a line (before a `//` comment).
fn code(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

/// `unsafe` followed by `word` (after optional spaces) somewhere in `code`.
fn has_unsafe_then(code: &str, word: &str) -> bool {
    code.match_indices("unsafe").any(|(at, _)| {
        let before_ok = code[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric() && c != '_');
        before_ok && code[at + "unsafe".len()..].trim_start().starts_with(word)
    })
}

/// True when the comment and attribute lines right above line `i` (or line `i` itself)
/// contain `marker`.
fn annotated(lines: &[&str], i: usize, marker: &str) -> bool {
    if lines[i].contains(marker) {
        return true;
    }
    lines[..i]
        .iter()
        .rev()
        .map(|l| l.trim_start())
        .take_while(|l| l.starts_with("//") || l.starts_with("#["))
        .any(|l| l.contains(marker))
}

#[test]
fn every_unsafe_states_its_invariant() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let (mut blocks, mut missing) = (0, Vec::new());
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = code(line);
            let where_ = || format!("{}:{}: {}", file.display(), i + 1, line.trim());
            if has_unsafe_then(code, "{") || has_unsafe_then(code, "impl") {
                blocks += 1;
                if !annotated(&lines, i, "SAFETY:") {
                    missing.push(where_());
                }
            }
            if has_unsafe_then(code, "fn") && !annotated(&lines, i, "# Safety") {
                missing.push(format!(
                    "{} (an unsafe fn needs a `# Safety` doc section)",
                    where_()
                ));
            }
        }
    }
    assert!(
        blocks > 10,
        "found only {blocks} unsafe blocks: is the scan broken?"
    );
    assert!(
        missing.is_empty(),
        "unsafe without a SAFETY comment:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_scan_sees_what_it_should() {
    let lines = [
        "    // SAFETY: the CPU supports AVX2.",
        "    #[cfg(x)]",
        "    let v = unsafe { f() };",
        "    let w = unsafe { g() };",
        "    let unsafe_count = 3; // unsafe { in a comment }",
    ];
    assert!(has_unsafe_then(lines[2], "{") && annotated(&lines, 2, "SAFETY:"));
    assert!(has_unsafe_then(lines[3], "{") && !annotated(&lines, 3, "SAFETY:"));
    assert!(!has_unsafe_then(code(lines[4]), "{"));
    assert!(has_unsafe_then("pub(crate) unsafe fn f()", "fn"));
}
