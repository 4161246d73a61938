//! The architecture's rules (ARCHITECTURE.md), checked on the source itself:
//! every file says what it is for, each layer imports only what it may, no
//! `.unwrap()` outside test code, and each crate's module graph has no cycle
//! and no upward import into `lib.rs`/`mod.rs` items other than re-exports.
//!
//! The workspace's files are parsed with `syn`, so comments and strings never
//! count as imports. Each failure names the file, the line, the rule and how
//! to fix it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use syn::spanned::Spanned;
use syn::visit::Visit;

/// The workspace root (the parent of this crate).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_owned()
}

/// The workspace's member crates: (directory, name used in messages).
const CRATES: [(&str, &str); 10] = [
    ("shared", "verge-shared"),
    ("durable", "verge-durable"),
    ("scheduler", "verge-scheduler"),
    ("edge-agent", "edge-agent"),
    ("central-controller", "central-controller"),
    ("admin", "verge-admin"),
    ("cli", "verge-cli"),
    ("tests", "verge-tests"),
    ("simulation", "verge-simulation"),
    ("examples/hello-edge", "hello-edge"),
];

/// One broken rule at one place.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Violation {
    file: String,
    line: usize,
    rule: &'static str,
    message: String,
}

/// Fails with every violation, one per line, and how to fix them.
fn report(rule_fix: &str, mut violations: Vec<Violation>) {
    if violations.is_empty() {
        return;
    }
    violations.sort();
    violations.dedup();
    let mut text = String::new();
    for v in &violations {
        let _ = writeln!(text, "{}:{}: [{}] {}", v.file, v.line, v.rule, v.message);
    }
    panic!(
        "{} violation(s):\n{text}\nHow to fix: {rule_fix}",
        violations.len()
    );
}

/// Every `.rs` file under `dir` (recursively), sorted; `target/` skipped.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn parse(path: &Path) -> syn::File {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    syn::parse_file(&text).unwrap_or_else(|e| panic!("parse {}: {e}", relative(path)))
}

fn line_of(span: proc_macro2::Span) -> usize {
    span.start().line
}

/// Whether the attributes mark test-only code: `#[cfg(test)]` (also inside
/// `any`/`all`), `#[test]` or `#[<runtime>::test]`.
fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        let path = a.path();
        if path.segments.last().is_some_and(|s| s.ident == "test") {
            return true;
        }
        if path.is_ident("cfg") {
            let tokens = a.meta.require_list().map(|l| l.tokens.to_string());
            return tokens.is_ok_and(|t| {
                t.split(|c: char| !c.is_alphanumeric() && c != '_')
                    .any(|w| w == "test")
                    && !t.contains("not (test") // `cfg(not(test))` is production code
            });
        }
        false
    })
}

// ---------------------------------------------------------------------------
// Module trees: which file is which module, and which modules are test code.

/// One file of a crate target's module tree.
struct ModFile {
    path: PathBuf,
    /// Logical module path from the crate root (`[]` for the root).
    module: Vec<String>,
    /// Declared under `#[cfg(test)]` (itself or an ancestor).
    test: bool,
    ast: syn::File,
}

/// The files of the module tree rooted at `root_file`, following `mod x;`
/// declarations (also inside inline modules).
fn module_tree(root_file: &Path) -> Vec<ModFile> {
    let mut out = Vec::new();
    let dir = root_file
        .parent()
        .expect("a root file has a directory")
        .to_owned();
    add_module(root_file, dir, Vec::new(), false, &mut out);
    out
}

/// Adds `file` as `module`, whose child modules' files live in `child_dir`.
fn add_module(
    file: &Path,
    child_dir: PathBuf,
    module: Vec<String>,
    test: bool,
    out: &mut Vec<ModFile>,
) {
    let ast = parse(file);
    add_children(&ast.items, &child_dir, &module, test, out);
    out.push(ModFile {
        path: file.to_owned(),
        module,
        test,
        ast,
    });
}

fn add_children(
    items: &[syn::Item],
    dir: &Path,
    module: &[String],
    test: bool,
    out: &mut Vec<ModFile>,
) {
    for item in items {
        let syn::Item::Mod(m) = item else { continue };
        let name = m.ident.to_string();
        let mut child = module.to_vec();
        child.push(name.clone());
        let child_test = test || is_test(&m.attrs);
        match &m.content {
            Some((_, inner)) => add_children(inner, &dir.join(&name), &child, child_test, out),
            None => {
                let flat = dir.join(format!("{name}.rs"));
                let nested = dir.join(&name).join("mod.rs");
                let file = if flat.exists() { flat } else { nested };
                if file.exists() {
                    add_module(&file, dir.join(&name), child, child_test, out);
                }
            }
        }
    }
}

/// The root files of a crate's targets: lib, main, bins, examples, tests, benches.
fn target_roots(crate_dir: &Path) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for f in ["src/lib.rs", "src/main.rs"] {
        let p = crate_dir.join(f);
        if p.exists() {
            roots.push(p);
        }
    }
    for d in ["src/bin", "examples", "tests", "benches"] {
        let Ok(entries) = fs::read_dir(crate_dir.join(d)) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect();
        found.sort();
        roots.extend(found);
    }
    roots
}

/// Whether a target root is test code as a whole (tests, benches, examples,
/// and the whole `tests/` crate).
fn is_test_target(crate_dir: &str, root_file: &Path) -> bool {
    if crate_dir == "tests" {
        return true;
    }
    let rel = relative(root_file);
    ["/tests/", "/benches/", "/examples/"]
        .iter()
        .any(|d| rel.contains(d))
        || rel.starts_with("examples/")
}

// ---------------------------------------------------------------------------
// Paths named by a file.

/// A path named in code: its segments (as written) and where.
#[derive(Debug, Clone)]
struct Named {
    segments: Vec<String>,
    line: usize,
    /// Inside test-only code.
    test: bool,
    /// The logical module (file module plus inline modules) it is named in.
    module: Vec<String>,
    /// A glob import (`use x::*`).
    glob: bool,
}

/// Collects every path in `use` trees and in code, and `.unwrap()` calls.
struct Collector {
    module: Vec<String>,
    test_depth: usize,
    named: Vec<Named>,
    unwraps: Vec<(usize, bool)>,
}

impl Collector {
    fn collect(file: &ModFile) -> Collector {
        let mut c = Collector {
            module: file.module.clone(),
            test_depth: usize::from(file.test),
            named: Vec::new(),
            unwraps: Vec::new(),
        };
        c.visit_file(&file.ast);
        c
    }

    fn push(&mut self, segments: Vec<String>, line: usize, glob: bool) {
        self.named.push(Named {
            segments,
            line,
            test: self.test_depth > 0,
            module: self.module.clone(),
            glob,
        });
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut s = prefix.clone();
                if n.ident != "self" {
                    s.push(n.ident.to_string());
                }
                self.push(s, line_of(n.ident.span()), false);
            }
            syn::UseTree::Rename(r) => {
                let mut s = prefix.clone();
                if r.ident != "self" {
                    s.push(r.ident.to_string());
                }
                self.push(s, line_of(r.ident.span()), false);
            }
            syn::UseTree::Glob(g) => self.push(prefix.clone(), line_of(g.star_token.span()), true),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        // Out-of-line modules are their own files, visited on their own.
        if m.content.is_none() {
            return;
        }
        let test = is_test(&m.attrs);
        self.module.push(m.ident.to_string());
        self.test_depth += usize::from(test);
        syn::visit::visit_item_mod(self, m);
        self.test_depth -= usize::from(test);
        self.module.pop();
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        let test = is_test(&f.attrs);
        self.test_depth += usize::from(test);
        syn::visit::visit_item_fn(self, f);
        self.test_depth -= usize::from(test);
    }

    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        let test = is_test(&i.attrs);
        self.test_depth += usize::from(test);
        syn::visit::visit_item_impl(self, i);
        self.test_depth -= usize::from(test);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        let test = is_test(&f.attrs);
        self.test_depth += usize::from(test);
        syn::visit::visit_impl_item_fn(self, f);
        self.test_depth -= usize::from(test);
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let test = is_test(&u.attrs);
        self.test_depth += usize::from(test);
        self.use_tree(&mut Vec::new(), &u.tree);
        self.test_depth -= usize::from(test);
    }

    /// `pub(crate)` and `pub(in path)` name no item.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments = p.segments.iter().map(|s| s.ident.to_string()).collect();
        self.push(segments, line_of(p.span()), false);
        syn::visit::visit_path(self, p);
    }

    fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
        if call.method == "unwrap" && call.args.is_empty() {
            self.unwraps
                .push((line_of(call.method.span()), self.test_depth > 0));
        }
        syn::visit::visit_expr_method_call(self, call);
    }
}

/// Every module file of every target of every crate, with what it names.
struct Workspace {
    targets: Vec<Target>,
}

/// One target (lib, bin, test, example, bench) of one crate.
struct Target {
    /// The crate's directory.
    dir: &'static str,
    /// The target's root file.
    root: PathBuf,
    /// Whether the whole target is test code.
    test_code: bool,
    /// The files of the target's module tree, with what each names.
    files: Vec<(ModFile, Collector)>,
}

impl Workspace {
    /// Every file of every non-test target, with its crate's directory.
    fn production_files(&self) -> impl Iterator<Item = (&'static str, &ModFile, &Collector)> {
        self.targets
            .iter()
            .filter(|t| !t.test_code)
            .flat_map(|t| t.files.iter().map(move |(file, c)| (t.dir, file, c)))
    }
}

fn workspace() -> Workspace {
    let root = root();
    let mut targets = Vec::new();
    for (dir, _) in CRATES {
        for target in target_roots(&root.join(dir)) {
            let test_target = is_test_target(dir, &target);
            let files = module_tree(&target)
                .into_iter()
                .map(|f| {
                    let c = Collector::collect(&f);
                    (f, c)
                })
                .collect();
            targets.push(Target {
                dir,
                root: target,
                test_code: test_target,
                files,
            });
        }
    }
    Workspace { targets }
}

// ---------------------------------------------------------------------------
// Rule 1: every file says what it is for.

#[test]
fn every_rust_file_starts_with_a_module_doc_line() {
    let mut violations = Vec::new();
    for (dir, _) in CRATES {
        for file in rust_files(&root().join(dir)) {
            let text = fs::read_to_string(&file).unwrap_or_default();
            if !text.starts_with("//!") {
                violations.push(Violation {
                    file: relative(&file),
                    line: 1,
                    rule: "module-doc",
                    message: "does not start with a `//!` line".into(),
                });
            }
        }
    }
    report(
        "begin the file with a `//!` line saying what the file is for (style.md).",
        violations,
    );
}

// ---------------------------------------------------------------------------
// Rule 2: what each layer may import.

/// Whether `segments` names `prefix` (also with a leading `::`-less crate path).
fn names(segments: &[String], prefix: &[&str]) -> bool {
    segments.len() >= prefix.len() && segments.iter().zip(prefix).all(|(s, p)| s == p)
}

/// A crate that only some modules of some crates may name.
struct Confined {
    external: &'static str,
    /// (crate dir, top-level module allowed to name it).
    allowed: &'static [(&'static str, &'static str)],
    why: &'static str,
}

const CONFINED: [Confined; 3] = [
    Confined {
        external: "rumqttc",
        allowed: &[("edge-agent", "mqtt"), ("central-controller", "mqtt")],
        why: "the MQTT client library stays behind the `mqtt` module",
    },
    Confined {
        external: "rumqttd",
        allowed: &[("central-controller", "broker")],
        why: "the embedded broker stays behind the `broker` module",
    },
    Confined {
        external: "rcgen",
        allowed: &[("central-controller", "ca"), ("edge-agent", "enroll")],
        why: "certificate generation stays in the controller's `ca` and the agent's `enroll`",
    },
];

/// Crates and paths `verge-shared` (the wire protocol) never names.
/// `std::net` is refused except its plain address types (below): a document
/// may carry an address, never open a socket.
const SHARED_FORBIDDEN: [&[&str]; 7] = [
    &["tokio"],
    &["std", "fs"],
    &["std", "net"],
    &["std", "process"],
    &["rumqttc"],
    &["rumqttd"],
    &["sled"],
];

/// The `std::net` items verge-shared may name: values, not I/O.
const SHARED_NET_VALUES: [&str; 8] = [
    "SocketAddr",
    "SocketAddrV4",
    "SocketAddrV6",
    "IpAddr",
    "Ipv4Addr",
    "Ipv6Addr",
    "AddrParseError",
    "Shutdown",
];

/// The pure crates: the wire protocol and the placement function.
const PURE_CRATES: [(&str, &str); 2] =
    [("shared", "verge-shared"), ("scheduler", "verge-scheduler")];

#[test]
fn the_pure_crates_do_no_io_and_know_no_runtime() {
    let ws = workspace();
    let mut violations = Vec::new();
    for Target { dir, files, .. } in &ws.targets {
        let Some((_, name)) = PURE_CRATES.iter().find(|(d, _)| d == dir) else {
            continue;
        };
        for (file, c) in files {
            for n in &c.named {
                let net_value = names(&n.segments, &["std", "net"])
                    && n.segments.len() == 3
                    && SHARED_NET_VALUES.contains(&n.segments[2].as_str());
                if net_value {
                    continue;
                }
                if let Some(bad) = SHARED_FORBIDDEN.iter().find(|f| names(&n.segments, f)) {
                    violations.push(Violation {
                        file: relative(&file.path),
                        line: n.line,
                        rule: "pure-layer",
                        message: format!("{name} names `{}`", bad.join("::")),
                    });
                }
            }
        }
    }
    // And their manifests do not even depend on them.
    for (dir, _) in PURE_CRATES {
        let manifest = format!("{dir}/Cargo.toml");
        let toml: toml::Table = fs::read_to_string(root().join(&manifest))
            .unwrap_or_else(|e| panic!("{manifest}: {e}"))
            .parse()
            .unwrap_or_else(|e| panic!("{manifest} is not TOML: {e}"));
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            let Some(deps) = toml.get(section).and_then(|d| d.as_table()) else {
                continue;
            };
            for bad in ["tokio", "rumqttc", "rumqttd", "sled"] {
                if deps.contains_key(bad) {
                    violations.push(Violation {
                        file: manifest.clone(),
                        line: 0,
                        rule: "pure-layer",
                        message: format!("[{section}] names `{bad}`"),
                    });
                }
            }
        }
    }
    report(
        "verge-shared is the wire protocol (pure data, parsing and signatures) and \
         verge-scheduler a pure function. Move the I/O or runtime code to the agent or the \
         controller and pass plain values in (of std::net, only the address types).",
        violations,
    );
}

#[test]
fn adapter_crates_are_named_only_by_their_module() {
    let ws = workspace();
    let mut violations = Vec::new();
    let adapters = ws
        .production_files()
        .filter(|(dir, ..)| matches!(*dir, "edge-agent" | "central-controller"));
    for (dir, file, c) in adapters {
        for n in c.named.iter().filter(|n| !n.test) {
            for rule in &CONFINED {
                if n.segments.first().is_none_or(|s| s != rule.external) {
                    continue;
                }
                let allowed = rule
                    .allowed
                    .iter()
                    .any(|(d, m)| *d == dir && n.module.first().is_some_and(|f| f == m));
                if !allowed {
                    let places: Vec<String> = rule
                        .allowed
                        .iter()
                        .map(|(d, m)| format!("{d}::{m}"))
                        .collect();
                    violations.push(Violation {
                        file: relative(&file.path),
                        line: n.line,
                        rule: "confined-crate",
                        message: format!(
                            "names `{}` outside {} ({})",
                            rule.external,
                            places.join(", "),
                            rule.why
                        ),
                    });
                }
            }
        }
    }
    report(
        "call the module that owns the library (through its own types) instead of naming the \
         library; if a new module really must use it, change the rule in tests/tests/architecture.rs \
         and ARCHITECTURE.md together.",
        violations,
    );
}

#[test]
fn the_controllers_api_goes_through_app_only() {
    let ws = workspace();
    let mut violations = Vec::new();
    let controller = ws
        .production_files()
        .filter(|(dir, ..)| *dir == "central-controller");
    for (_, file, c) in controller {
        if file.module.first().is_none_or(|m| m != "api") {
            continue;
        }
        for n in &c.named {
            let bad = if names(&n.segments, &["crate", "store"]) {
                "crate::store"
            } else if n.segments.first().is_some_and(|s| s == "verge_scheduler") {
                "verge_scheduler"
            } else if n.segments.first().is_some_and(|s| s == "sled") {
                "sled"
            } else {
                continue;
            };
            violations.push(Violation {
                file: relative(&file.path),
                line: n.line,
                rule: "api-through-app",
                message: format!("`api` names `{bad}` (api -> app only)"),
            });
        }
    }
    report(
        "let `app` offer what the handler needs (a method or a type re-exported from app) and \
         call that; the HTTP layer never reaches the store or the scheduler itself.",
        violations,
    );
}

#[test]
fn the_agent_and_the_controller_never_depend_on_each_other() {
    let mut violations = Vec::new();
    for (dir, other) in [
        ("edge-agent", "central-controller"),
        ("central-controller", "edge-agent"),
    ] {
        let manifest = root().join(dir).join("Cargo.toml");
        let text = fs::read_to_string(&manifest).expect("manifest");
        let toml: toml::Table = text.parse().expect("manifest is TOML");
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            if toml
                .get(section)
                .and_then(|d| d.as_table())
                .is_some_and(|d| d.contains_key(other))
            {
                let line = text
                    .lines()
                    .position(|l| l.trim_start().starts_with(other))
                    .map_or(0, |i| i + 1);
                violations.push(Violation {
                    file: format!("{dir}/Cargo.toml"),
                    line,
                    rule: "no-agent-controller-dependency",
                    message: format!("[{section}] depends on `{other}`"),
                });
            }
        }
    }
    report(
        "move what both need into verge-shared; system tests that need both belong in tests/.",
        violations,
    );
}

/// The operator CLI is a client of the HTTP API like any other: it may use
/// verge-shared for types at most, never the controller's or the agent's code.
#[test]
fn the_cli_talks_only_http_to_the_api() {
    let manifest = root().join("cli/Cargo.toml");
    let text = fs::read_to_string(&manifest).expect("manifest");
    let toml: toml::Table = text.parse().expect("manifest is TOML");
    let workspace: BTreeSet<&str> = CRATES.iter().map(|(_, name)| *name).collect();
    let mut violations = Vec::new();
    for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
        let Some(deps) = toml.get(section).and_then(|d| d.as_table()) else {
            continue;
        };
        for name in deps.keys() {
            if workspace.contains(name.as_str()) && name != "verge-shared" && name != "verge-cli" {
                let line = text
                    .lines()
                    .position(|l| l.trim_start().starts_with(name.as_str()))
                    .map_or(0, |i| i + 1);
                violations.push(Violation {
                    file: "cli/Cargo.toml".to_owned(),
                    line,
                    rule: "cli-is-an-api-client",
                    message: format!("[{section}] depends on `{name}`"),
                });
            }
        }
    }
    report(
        "the CLI reaches the controller only through its HTTP API; share types through \
         verge-shared, never the controller's or the agent's crate.",
        violations,
    );
}

// ---------------------------------------------------------------------------
// Rule 3: no `.unwrap()` outside test code.

#[test]
fn no_unwrap_outside_test_code() {
    let ws = workspace();
    let mut violations = Vec::new();
    for (_, file, c) in ws.production_files() {
        for (line, test) in &c.unwraps {
            if !test {
                violations.push(Violation {
                    file: relative(&file.path),
                    line: *line,
                    rule: "no-unwrap",
                    message: "`.unwrap()` in production code".into(),
                });
            }
        }
    }
    report(
        "return the error (`?` with context), or, where it truly cannot fail, use `.expect(\"why \
         it cannot fail\")`; unwraps belong only in #[cfg(test)] code, tests/, benches and examples.",
        violations,
    );
}

// ---------------------------------------------------------------------------
// Rule 4: the module graph of each crate has no cycle and no upward import.

/// The module graph of one crate target (its library or binary root).
struct Graph {
    /// Module path -> file (inline modules map to their file).
    modules: BTreeMap<Vec<String>, PathBuf>,
    /// Module path -> whether it has its own file.
    is_file: BTreeMap<Vec<String>, bool>,
    /// File -> names of items defined in it (not imports).
    defined: BTreeMap<PathBuf, BTreeSet<String>>,
    /// Module -> re-exported name (`pub use`) -> the absolute path it names.
    reexports: BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>>,
    /// Edges between files, with where they come from: (from, to) -> lines.
    edges: BTreeMap<(PathBuf, PathBuf), Vec<usize>>,
    upward: Vec<Violation>,
}

/// Names of the items defined (not imported) at the top of `items`.
fn defined_names(items: &[syn::Item], out: &mut BTreeSet<String>) {
    for item in items {
        let name = match item {
            syn::Item::Const(i) => i.ident.to_string(),
            syn::Item::Enum(i) => i.ident.to_string(),
            syn::Item::Fn(i) => i.sig.ident.to_string(),
            syn::Item::Static(i) => i.ident.to_string(),
            syn::Item::Struct(i) => i.ident.to_string(),
            syn::Item::Trait(i) => i.ident.to_string(),
            syn::Item::Type(i) => i.ident.to_string(),
            syn::Item::Union(i) => i.ident.to_string(),
            syn::Item::Macro(i) => match &i.ident {
                Some(id) => id.to_string(),
                None => continue,
            },
            _ => continue,
        };
        out.insert(name);
    }
}

impl Graph {
    fn build(files: &[(ModFile, Collector)]) -> Graph {
        let mut g = Graph {
            modules: BTreeMap::new(),
            is_file: BTreeMap::new(),
            defined: BTreeMap::new(),
            reexports: BTreeMap::new(),
            edges: BTreeMap::new(),
            upward: Vec::new(),
        };
        for (f, _) in files {
            g.modules.insert(f.module.clone(), f.path.clone());
            g.is_file.insert(f.module.clone(), true);
            register_inline(&f.ast.items, &f.module, &f.path, &mut g);
            let mut names = BTreeSet::new();
            defined_names(&f.ast.items, &mut names);
            g.defined.insert(f.path.clone(), names);
        }
        for (f, _) in files {
            for item in &f.ast.items {
                let syn::Item::Use(u) = item else { continue };
                if matches!(u.vis, syn::Visibility::Inherited) || is_test(&u.attrs) {
                    continue;
                }
                let mut uses = Collector {
                    module: f.module.clone(),
                    test_depth: 0,
                    named: Vec::new(),
                    unwraps: Vec::new(),
                };
                uses.use_tree(&mut Vec::new(), &u.tree);
                for n in uses.named.iter().filter(|n| !n.glob) {
                    if let (Some(name), Some(path)) = (n.segments.last(), g.absolute(n)) {
                        g.reexports
                            .entry(f.module.clone())
                            .or_default()
                            .insert(name.clone(), path);
                    }
                }
            }
        }
        for (f, c) in files {
            for n in c.named.iter().filter(|n| !n.test) {
                g.add(f, n);
            }
        }
        g
    }

    /// The module (longest prefix of `path` that is one) and the item named
    /// in it, following re-exports to where the item is defined.
    fn resolve(&self, path: &[String]) -> Option<(Vec<String>, Option<String>)> {
        let mut path = path.to_vec();
        for _ in 0..8 {
            let mut module = path.clone();
            while !self.modules.contains_key(&module) {
                module.pop()?;
            }
            let item = path.get(module.len()).cloned();
            let next = item
                .as_ref()
                .and_then(|name| self.reexports.get(&module)?.get(name))
                .filter(|target| **target != path);
            match next {
                Some(target) => {
                    let mut target = target.clone();
                    target.extend(path.iter().skip(module.len() + 1).cloned());
                    path = target;
                }
                None => return Some((module, item)),
            }
        }
        None
    }

    /// The absolute module path `n` points into, if it is a path within the crate.
    fn absolute(&self, n: &Named) -> Option<Vec<String>> {
        let first = n.segments.first()?;
        let mut base: Vec<String>;
        let mut rest = &n.segments[..];
        match first.as_str() {
            "crate" => {
                base = Vec::new();
                rest = &rest[1..];
            }
            "self" => {
                base = n.module.clone();
                rest = &rest[1..];
            }
            "super" => {
                base = n.module.clone();
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
            }
            child => {
                let mut m = n.module.clone();
                m.push(child.to_owned());
                if !self.modules.contains_key(&m) {
                    return None;
                }
                base = n.module.clone();
            }
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    fn add(&mut self, f: &ModFile, n: &Named) {
        let Some(path) = self.absolute(n) else { return };
        let Some((module, item)) = self.resolve(&path) else {
            return;
        };
        let Some(target) = self.modules.get(&module).cloned() else {
            return;
        };
        if target == f.path {
            return;
        }
        // Upward: into an ancestor module's own items (not its children).
        let file_module = self.file_module(&n.module);
        let ancestor = module.len() < file_module.len() && file_module.starts_with(&module);
        if ancestor {
            let defined = match &item {
                Some(name) => self.defined.get(&target).is_some_and(|d| d.contains(name)),
                None => n.glob,
            };
            if defined {
                let what = match &item {
                    Some(name) => format!("`{name}`"),
                    None => "everything (glob)".into(),
                };
                self.upward.push(Violation {
                    file: relative(&f.path),
                    line: n.line,
                    rule: "upward-import",
                    message: format!(
                        "`{}` imports {what} defined in its ancestor {}",
                        n.segments.join("::"),
                        relative(&target)
                    ),
                });
            }
        }
        self.edges
            .entry((f.path.clone(), target))
            .or_default()
            .push(n.line);
    }

    /// The nearest enclosing module that has its own file.
    fn file_module(&self, module: &[String]) -> Vec<String> {
        let mut m = module.to_vec();
        while !self.is_file.get(&m).copied().unwrap_or(false) {
            if m.pop().is_none() {
                break;
            }
        }
        m
    }

    /// Strongly connected components with more than one file (Tarjan).
    fn cycles(&self) -> Vec<Vec<PathBuf>> {
        let nodes: Vec<PathBuf> = self.defined.keys().cloned().collect();
        let index_of: BTreeMap<&PathBuf, usize> =
            nodes.iter().enumerate().map(|(i, p)| (p, i)).collect();
        let mut adj = vec![Vec::new(); nodes.len()];
        for (from, to) in self.edges.keys() {
            if let (Some(&a), Some(&b)) = (index_of.get(from), index_of.get(to)) {
                adj[a].push(b);
            }
        }
        let mut t = Tarjan {
            adj: &adj,
            index: vec![None; nodes.len()],
            low: vec![0; nodes.len()],
            on_stack: vec![false; nodes.len()],
            stack: Vec::new(),
            next: 0,
            sccs: Vec::new(),
        };
        for v in 0..nodes.len() {
            if t.index[v].is_none() {
                t.connect(v);
            }
        }
        t.sccs
            .into_iter()
            .filter(|c| c.len() > 1)
            .map(|c| {
                let mut c: Vec<PathBuf> = c.into_iter().map(|i| nodes[i].clone()).collect();
                c.sort();
                c
            })
            .collect()
    }

    /// One shortest cycle through `start` within `scc`, as files.
    fn cycle_through(&self, start: &PathBuf, scc: &[PathBuf]) -> Vec<PathBuf> {
        let members: BTreeSet<&PathBuf> = scc.iter().collect();
        let mut prev: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start.clone()]);
        while let Some(v) = queue.pop_front() {
            for (from, to) in self.edges.keys() {
                if from != &v || !members.contains(to) {
                    continue;
                }
                if to == start {
                    let mut path = vec![v.clone()];
                    let mut cur = v.clone();
                    while let Some(p) = prev.get(&cur) {
                        path.push(p.clone());
                        cur = p.clone();
                    }
                    path.reverse();
                    path.push(start.clone());
                    return path;
                }
                if !prev.contains_key(to) && to != start {
                    prev.insert(to.clone(), v.clone());
                    queue.push_back(to.clone());
                }
            }
        }
        vec![start.clone()]
    }
}

fn register_inline(items: &[syn::Item], module: &[String], file: &Path, g: &mut Graph) {
    for item in items {
        if let syn::Item::Mod(m) = item
            && let Some((_, inner)) = &m.content
        {
            let mut child = module.to_vec();
            child.push(m.ident.to_string());
            g.modules.insert(child.clone(), file.to_owned());
            g.is_file.insert(child.clone(), false);
            register_inline(inner, &child, file, g);
        }
    }
}

struct Tarjan<'a> {
    adj: &'a [Vec<usize>],
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next: usize,
    sccs: Vec<Vec<usize>>,
}

impl Tarjan<'_> {
    fn connect(&mut self, v: usize) {
        self.index[v] = Some(self.next);
        self.low[v] = self.next;
        self.next += 1;
        self.stack.push(v);
        self.on_stack[v] = true;
        for &w in &self.adj[v] {
            match self.index[w] {
                None => {
                    self.connect(w);
                    self.low[v] = self.low[v].min(self.low[w]);
                }
                Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(self.low[v]) == self.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = self.stack.pop() {
                self.on_stack[w] = false;
                scc.push(w);
                if w == v {
                    break;
                }
            }
            self.sccs.push(scc);
        }
    }
}

/// Checks the module graphs of the non-test targets of `crate_dirs`.
fn check_module_graphs(crate_dirs: &[&str]) {
    let ws = workspace();
    let mut violations = Vec::new();
    for Target {
        dir,
        root: target,
        files,
        ..
    } in &ws.targets
    {
        if !crate_dirs.contains(dir) {
            continue;
        }
        let g = Graph::build(files);
        violations.extend(g.upward.iter().map(|v| Violation {
            file: v.file.clone(),
            line: v.line,
            rule: v.rule,
            message: v.message.clone(),
        }));
        for scc in g.cycles() {
            let cycle = g.cycle_through(&scc[0], &scc);
            let mut message = format!(
                "module cycle in {}: {}",
                relative(target),
                cycle
                    .iter()
                    .map(|p| relative(p))
                    .collect::<Vec<_>>()
                    .join(" -> ")
            );
            for pair in cycle.windows(2) {
                if let Some(lines) = g.edges.get(&(pair[0].clone(), pair[1].clone())) {
                    let _ = write!(
                        message,
                        "\n      {}:{} uses {}",
                        relative(&pair[0]),
                        lines[0],
                        relative(&pair[1])
                    );
                }
            }
            if scc.len() > cycle.len().saturating_sub(1) {
                let _ = write!(
                    message,
                    "\n      (all files in this cycle: {})",
                    scc.iter()
                        .map(|p| relative(p))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let line = g
                .edges
                .get(&(cycle[0].clone(), cycle.get(1).cloned().unwrap_or_default()))
                .map_or(1, |lines| lines[0]);
            violations.push(Violation {
                file: relative(&cycle[0]),
                line,
                rule: "module-cycle",
                message,
            });
        }
    }
    report(
        "modules form layers: a child never reaches up into its parent's `lib.rs`/`mod.rs` \
         items (move the shared item into its own module, or re-export it with `pub use` from \
         where it is defined), and no two modules use each other (move what both need into a \
         third module that neither depends on).",
        violations,
    );
}

#[test]
fn module_graph_of_the_small_crates_is_layered() {
    check_module_graphs(&[
        "shared",
        "durable",
        "scheduler",
        "admin",
        "cli",
        "tests",
        "simulation",
        "examples/hello-edge",
    ]);
}

#[test]
fn module_graph_of_edge_agent_is_layered() {
    check_module_graphs(&["edge-agent"]);
}

#[test]
fn module_graph_of_central_controller_is_layered() {
    check_module_graphs(&["central-controller"]);
}
