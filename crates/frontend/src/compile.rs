//! Compiling a parsed Dockerfile into a [`Plan`]: the global ARG scope,
//! stages and their dependencies (FROM, `COPY --from`, `RUN --mount
//! from=`), and the stages the target needs, each compiled by
//! [`dispatch`](crate::dispatch) into graph nodes, history and config.

use std::collections::{BTreeMap, BTreeSet};

use rbuild_oci::{Platform, RuntimeConfig};

use crate::dispatch::StageBuilder;
use crate::error::{CompileError, ErrorKind};
use crate::graph::{Graph, NodeId, Op};
use crate::instructions::{self, Command};
use crate::lint::Lint;
use crate::parser::{Dockerfile, Instruction};
use crate::plan::{Base, ImageResolver, Plan, Stage};
use crate::shell::{Env, Lexer};

/// The PATH a stage gets when its base image sets none (BuildKit's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Inputs of a compilation besides the Dockerfile.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// `--target`; the last stage when None.
    pub target: Option<String>,
    /// The platform built for (the host's).
    pub platform: Platform,
    /// `.dockerignore` patterns of the build context.
    pub context_excludes: Vec<String>,
}

/// A stage as written: its FROM and its instructions.
pub(crate) struct RawStage<'a> {
    pub from: &'a Instruction,
    /// The base name after expansion with the global ARGs.
    pub image: String,
    /// Lowercased `AS` name.
    pub name: Option<String>,
    pub body: Vec<(&'a Instruction, Command)>,
}

/// What later stages can refer to: each compiled stage's final filesystem.
#[derive(Default)]
pub(crate) struct StageTable {
    /// (name, state node, plan index) by Dockerfile stage index.
    pub compiled: Vec<Option<(Option<String>, NodeId, usize)>>,
}

impl StageTable {
    /// A stage by name or index, among those before `before`.
    pub fn find(&self, reference: &str, before: usize) -> Option<(NodeId, usize)> {
        let wanted = reference.to_ascii_lowercase();
        let by_index = reference.parse::<usize>().ok().filter(|i| *i < before);
        self.compiled[..before.min(self.compiled.len())]
            .iter()
            .enumerate()
            .find_map(|(i, entry)| {
                let (name, state, plan_index) = entry.as_ref()?;
                (by_index == Some(i) || name.as_deref() == Some(wanted.as_str()))
                    .then_some((*state, *plan_index))
            })
    }
}

/// Everything a stage's compilation shares with the others.
pub(crate) struct Shared<'a> {
    pub lexer: &'a Lexer,
    pub options: &'a CompileOptions,
    pub resolver: &'a dyn ImageResolver,
    pub global_args: &'a [(String, String)],
    pub platform_args: &'a [(String, String)],
    pub used_args: BTreeSet<String>,
    pub graph: Graph,
    pub stages: StageTable,
    /// Build-check findings that need expansion (UndefinedVar, ...).
    pub lints: Vec<Lint>,
}

/// Compiles `file` for `options`, resolving base images with `resolver`.
pub fn compile(
    file: &Dockerfile,
    options: &CompileOptions,
    resolver: &dyn ImageResolver,
) -> Result<Plan, CompileError> {
    let lexer = Lexer::new(file.directives.escape);
    let platform_args = platform_args(&options.platform);
    let mut used_args = BTreeSet::new();
    let mut lints = Vec::new();
    let (global_args, raw_stages) = split_stages(
        file,
        &lexer,
        options,
        &platform_args,
        &mut used_args,
        &mut lints,
    )?;
    let global_env: Vec<(String, String)> =
        platform_args.iter().chain(&global_args).cloned().collect();

    let target = match &options.target {
        None => raw_stages.len() - 1,
        Some(t) => raw_stages
            .iter()
            .position(|s| s.name.as_deref() == Some(t.to_ascii_lowercase().as_str()))
            .ok_or_else(|| {
                CompileError::general(ErrorKind::UnknownTarget {
                    target: t.clone(),
                    stages: raw_stages.iter().filter_map(|s| s.name.clone()).collect(),
                })
            })?,
    };
    let needed = needed_stages(&raw_stages, target, &lexer, &global_env)?;

    let mut shared = Shared {
        lexer: &lexer,
        options,
        resolver,
        global_args: &global_args,
        platform_args: &platform_args,
        used_args,
        graph: Graph::default(),
        lints,
        stages: StageTable {
            compiled: vec![None; raw_stages.len()],
        },
    };
    let mut stages: Vec<Stage> = Vec::new();
    for (i, raw) in raw_stages.iter().enumerate() {
        if !needed[i] {
            continue;
        }
        let stage = compile_stage(&mut shared, &stages, raw, i)?;
        shared.stages.compiled[i] = Some((raw.name.clone(), stage.state, stages.len()));
        stages.push(stage);
    }
    let unused_build_args = options
        .build_args
        .keys()
        .filter(|k| !shared.used_args.contains(*k) && !is_builtin_arg(k))
        .cloned()
        .collect();
    Ok(Plan {
        lints: shared.lints,
        graph: shared.graph,
        stages,
        unused_build_args,
    })
}

/// ARG values before the first FROM, in declaration order.
type GlobalArgs = Vec<(String, String)>;

/// Global ARGs (before the first FROM) and the stages as written.
fn split_stages<'a>(
    file: &'a Dockerfile,
    lexer: &Lexer,
    options: &CompileOptions,
    platform_args: &[(String, String)],
    used_args: &mut BTreeSet<String>,
    lints: &mut Vec<Lint>,
) -> Result<(GlobalArgs, Vec<RawStage<'a>>), CompileError> {
    let mut global_args: Vec<(String, String)> = Vec::new();
    // Global ARGs declared, with or without a value.
    let mut declared: BTreeSet<String> = BTreeSet::new();
    let mut stages: Vec<RawStage<'a>> = Vec::new();
    for inst in &file.instructions {
        let command = instructions::parse(inst)?;
        if let Command::From {
            image,
            alias,
            platform,
        } = command
        {
            let env: Vec<(String, String)> =
                platform_args.iter().chain(&global_args).cloned().collect();
            let raw_image = image;
            let expansion = lexer
                .process_word_with_matches(&raw_image, &env)
                .map_err(|e| CompileError::at(inst, ErrorKind::Expansion(e.to_string())))?;
            for name in &expansion.unmatched {
                if !declared.contains(name) {
                    lints.push(Lint::new(
                        "UndefinedArgInFrom",
                        inst.start_line,
                        format!("FROM argument '{name}' is not declared"),
                    ));
                }
            }
            let image = expansion.result;
            if image.is_empty() {
                return Err(CompileError::at(
                    inst,
                    ErrorKind::Invalid(format!("base name ({raw_image}) should not be blank")),
                ));
            }
            let name = alias.map(|a| a.to_ascii_lowercase());
            if let Some(name) = &name
                && stages.iter().any(|s| s.name.as_ref() == Some(name))
            {
                return Err(CompileError::at(
                    inst,
                    ErrorKind::Invalid(format!("duplicate stage name {name:?}")),
                ));
            }
            if let Some(p) = platform {
                check_platform(&expand(lexer, inst, &p, &env)?, &options.platform, inst)?;
            }
            stages.push(RawStage {
                from: inst,
                image,
                name,
                body: Vec::new(),
            });
            continue;
        }
        match (stages.last_mut(), command) {
            (Some(stage), command) => stage.body.push((inst, command)),
            (None, Command::Arg(args)) => {
                for (name, default) in args {
                    declared.insert(name.clone());
                    let env: Vec<(String, String)> =
                        platform_args.iter().chain(&global_args).cloned().collect();
                    let expanded = default
                        .as_deref()
                        .map(|d| expand(lexer, inst, d, &env))
                        .transpose()?;
                    // Declared without any value: unset, not empty.
                    if let Some(value) = arg_value(&name, expanded, options, used_args) {
                        global_args.retain(|(k, _)| *k != name);
                        global_args.push((name, value));
                    }
                }
            }
            (None, _) => {
                return Err(CompileError::at(
                    inst,
                    ErrorKind::Invalid("no build stage in current context: instructions other than ARG must come after FROM".into()),
                ));
            }
        }
    }
    if stages.is_empty() {
        return Err(CompileError::general(ErrorKind::NoStage));
    }
    Ok((global_args, stages))
}

fn check_platform(wanted: &str, host: &Platform, inst: &Instruction) -> Result<(), CompileError> {
    if wanted == host.to_string() || wanted == format!("{}/{}", host.os, host.architecture) {
        return Ok(());
    }
    Err(CompileError::at(
        inst,
        ErrorKind::Unsupported(format!("building for platform {wanted} on {host}")),
    ))
}

/// The stages the target needs: through FROM, `COPY --from` and `RUN
/// --mount from=`, whose values are expanded with the global ARGs.
fn needed_stages(
    stages: &[RawStage<'_>],
    target: usize,
    lexer: &Lexer,
    global_env: &[(String, String)],
) -> Result<Vec<bool>, CompileError> {
    let lookup = |reference: &str, before: usize| -> Option<usize> {
        let wanted = reference.to_ascii_lowercase();
        if let Ok(i) = reference.parse::<usize>() {
            return (i < before).then_some(i);
        }
        stages[..before]
            .iter()
            .position(|s| s.name.as_deref() == Some(wanted.as_str()))
    };
    let mut needed = vec![false; stages.len()];
    let mut pending = vec![target];
    while let Some(i) = pending.pop() {
        if std::mem::replace(&mut needed[i], true) {
            continue;
        }
        let stage = &stages[i];
        if let Some(dep) = lookup(&stage.image, i) {
            pending.push(dep);
        }
        for (inst, command) in &stage.body {
            let references: Vec<String> = match command {
                Command::Copy { flags, .. } => flags
                    .string("from")
                    .map(str::to_string)
                    .into_iter()
                    .collect(),
                Command::Run { flags, .. } => flags
                    .all("mount")
                    .iter()
                    .filter_map(|spec| mount_option(spec, "from"))
                    .collect(),
                _ => Vec::new(),
            };
            for reference in references {
                let reference = expand(lexer, inst, &reference, &global_env)?;
                if let Some(dep) = lookup(&reference, i) {
                    pending.push(dep);
                }
            }
        }
    }
    Ok(needed)
}

/// One `key=value` option of a `--mount` spec.
pub(crate) fn mount_option(spec: &str, key: &str) -> Option<String> {
    spec.split(',').find_map(|field| {
        let (k, v) = field.split_once('=')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

fn compile_stage(
    shared: &mut Shared<'_>,
    stages: &[Stage],
    raw: &RawStage<'_>,
    index: usize,
) -> Result<Stage, CompileError> {
    let (base, root, config, author) = match shared.stages.find(&raw.image, index) {
        Some((state, plan_index)) => {
            let dep = &stages[plan_index];
            (
                Base::Stage(plan_index),
                state,
                dep.config.clone(),
                dep.author.clone(),
            )
        }
        None if raw.image.eq_ignore_ascii_case("scratch") => (
            Base::Scratch,
            shared.graph.add(Op::Scratch, None),
            RuntimeConfig::default(),
            None,
        ),
        None => {
            let resolved = shared
                .resolver
                .resolve(&raw.image)
                .map_err(|e| CompileError::at(raw.from, ErrorKind::BaseImage(e)))?
                .ok_or_else(|| {
                    CompileError::at(
                        raw.from,
                        ErrorKind::BaseImage(format!(
                            "base image {:?} not found: it is not in rbuild's image store (add it with `rbuild load -i FILE`) nor given with --build-context",
                            raw.image
                        )),
                    )
                })?;
            let root = shared.graph.add(
                Op::Image {
                    name: raw.image.clone(),
                    manifest: resolved.manifest.digest,
                },
                Some(raw.from.start_line),
            );
            let config = resolved.config.config.clone();
            let author = resolved.config.author.clone();
            (Base::Image(Box::new(resolved)), root, config, author)
        }
    };
    let mut builder = StageBuilder::new(shared, index, root, config, author);
    builder.run_onbuild_triggers(raw.from)?;
    for (inst, command) in &raw.body {
        builder.apply(inst, command)?;
    }
    let (state, steps, config, author) = builder.finish();
    Ok(Stage {
        name: raw.name.clone(),
        base,
        platform: shared.options.platform.clone(),
        root,
        state,
        steps,
        config,
        author,
    })
}

pub(crate) fn expand(
    lexer: &Lexer,
    inst: &Instruction,
    word: &str,
    env: &dyn Env,
) -> Result<String, CompileError> {
    lexer
        .process_word(word, env)
        .map_err(|e| CompileError::at(inst, ErrorKind::Expansion(e.to_string())))
}

/// The value an ARG takes: the build arg when given, else its (already
/// expanded) default, else None (declared without a value).
pub(crate) fn arg_value(
    name: &str,
    expanded_default: Option<String>,
    options: &CompileOptions,
    used: &mut BTreeSet<String>,
) -> Option<String> {
    if let Some(v) = options.build_args.get(name) {
        used.insert(name.to_string());
        return Some(v.clone());
    }
    expanded_default
}

/// The automatic platform ARGs; no cross-building, so build = target.
fn platform_args(p: &Platform) -> Vec<(String, String)> {
    let variant = p.variant.clone().unwrap_or_default();
    let mut out = Vec::new();
    for prefix in ["BUILD", "TARGET"] {
        out.push((format!("{prefix}PLATFORM"), p.to_string()));
        out.push((format!("{prefix}OS"), p.os.clone()));
        out.push((format!("{prefix}ARCH"), p.architecture.clone()));
        out.push((format!("{prefix}VARIANT"), variant.clone()));
    }
    out
}

/// The proxy ARGs docker predefines: RUN sees them from --build-arg
/// without an ARG, and they never enter history.
pub(crate) const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Build args that are always accepted without an ARG (proxies and
/// BuildKit's own switches), so they never trigger "not consumed".
fn is_builtin_arg(name: &str) -> bool {
    PROXY_ARGS.contains(&name) || name.starts_with("BUILDKIT_")
}
