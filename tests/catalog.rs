//! The catalog of objectives (`burn_distill::objectives()`, one line per objective in its
//! family's `mod.rs`) is the one list the method tables come from: the README's, the crate
//! docs' (`docs/objectives.md`) and `docs/index.md`'s. This test fails when a table is out of
//! step; `BLESS=1 cargo test --test catalog` rewrites them. It also checks that every objective
//! type (each `objective!` in the source) is in the catalog and every page exists.

use std::path::{Path, PathBuf};

const START: &str = "<!-- objectives: generated from burn_distill::objectives() by tests/catalog.rs (BLESS=1 cargo test --test catalog) -->";
const END: &str = "<!-- /objectives -->";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The table, with page links relative to `prefix` (`docs/` from the README, `` from docs/).
fn table(prefix: &str) -> String {
    let mut out = String::from("| objective | paper or reference | docs |\n|---|---|---|\n");
    for e in burn_distill::objectives() {
        let module = e.module.trim_start_matches("burn_distill::");
        let items: Vec<String> = e.items.iter().map(|i| format!("`{module}::{i}`")).collect();
        let page = e.doc.split('#').next().unwrap();
        out.push_str(&format!(
            "| {} | {} | [{page}]({prefix}{}) |\n",
            items.join(", "),
            e.paper,
            e.doc
        ));
    }
    out
}

/// `text` with the generated section replaced by `section`; `None` when it has no markers.
fn with_section(text: &str, section: &str) -> Option<String> {
    let start = text.find(START)?;
    let end = text.find(END)?;
    Some(format!(
        "{}{START}\n{section}{END}{}",
        &text[..start],
        &text[end + END.len()..]
    ))
}

#[test]
fn tables_come_from_the_catalog() {
    let bless = std::env::var_os("BLESS").is_some();
    let mut stale = Vec::new();
    for (file, prefix) in [
        ("README.md", "docs/"),
        ("docs/index.md", ""),
        ("docs/objectives.md", ""),
    ] {
        let path = root().join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let want = with_section(&text, &table(prefix))
            .unwrap_or_else(|| panic!("{file} has no generated objectives section ({START})"));
        if want != text {
            if bless {
                std::fs::write(&path, want).unwrap();
            } else {
                stale.push(file);
            }
        }
    }
    assert!(
        stale.is_empty(),
        "method tables out of step with burn_distill::objectives(): {stale:?}; run BLESS=1 cargo test --test catalog"
    );
}

#[test]
fn every_page_exists() {
    for e in burn_distill::objectives() {
        let page = e.doc.split('#').next().unwrap();
        assert!(
            root().join("docs").join(page).exists(),
            "{:?}: docs/{page} is missing",
            e.items
        );
    }
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_objective_is_in_the_catalog() {
    let listed: Vec<&str> = burn_distill::objectives()
        .iter()
        .flat_map(|e| e.items.iter().copied())
        .collect();
    let mut files = Vec::new();
    sources(&root().join("src"), &mut files);
    let mut missing = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text
            .lines()
            .filter(|l| l.starts_with("crate::loss::objective!("))
        {
            let ty: String = line["crate::loss::objective!(".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric())
                .collect();
            if !listed.contains(&ty.as_str()) {
                missing.push(format!("{ty} ({})", path.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "objectives missing from their family's catalog: {missing:?}"
    );
}

const BOUND_START: &str = "<!-- bounds: generated from each objective's Descriptor::bound by tests/catalog.rs (BLESS=1 cargo test --test catalog) -->";
const BOUND_END: &str = "<!-- /bounds -->";

/// What a page says of the bounds of the objectives it documents: one line each.
fn bounds(page: &str) -> Option<String> {
    let mut out = String::new();
    for d in burn_distill::objectives() {
        let (Some(bound), true) = (d.bound, d.doc.split('#').next() == Some(page)) else {
            continue;
        };
        let inputs = match bound == f64::MAX {
            true => "any finite input".to_string(),
            false => format!("inputs of magnitude up to {bound:e}"),
        };
        out.push_str(&format!(
            "- `{}`: finite values and gradients for {inputs}",
            d.items[0]
        ));
        out.push_str(match bound == f64::MAX {
            true => ".\n",
            false => "; beyond it, `DistillError::OutOfRange` rather than a NaN or an infinity.\n",
        });
    }
    (!out.is_empty()).then_some(out)
}

/// Every objective's page states its bound ([`burn_distill::Descriptor::bound`]) in a section
/// generated from the registry, which `tests/range.rs` checks at the bound and beyond.
#[test]
fn every_page_states_its_bounds() {
    let bless = std::env::var_os("BLESS").is_some();
    let mut pages: Vec<&str> = Vec::new();
    let all = burn_distill::objectives();
    for d in &all {
        let page = d.doc.split('#').next().unwrap();
        if d.bound.is_some() && !pages.contains(&page) {
            pages.push(page);
        }
    }
    let mut stale = Vec::new();
    for page in pages {
        let path = root().join("docs").join(page);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines = bounds(page).unwrap();
        let section = format!("{BOUND_START}\n{lines}{BOUND_END}");
        let want = match (text.find(BOUND_START), text.find(BOUND_END)) {
            (Some(a), Some(b)) => {
                format!("{}{section}{}", &text[..a], &text[b + BOUND_END.len()..])
            }
            _ => format!(
                "{}\n\n## Input bound\n\nThe inputs (logits, feature taps, hidden states) each objective on this page\n\
                 is finite for, in f32 and f64 (half-precision inputs are read in f32); `tests/range.rs`\n\
                 checks each at its bound and beyond.\n\n{section}\n",
                text.trim_end()
            ),
        };
        if want != text {
            match bless {
                true => std::fs::write(&path, want).unwrap(),
                false => stale.push(page),
            }
        }
    }
    assert!(
        stale.is_empty(),
        "pages whose bounds are out of step with the registry: {stale:?}; run BLESS=1 cargo test --test catalog"
    );
}
