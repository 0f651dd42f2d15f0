//! From `build` arguments to a compiled plan: the context and Dockerfile,
//! parser directives, base images, compilation and build checks. Shared by
//! `build`, `check` and `debug graph`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rbuild_frontend::dockerignore;
use rbuild_frontend::lint::{self, Lint};
use rbuild_frontend::parser::{self, Dockerfile};
use rbuild_frontend::{CompileOptions, ImageResolver, Plan, ResolvedImage, compile};
use rbuild_oci::{Descriptor, Digest, ImageConfig, Platform, media_type};
use rbuild_solver::Root;

use crate::cli::BuildArgs;
use crate::diagnostic;
use crate::resolver::Resolver;

/// A compiled build, ready to run.
pub struct Prepared {
    /// What errors call the Dockerfile (`Dockerfile`, or the -f path).
    pub dockerfile_name: String,
    pub plan: Plan,
    /// Build-check findings, minus the rules `# check=skip=` turns off.
    pub lints: Vec<Lint>,
    /// `# check=error=true`: findings fail the build.
    pub lints_are_errors: bool,
    /// The build context's `.dockerignore` patterns.
    pub context_excludes: Vec<String>,
}

/// How base images that are not available are treated.
#[derive(Clone, Copy)]
pub enum Bases<'a> {
    /// They are pulled from their registry, with this configuration
    /// (building); one that cannot be pulled is an error.
    Pull(&'a crate::config::Config),
    /// They are assumed empty, with a note (checking).
    Optional,
}

pub fn prepare(root: &Root, args: &BuildArgs, bases: Bases<'_>) -> Result<Prepared> {
    check_context(&args.context)?;
    let (dockerfile_name, source) = read_dockerfile(&args.context, args.file.as_deref())?;
    let parsed = parser::parse(&source).map_err(|e| {
        // ParseError says "line N: ..."; the diagnostic says where itself.
        let text = e.to_string();
        let message = text
            .split_once(": ")
            .map_or(text.as_str(), |(_, m)| m)
            .to_string();
        diagnostic::render(&dockerfile_name, &source, e.line(), None, &message)
    })?;
    if !args.quiet {
        announce_frontend(&parsed);
    }
    let (skip, lints_are_errors) = check_directive(&parsed);

    let pulling = match bases {
        Bases::Pull(config) => Some(crate::resolver::Pulling {
            config,
            always: args.pull,
            quiet: args.quiet,
        }),
        Bases::Optional => None,
    };
    let store_resolver = Resolver::new(root, &args.build_contexts, pulling)?;
    let lenient = Lenient {
        inner: &store_resolver,
        missing: Default::default(),
    };
    let resolver: &dyn ImageResolver = match bases {
        Bases::Pull(_) => &store_resolver,
        Bases::Optional => &lenient,
    };
    let dockerfile_path = args.file.as_deref().filter(|f| f.as_os_str() != "-");
    let context_excludes = match dockerignore::load(&args.context, dockerfile_path)? {
        Some((path, patterns)) => {
            // Invalid patterns are reported here, before anything runs.
            rbuild_exec::patterns::PatternMatcher::new(&patterns)
                .with_context(|| format!("{}", path.display()))?;
            patterns
        }
        None => Vec::new(),
    };
    let options = CompileOptions {
        build_args: parse_build_args(&args.build_args)?,
        target: args.target.clone(),
        platform: Platform::host(),
        context_excludes: context_excludes.clone(),
    };
    let plan = compile(&parsed, &options, resolver).map_err(|e| match e.line {
        Some(line) => diagnostic::render(
            &dockerfile_name,
            &source,
            line,
            e.needle().as_deref(),
            &e.kind.to_string(),
        ),
        None => diagnostic::Diagnostic(e.render(&dockerfile_name)),
    })?;
    for name in lenient.missing.borrow().iter() {
        eprintln!("note: base image {name:?} is not in rbuild's store; its config was not checked");
    }
    let mut lints: Vec<Lint> = lint::check(&parsed)
        .into_iter()
        .chain(plan.lints.iter().cloned())
        .collect();
    lints.retain(|l| {
        !skip
            .iter()
            .any(|s| s == "all" || s.eq_ignore_ascii_case(l.rule))
    });
    lints.sort_by_key(|l| l.line);
    lints.dedup();
    Ok(Prepared {
        dockerfile_name,
        plan,
        lints,
        lints_are_errors,
        context_excludes,
    })
}

/// Prints the build checks' findings (`FILE:LINE: warning: Rule: message`)
/// and unused build args; fails when the Dockerfile says
/// `# check=error=true` and there are findings.
pub fn report(prepared: &Prepared) -> Result<()> {
    for l in &prepared.lints {
        eprintln!(
            "{}:{}: warning: {}: {}",
            prepared.dockerfile_name, l.line, l.rule, l.message
        );
    }
    if !prepared.plan.unused_build_args.is_empty() {
        eprintln!(
            "warning: build-args {:?} were not consumed by any ARG",
            prepared.plan.unused_build_args
        );
    }
    let n = prepared.lints.len();
    if prepared.lints_are_errors && n > 0 {
        let s = if n == 1 { "" } else { "s" };
        bail!("{n} build check{s} failed, and the Dockerfile says check=error=true");
    }
    Ok(())
}

fn check_context(context: &Path) -> Result<()> {
    if context.as_os_str() == "-" {
        bail!("reading the build context from standard input is not supported yet");
    }
    match std::fs::metadata(context) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("build context {} is not a directory", context.display()),
        Err(e) => bail!(
            "unable to prepare context: path {:?} not found: {e}",
            context.display().to_string()
        ),
    }
}

/// `# syntax=` names a frontend image for BuildKit to pull; rbuild always
/// uses its built-in frontend and says so once.
fn announce_frontend(parsed: &Dockerfile) {
    let Some(syntax) = &parsed.directives.syntax else {
        return;
    };
    let image = syntax.value.trim();
    let name = image.split('@').next().unwrap_or(image);
    let name = name.strip_prefix("docker.io/").unwrap_or(name);
    let (repo, tag) = name.rsplit_once(':').unwrap_or((name, "latest"));
    let dockerfile = matches!(repo, "docker/dockerfile" | "docker/dockerfile-upstream");
    let known_tag = tag == "latest"
        || tag == "labs"
        || tag
            .trim_end_matches("-labs")
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    if dockerfile && known_tag {
        eprintln!("syntax={image}: using rbuild's built-in Dockerfile frontend");
    } else {
        eprintln!(
            "warning: syntax={image} (line {}) names a frontend rbuild does not run; using rbuild's built-in Dockerfile frontend",
            syntax.line
        );
    }
}

/// `# check=skip=Rule1,Rule2;error=true`.
fn check_directive(parsed: &Dockerfile) -> (Vec<String>, bool) {
    let Some(check) = &parsed.directives.check else {
        return (Vec::new(), false);
    };
    let mut skip = Vec::new();
    let mut error = false;
    for part in check.value.split(';') {
        match part.trim().split_once('=') {
            Some(("skip", rules)) => skip.extend(rules.split(',').map(|r| r.trim().to_string())),
            Some(("error", v)) => error = v.trim().eq_ignore_ascii_case("true"),
            _ => eprintln!(
                "warning: ignoring unknown check directive {part:?} (line {})",
                check.line
            ),
        }
    }
    (skip, error)
}

/// For `check`: a missing base image is assumed empty, and remembered.
struct Lenient<'a> {
    inner: &'a Resolver<'a>,
    missing: std::cell::RefCell<Vec<String>>,
}

impl ImageResolver for Lenient<'_> {
    fn resolve(&self, name: &str) -> Result<Option<ResolvedImage>, String> {
        if let Some(found) = self.inner.resolve(name)? {
            return Ok(Some(found));
        }
        self.missing.borrow_mut().push(name.to_string());
        let placeholder = Digest::of(name.as_bytes());
        Ok(Some(ResolvedImage {
            name: name.to_string(),
            manifest: Descriptor::new(media_type::OCI_MANIFEST, placeholder, 0),
            config: ImageConfig::scratch(&Platform::host()),
        }))
    }
}

/// `--build-arg K=V`, or `K` alone to take the value from the environment
/// (skipped when unset, as docker does).
fn parse_build_args(args: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for arg in args {
        match arg.split_once('=') {
            Some(("", _)) => bail!("invalid --build-arg {arg:?}: empty name"),
            Some((k, v)) => {
                out.insert(k.to_string(), v.to_string());
            }
            None => {
                if let Ok(v) = std::env::var(arg) {
                    out.insert(arg.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

/// The Dockerfile's bytes and the name errors call it by.
fn read_dockerfile(context: &Path, file: Option<&Path>) -> Result<(String, Vec<u8>)> {
    match file {
        Some(p) if p.as_os_str() == "-" => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("reading the Dockerfile from standard input")?;
            Ok(("Dockerfile".to_string(), bytes))
        }
        Some(p) => {
            let bytes =
                std::fs::read(p).with_context(|| format!("reading Dockerfile {}", p.display()))?;
            Ok((p.display().to_string(), bytes))
        }
        None => {
            let path: PathBuf = context.join("Dockerfile");
            let bytes = std::fs::read(&path)
                .with_context(|| format!("reading Dockerfile {}", path.display()))?;
            Ok(("Dockerfile".to_string(), bytes))
        }
    }
}
