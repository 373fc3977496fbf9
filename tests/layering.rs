//! The crate's layers, read from every `crate::` path of its source: the core imports no family
//! and no kernel, the kernels only the core, and no family imports another. Integration
//! modules (pipelines, the loss specs, the cache, the GGUF teacher) may use anything. Inside the crate every path
//! names the defining module (`crate::loss::Loss`): a crate-root item (`crate::Loss`,
//! `crate::{…}`) or the prelude hides which layer it comes from, so only `lib.rs`, which
//! re-exports them, may use one. See docs/architecture.md.

use std::collections::BTreeSet;
use std::path::Path;

const CORE: &[&str] = &[
    "check",
    "cross_entropy",
    "error",
    "file",
    "golden",
    "input",
    "loss",
    "math",
    "registry",
    "schedule",
];
const KERNELS: &[&str] = &["fused"];
const FAMILIES: &[&str] = &[
    "curriculum",
    "feature",
    "logit",
    "meta",
    "optim",
    "relation",
    "token",
];
const INTEGRATION: &[&str] = &["cache", "example", "lib", "llama", "pipeline", "spec"];

/// The top-level module a source file belongs to (`src/logit/kd.rs` → `logit`).
fn module_of(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Where a file's reference-case runners start: its `golden` module, the last in the file,
/// which is test harness code (feature `golden`) and may use any layer, as integration code
/// does (CTKD's runner builds a KD; MetaDistil's, a KD and a DKD).
const RUNNERS: &str = "#[cfg(feature = \"golden\")]\npub(crate) mod golden {";

/// What a source file's `crate::` paths name: the top-level modules, and the crate-root items
/// (anything else after `crate::`: a re-exported type, a `{…}` group, the prelude). Comments
/// are skipped; `$crate::` in a macro's body counts like `crate::`; the file's reference-case
/// runners (its last module, [`RUNNERS`]) are not read.
fn imports(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut modules, mut roots) = (BTreeSet::new(), BTreeSet::new());
    let text = text.split(RUNNERS).next().unwrap_or_default();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let code = code.split("//").next().unwrap_or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            match is_module(&name) && name != "prelude" {
                true => modules.insert(name),
                false => roots.insert(if name.is_empty() {
                    rest.chars().take(1).collect()
                } else {
                    name
                }),
            };
        }
    }
    (modules, roots)
}

/// The functions lib.rs defines (not re-exports).
fn defined_in_lib(src: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix("pub fn "))
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

fn is_module(name: &str) -> bool {
    [CORE, KERNELS, FAMILIES, INTEGRATION]
        .iter()
        .any(|layer| layer.contains(&name))
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn layers_import_only_downwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let known: BTreeSet<&str> = [CORE, KERNELS, FAMILIES, INTEGRATION]
        .concat()
        .into_iter()
        .collect();
    let mut broken = Vec::new();
    for path in &all {
        let module = module_of(path, &src);
        assert!(
            known.contains(module.as_str()),
            "{}: module `{module}` is in no layer (add it to tests/layering.rs and docs/architecture.md)",
            path.display()
        );
        let allowed: Vec<&str> = if CORE.contains(&module.as_str()) {
            CORE.to_vec()
        } else if KERNELS.contains(&module.as_str()) {
            [CORE, KERNELS].concat()
        } else if FAMILIES.contains(&module.as_str()) {
            [CORE, KERNELS, &[module.as_str()]].concat()
        } else {
            known.iter().copied().collect()
        };
        let text = std::fs::read_to_string(path).unwrap();
        let (modules, roots) = imports(&text);
        for used in modules {
            if !allowed.contains(&used.as_str()) {
                broken.push(format!("{} ({module}) uses crate::{used}", path.display()));
            }
        }
        if module != "lib" {
            // an item lib.rs defines itself (the registry's `objectives`) is the root's own:
            // integration modules may call it
            let own = |root: &str| {
                INTEGRATION.contains(&module.as_str()) && defined_in_lib(&src).contains(root)
            };
            for root in roots.into_iter().filter(|r| !own(r)) {
                broken.push(format!(
                    "{} ({module}) uses the crate-root item crate::{root}: name its defining module",
                    path.display()
                ));
            }
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn the_reader_sees_imports() {
    // the checker itself: modules and root items are told apart, comments are skipped
    let text = "use crate::logit::Kd;\n/// [`x`](crate::meta::X)\nuse crate::{Loss, DistillInput};\n\
                let x = crate::math::eye(3);\ncrate::loss::objective!(X, \"x\");\n\
                use crate::prelude::*;\nimpl $crate::DistillError {}";
    let (modules, roots) = imports(text);
    let modules: Vec<String> = modules.into_iter().collect();
    let roots: Vec<String> = roots.into_iter().collect();
    assert_eq!(modules, ["logit", "loss", "math"]);
    assert_eq!(roots, ["DistillError", "prelude", "{"]);
}
