//! Each instruction's effect on a stage: graph nodes for the ones that
//! change files, the image config for the others, and the history entry
//! BuildKit would record.

use std::collections::BTreeMap;

use rbuild_oci::{HealthConfig, History, RuntimeConfig};

use crate::compile::{PROXY_ARGS, Shared, arg_value, expand, mount_option};
use crate::error::{CompileError, ErrorKind};
use crate::goquote::go_quote;
use crate::graph::{ContextOp, CopyOp, ExecMount, ExecOp, MkdirOp, NodeId, Op};
use crate::instructions::{self, Command, CommandLine, Flags, Health, Source};
use crate::lint::Lint;
use crate::parser::{self, Heredoc, Instruction};
use crate::plan::Step;
use crate::shell::{Env, Lexer};
use crate::values::{
    format_duration, go_quote_rune, parse_chmod, parse_duration, parse_ports, valid_signal,
};

/// BuildKit's history comment for Dockerfile instructions.
const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];
/// Where a RUN heredoc script with a shebang is mounted, as in BuildKit.
const HEREDOC_SCRIPT_DIR: &str = "/dev/pipes";

pub(crate) struct StageBuilder<'s, 'a> {
    shared: &'s mut Shared<'a>,
    /// The stage's index in the Dockerfile.
    index: usize,
    /// The filesystem so far.
    state: NodeId,
    config: RuntimeConfig,
    author: Option<String>,
    /// ARGs declared in this stage, in order, with their values.
    args: Vec<(String, Option<String>)>,
    /// Whether CMD was set in this stage (ENTRYPOINT then keeps it).
    cmd_set: bool,
    steps: Vec<Step>,
}

impl<'s, 'a> StageBuilder<'s, 'a> {
    pub fn new(
        shared: &'s mut Shared<'a>,
        index: usize,
        root: NodeId,
        mut config: RuntimeConfig,
        author: Option<String>,
    ) -> Self {
        if config.env_value("PATH").is_none() {
            config.set_env("PATH", crate::compile::DEFAULT_PATH);
        }
        StageBuilder {
            shared,
            index,
            state: root,
            config,
            author,
            args: Vec::new(),
            cmd_set: false,
            steps: Vec::new(),
        }
    }

    /// The final filesystem, steps, config and author.
    pub fn finish(self) -> (NodeId, Vec<Step>, RuntimeConfig, Option<String>) {
        (self.state, self.steps, self.config, self.author)
    }

    /// Runs the base image's ONBUILD triggers first, as BuildKit does, and
    /// clears them from the new image.
    pub fn run_onbuild_triggers(&mut self, from: &Instruction) -> Result<(), CompileError> {
        let triggers = self.config.on_build.take().unwrap_or_default();
        for trigger in triggers {
            let parsed = parser::parse(trigger.as_bytes()).map_err(|e| {
                CompileError::at(
                    from,
                    ErrorKind::Invalid(format!(
                        "ONBUILD trigger {trigger:?} of the base image: {e}"
                    )),
                )
            })?;
            for inst in &parsed.instructions {
                // Errors point at the FROM that pulled the trigger in.
                let inst = Instruction {
                    start_line: from.start_line,
                    end_line: from.end_line,
                    ..inst.clone()
                };
                let command = instructions::parse(&inst)?;
                if matches!(command, Command::From { .. }) {
                    return Err(CompileError::at(
                        from,
                        ErrorKind::Invalid("FROM is not allowed as an ONBUILD trigger".into()),
                    ));
                }
                self.apply(&inst, &command)?;
            }
        }
        Ok(())
    }

    /// The environment words are expanded in: ENV, then the stage's ARGs.
    /// A view, not a copy: expansion is the compiler's hot path.
    fn env(&self) -> StageEnv<'_> {
        StageEnv {
            env: self.config.env.as_deref().unwrap_or_default(),
            args: &self.args,
            fallback: &[],
        }
    }

    /// Expands a word, reporting variables that are neither set nor
    /// declared (BuildKit's UndefinedVar check).
    fn expand(&mut self, inst: &Instruction, word: &str) -> Result<String, CompileError> {
        let expansion = self
            .shared
            .lexer
            .process_word_with_matches(word, &self.env())
            .map_err(|e| CompileError::at(inst, ErrorKind::Expansion(e.to_string())))?;
        for name in &expansion.unmatched {
            let declared = self.args.iter().any(|(k, _)| k == name);
            let reported = self.shared.lints.iter().any(|l| {
                l.rule == "UndefinedVar"
                    && l.line == inst.start_line
                    && l.message.contains(&format!("'${name}'"))
            });
            if !declared && !reported {
                self.shared.lints.push(Lint::new(
                    "UndefinedVar",
                    inst.start_line,
                    format!("Usage of undefined variable '${name}'"),
                ));
            }
        }
        Ok(expansion.result)
    }

    fn expand_flag(
        &mut self,
        inst: &Instruction,
        flags: &Flags,
        name: &str,
    ) -> Result<Option<String>, CompileError> {
        match flags.string(name) {
            Some(v) => self.expand(inst, v).map(Some),
            None => Ok(None),
        }
    }

    fn workdir(&self) -> String {
        self.config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_string())
    }

    fn shell(&self) -> Vec<String> {
        self.config
            .shell
            .clone()
            .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect())
    }

    fn record(&mut self, inst: &Instruction, created_by: String, node: Option<NodeId>) {
        if let Some(node) = node {
            self.state = node;
        }
        self.steps.push(Step {
            line: inst.start_line,
            text: inst.original.clone(),
            history: History {
                created: None,
                created_by: Some(created_by),
                author: None,
                comment: Some(HISTORY_COMMENT.to_string()),
                empty_layer: node.is_none(),
            },
            node,
        });
    }

    fn add_node(&mut self, inst: &Instruction, op: Op) -> NodeId {
        self.shared.graph.add(op, Some(inst.start_line))
    }

    pub fn apply(&mut self, inst: &Instruction, command: &Command) -> Result<(), CompileError> {
        match command {
            Command::From { .. } => Err(CompileError::at(
                inst,
                ErrorKind::Invalid("FROM inside a stage".into()),
            )),
            Command::Arg(args) => self.arg(inst, args),
            Command::Env(pairs) => self.env_or_label(inst, pairs, true),
            Command::Label(pairs) => self.env_or_label(inst, pairs, false),
            Command::Copy {
                sources,
                dest,
                flags,
                add,
            } => self.copy(inst, sources, dest, flags, *add),
            Command::Run {
                line,
                flags,
                heredocs,
            } => self.run(inst, line, flags, heredocs),
            Command::Cmd(line) | Command::Entrypoint(line) => {
                let argv = match line {
                    CommandLine::Exec(argv) => argv.clone(),
                    CommandLine::Shell(s) => {
                        let mut argv = self.shell();
                        argv.push(s.clone());
                        argv
                    }
                };
                let is_cmd = matches!(command, Command::Cmd(_));
                let created_by = format!(
                    "{} {}",
                    if is_cmd { "CMD" } else { "ENTRYPOINT" },
                    go_quoted_slice(&argv)
                );
                if is_cmd {
                    self.config.cmd = Some(argv);
                    self.cmd_set = true;
                } else {
                    self.config.entrypoint = Some(argv);
                    if !self.cmd_set {
                        self.config.cmd = None;
                    }
                }
                self.record(inst, created_by, None);
                Ok(())
            }
            Command::Shell(argv) => {
                self.config.shell = Some(argv.clone());
                self.record(inst, format!("SHELL [{}]", argv.join(" ")), None);
                Ok(())
            }
            Command::Workdir(raw) => {
                let value = self.expand(inst, raw)?;
                let path = format!(
                    "/{}",
                    rbuild_oci::path::clean(&absolute(&self.workdir(), &value))
                );
                self.config.working_dir = Some(path.clone());
                let user = self.config.user.clone().filter(|u| !u.is_empty());
                let node = self.add_node(
                    inst,
                    Op::Mkdir(MkdirOp {
                        base: self.state,
                        path: path.clone(),
                        user,
                    }),
                );
                // BuildKit records the resolved absolute path.
                self.record(inst, format!("WORKDIR {path}"), Some(node));
                Ok(())
            }
            Command::User(raw) => {
                let value = self.expand(inst, raw)?;
                self.config.user = Some(value.clone());
                self.record(inst, format!("USER {value}"), None);
                Ok(())
            }
            Command::Expose(words) => self.expose(inst, words),
            Command::Volume(words) => {
                let mut volumes = Vec::new();
                for w in words {
                    let v = self.expand(inst, w)?;
                    if v.trim().is_empty() {
                        return Err(invalid(inst, "VOLUME specified can not be an empty string"));
                    }
                    volumes.push(v);
                }
                let map = self.config.volumes.get_or_insert_with(BTreeMap::new);
                for v in &volumes {
                    map.insert(v.clone(), Default::default());
                }
                self.record(inst, format!("VOLUME [{}]", volumes.join(" ")), None);
                Ok(())
            }
            Command::StopSignal(raw) => {
                let value = self.expand(inst, raw)?;
                if !valid_signal(&value) {
                    return Err(invalid(inst, &format!("invalid signal: {value}")));
                }
                self.config.stop_signal = Some(value.clone());
                self.record(inst, format!("STOPSIGNAL {value}"), None);
                Ok(())
            }
            Command::Maintainer(value) => {
                self.author = Some(value.clone());
                self.record(inst, format!("MAINTAINER {value}"), None);
                Ok(())
            }
            Command::Healthcheck(health) => self.healthcheck(inst, health.as_ref()),
            Command::Onbuild(expression) => {
                // BuildKit records no history for ONBUILD.
                self.config
                    .on_build
                    .get_or_insert_with(Vec::new)
                    .push(expression.clone());
                Ok(())
            }
        }
    }

    fn arg(
        &mut self,
        inst: &Instruction,
        args: &[(String, Option<String>)],
    ) -> Result<(), CompileError> {
        // History records each ARG with its default as expanded, not the
        // --build-arg value (BuildKit's dispatchArg).
        let mut recorded = Vec::new();
        for (name, default) in args {
            // ARG defaults also see the platform ARGs, undeclared.
            let env = StageEnv {
                fallback: self.shared.platform_args,
                ..self.env()
            };
            let expanded = default
                .as_deref()
                .map(|d| expand(self.shared.lexer, inst, d, &env))
                .transpose()?;
            recorded.push(match &expanded {
                Some(d) => format!("{name}={d}"),
                None => name.clone(),
            });
            let mut value = arg_value(
                name,
                expanded,
                self.shared.options,
                &mut self.shared.used_args,
            );
            if value.is_none() {
                // `ARG NAME` inherits the global (or platform) value.
                value = self
                    .shared
                    .global_args
                    .iter()
                    .chain(self.shared.platform_args)
                    .rev()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone());
            }
            self.args.retain(|(k, _)| k != name);
            self.args.push((name.clone(), value));
        }
        self.record(inst, format!("ARG {}", recorded.join(" ")), None);
        Ok(())
    }

    fn env_or_label(
        &mut self,
        inst: &Instruction,
        pairs: &[(String, String)],
        is_env: bool,
    ) -> Result<(), CompileError> {
        let what = if is_env { "ENV" } else { "LABEL" };
        // Every pair is expanded with the environment before the
        // instruction: `ENV A=1 B=$A` sees the old A.
        let mut expanded = Vec::new();
        for (k, v) in pairs {
            let key = self.expand(inst, k)?;
            if key.is_empty() {
                return Err(invalid(inst, &format!("{what} names can not be blank")));
            }
            expanded.push((key, self.expand(inst, v)?));
        }
        let mut created_by = what.to_string();
        for (k, v) in &expanded {
            created_by.push_str(&format!(" {k}={v}"));
            if is_env {
                self.config.set_env(k, v);
            } else {
                self.config
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert(k.clone(), v.clone());
            }
        }
        self.record(inst, created_by, None);
        Ok(())
    }

    fn copy(
        &mut self,
        inst: &Instruction,
        sources: &[Source],
        dest: &str,
        flags: &Flags,
        add: bool,
    ) -> Result<(), CompileError> {
        let what = if add { "ADD" } else { "COPY" };
        flags.boolean("link").map_err(|e| invalid(inst, &e))?;
        // Both only mean something for ADD from git or URLs.
        for unsupported in ["checksum", "keep-git-dir"] {
            if !flags.all(unsupported).is_empty() || flags.boolean(unsupported).unwrap_or(false) {
                return Err(CompileError::at(
                    inst,
                    ErrorKind::Unsupported(format!("{what} --{unsupported}")),
                ));
            }
        }
        let unpack = add && flags.string("unpack").map(|v| v != "false").unwrap_or(true);
        let dest_expanded = self.expand(inst, dest)?;
        let chown = self
            .expand_flag(inst, flags, "chown")?
            .filter(|c| !c.is_empty());
        let chmod = match self.expand_flag(inst, flags, "chmod")? {
            None => None,
            Some(c) => Some(parse_chmod(&c).ok_or_else(|| {
                invalid(
                    inst,
                    &format!("invalid --chmod={c}: only octal modes such as 0644 are supported"),
                )
            })?),
        };
        let mut words = Vec::new();
        let mut paths = Vec::new();
        let mut inline = Vec::new();
        for source in sources {
            match source {
                Source::Path(p) => {
                    let p = self.expand(inst, p)?;
                    if add && (p.contains("://") || p.starts_with("git@")) {
                        return Err(CompileError::at(
                            inst,
                            ErrorKind::Unsupported(format!("ADD from a URL ({p})")),
                        ));
                    }
                    words.push(p.clone());
                    paths.push(p);
                }
                Source::Heredoc(doc) => {
                    let body = doc.body().into_owned();
                    let content = if doc.expand {
                        self.expand_heredoc(inst, &body)?
                    } else {
                        body
                    };
                    words.push(format!("<<{}", doc.name));
                    inline.push((doc.name.clone(), content));
                }
            }
        }
        let mut exclude = Vec::new();
        for pattern in flags.all("exclude") {
            exclude.push(self.expand(inst, pattern)?);
        }
        let parents = flags.boolean("parents").map_err(|e| invalid(inst, &e))?;
        let template = CopyOp {
            base: self.state,
            source: self.state,
            sources: Vec::new(),
            dest: absolute(&self.workdir(), &dest_expanded),
            chown,
            chmod,
            unpack: false,
            exclude,
            parents,
        };
        let created_by = format!("{what} {} {dest_expanded} # buildkit", words.join(" "));
        let mut node = self.state;
        if !inline.is_empty() {
            let sources = inline.iter().map(|(n, _)| n.clone()).collect();
            let source = self.add_node(inst, Op::Inline(inline));
            let op = CopyOp {
                base: node,
                source,
                sources,
                ..template.clone()
            };
            node = self.add_node(inst, Op::Copy(op));
        }
        if !paths.is_empty() {
            let source = match self.expand_flag(inst, flags, "from")? {
                Some(from) => self.copy_source(inst, &from)?,
                None => self.add_node(
                    inst,
                    Op::Context(ContextOp {
                        name: "context".into(),
                        include: paths.clone(),
                        exclude: self.shared.options.context_excludes.clone(),
                    }),
                ),
            };
            let op = CopyOp {
                base: node,
                source,
                sources: paths,
                unpack,
                ..template
            };
            node = self.add_node(inst, Op::Copy(op));
        }
        self.record(inst, created_by, Some(node));
        Ok(())
    }

    /// `--from=`: an earlier stage (by name or index), else an image.
    fn copy_source(&mut self, inst: &Instruction, from: &str) -> Result<NodeId, CompileError> {
        if let Some((state, _)) = self.shared.stages.find(from, self.index) {
            return Ok(state);
        }
        if from.parse::<usize>().is_ok() {
            return Err(invalid(
                inst,
                &format!("invalid --from={from}: there is no earlier stage with that index"),
            ));
        }
        let image = self
            .shared
            .resolver
            .resolve(from)
            .map_err(|e| CompileError::at(inst, ErrorKind::BaseImage(e)))?
            .ok_or_else(|| {
                CompileError::at(
                    inst,
                    ErrorKind::BaseImage(format!(
                        "--from={from}: no stage by that name, and no such image in rbuild's store"
                    )),
                )
            })?;
        Ok(self.add_node(
            inst,
            Op::Image {
                name: from.to_string(),
                manifest: image.manifest.digest,
            },
        ))
    }

    /// Heredoc bodies of COPY/ADD expand variables but keep quotes and
    /// backslashes, as BuildKit's raw lexer does.
    fn expand_heredoc(&mut self, inst: &Instruction, body: &str) -> Result<String, CompileError> {
        let lexer = Lexer {
            raw_quotes: true,
            raw_escapes: true,
            ..self.shared.lexer.clone()
        };
        expand(&lexer, inst, body, &self.env())
    }

    fn run(
        &mut self,
        inst: &Instruction,
        line: &CommandLine,
        flags: &Flags,
        heredocs: &[Heredoc],
    ) -> Result<(), CompileError> {
        let network = self
            .expand_flag(inst, flags, "network")?
            .unwrap_or_else(|| "default".into());
        if !matches!(network.as_str(), "default" | "none" | "host") {
            return Err(invalid(
                inst,
                &format!("unsupported network mode {network:?} (default, none or host)"),
            ));
        }
        let security = self
            .expand_flag(inst, flags, "security")?
            .unwrap_or_else(|| "sandbox".into());
        if !matches!(security.as_str(), "sandbox" | "insecure") {
            return Err(invalid(
                inst,
                &format!("unsupported security mode {security:?} (sandbox or insecure)"),
            ));
        }
        let mut mounts = Vec::new();
        for spec in flags.all("mount") {
            let spec = self.expand(inst, spec)?;
            check_mount(inst, &spec)?;
            let from = match mount_option(&spec, "from") {
                Some(from) if !from.is_empty() => Some(self.copy_source(inst, &from)?),
                _ => None,
            };
            mounts.push(ExecMount { spec, from });
        }
        let mut files = Vec::new();
        let args = match line {
            CommandLine::Exec(argv) => {
                if !heredocs.is_empty() {
                    return Err(invalid(
                        inst,
                        "heredocs can only be used with the shell form of RUN",
                    ));
                }
                argv.clone()
            }
            CommandLine::Shell(cmd) => {
                let mut shell = self.shell();
                let script = match heredocs {
                    [] => cmd.clone(),
                    [only] if is_sole_heredoc(cmd, only) => {
                        let body = only.body().into_owned();
                        if body.starts_with("#!") {
                            // A script with its own interpreter runs as a file.
                            let path = format!("{HEREDOC_SCRIPT_DIR}/{}", only.name);
                            files.push((path.clone(), body));
                            shell.clear();
                            path
                        } else {
                            body
                        }
                    }
                    docs => {
                        // The shell handles the heredocs itself.
                        let mut full = cmd.clone();
                        for doc in docs {
                            full.push('\n');
                            full.push_str(&doc.content);
                            full.push_str(&doc.name);
                        }
                        full
                    }
                };
                shell.push(script);
                shell
            }
        };
        let env = self.run_env();
        let created_by = format!("RUN {} # buildkit", self.run_command_string(&args));
        let op = ExecOp {
            base: self.state,
            args,
            env,
            cwd: self.workdir(),
            user: self.config.user.clone().filter(|u| !u.is_empty()),
            network,
            security,
            mounts,
            files,
        };
        let node = self.add_node(inst, Op::Exec(op));
        self.record(inst, created_by, Some(node));
        Ok(())
    }

    /// RUN's environment: the image's ENV, then the stage's ARGs that ENV
    /// does not set, then proxy build args.
    fn run_env(&mut self) -> Vec<String> {
        let mut env: Vec<String> = self.config.env.clone().unwrap_or_default();
        let set = |env: &Vec<String>, k: &str| {
            env.iter()
                .any(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) == k)
        };
        for (k, v) in &self.args {
            if let Some(v) = v
                && !set(&env, k)
            {
                env.push(format!("{k}={v}"));
            }
        }
        for proxy in PROXY_ARGS {
            if let Some(v) = self.shared.options.build_args.get(proxy)
                && !set(&env, proxy)
            {
                self.shared.used_args.insert(proxy.to_string());
                env.push(format!("{proxy}={v}"));
            }
        }
        env
    }

    /// BuildKit's runCommandString: `|N K=V ... argv`, with every ARG of
    /// the stage (ENV's value when ENV sets the same name).
    fn run_command_string(&self, args: &[String]) -> String {
        let mut words: Vec<String> = self
            .args
            .iter()
            .map(|(k, v)| {
                let value = self
                    .config
                    .env_value(k)
                    .map(str::to_string)
                    .or_else(|| v.clone())
                    .unwrap_or_default();
                format!("{k}={value}")
            })
            .collect();
        if !words.is_empty() {
            words.insert(0, format!("|{}", words.len()));
        }
        words.extend(args.iter().cloned());
        words.join(" ")
    }

    fn expose(&mut self, inst: &Instruction, words: &[String]) -> Result<(), CompileError> {
        let mut ports: BTreeMap<String, ()> = BTreeMap::new();
        for w in words {
            let expanded = self
                .shared
                .lexer
                .process_words(w, &self.env())
                .map_err(|e| CompileError::at(inst, ErrorKind::Expansion(e.to_string())))?;
            for word in expanded {
                for port in parse_ports(&word).map_err(|e| invalid(inst, &e))? {
                    ports.insert(port, ());
                }
            }
        }
        let exposed = self.config.exposed_ports.get_or_insert_with(BTreeMap::new);
        for port in ports.keys() {
            exposed.insert(port.clone(), Default::default());
        }
        // Go prints the map with its keys sorted as strings.
        let listed: Vec<String> = ports.keys().map(|p| format!("{p}:{{}}")).collect();
        self.record(inst, format!("EXPOSE map[{}]", listed.join(" ")), None);
        Ok(())
    }

    fn healthcheck(
        &mut self,
        inst: &Instruction,
        health: Option<&Health>,
    ) -> Result<(), CompileError> {
        let config = match health {
            None => HealthConfig {
                test: vec!["NONE".into()],
                ..HealthConfig::default()
            },
            Some(health) => {
                let test = match &health.test {
                    CommandLine::Exec(argv) => std::iter::once("CMD".to_string())
                        .chain(argv.iter().cloned())
                        .collect(),
                    CommandLine::Shell(cmd) => vec!["CMD-SHELL".to_string(), cmd.clone()],
                };
                let duration = |name: &str| -> Result<i64, CompileError> {
                    let Some(value) = health.flags.string(name) else {
                        return Ok(0);
                    };
                    let d = parse_duration(value)
                        .map_err(|e| invalid(inst, &format!("--{name}: {e}")))?;
                    if d != 0 && d < 1_000_000 {
                        return Err(invalid(inst, &format!("--{name} cannot be less than 1ms")));
                    }
                    if d < 0 {
                        return Err(invalid(inst, &format!("--{name} cannot be negative")));
                    }
                    Ok(d)
                };
                let retries = match health.flags.string("retries") {
                    None => 0,
                    Some(r) => r
                        .parse::<i64>()
                        .map_err(|_| invalid(inst, &format!("--retries: invalid number {r:?}")))?,
                };
                if retries < 0 {
                    return Err(invalid(inst, "--retries cannot be negative"));
                }
                HealthConfig {
                    test,
                    interval: duration("interval")?,
                    timeout: duration("timeout")?,
                    start_period: duration("start-period")?,
                    start_interval: duration("start-interval")?,
                    retries,
                }
            }
        };
        // `fmt.Sprintf("HEALTHCHECK %q", health)` in the BuildKit that
        // Docker 20.10 ships: Test, Interval, Timeout, StartPeriod, Retries.
        let created_by = format!(
            "HEALTHCHECK &{{{} {} {} {} {}}}",
            go_quoted_slice(&config.test),
            go_quote(&format_duration(config.interval)),
            go_quote(&format_duration(config.timeout)),
            go_quote(&format_duration(config.start_period)),
            go_quote_rune(config.retries),
        );
        self.config.healthcheck = Some(config);
        self.record(inst, created_by, None);
        Ok(())
    }
}

/// The variables a stage's words see, looked up in place: ENV (the last
/// entry of a name wins), then the stage's ARGs (declared without a value:
/// unset), then `fallback`.
struct StageEnv<'a> {
    env: &'a [String],
    args: &'a [(String, Option<String>)],
    fallback: &'a [(String, String)],
}

impl Env for StageEnv<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        for entry in self.env.iter().rev() {
            let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
            if key == name {
                return Some(value);
            }
        }
        if let Some((_, value)) = self.args.iter().rev().find(|(k, _)| k == name) {
            return value.as_deref();
        }
        Env::get(self.fallback, name)
    }
}

/// Whether a shell-form RUN is nothing but its heredoc (`RUN <<EOF`).
fn is_sole_heredoc(cmd: &str, doc: &Heredoc) -> bool {
    let word = cmd.trim();
    let Some(rest) = word.strip_prefix("<<") else {
        return false;
    };
    rest.trim_start_matches('-')
        .trim_matches(|c| c == '"' || c == '\'')
        == doc.name
}

/// Validates a `--mount` spec's type and option names.
fn check_mount(inst: &Instruction, spec: &str) -> Result<(), CompileError> {
    let kind = mount_option(spec, "type").unwrap_or_else(|| "bind".into());
    let allowed: &[&str] = match kind.as_str() {
        "bind" => &[
            "type",
            "target",
            "dst",
            "destination",
            "source",
            "src",
            "from",
            "readonly",
            "ro",
            "rw",
            "readwrite",
        ],
        "cache" => &[
            "type",
            "id",
            "target",
            "dst",
            "destination",
            "sharing",
            "from",
            "source",
            "src",
            "mode",
            "uid",
            "gid",
            "readonly",
            "ro",
            "rw",
            "readwrite",
        ],
        "tmpfs" => &["type", "target", "dst", "destination", "size"],
        "secret" => &[
            "type",
            "id",
            "target",
            "dst",
            "destination",
            "env",
            "required",
            "mode",
            "uid",
            "gid",
        ],
        "ssh" => &[
            "type",
            "id",
            "target",
            "dst",
            "destination",
            "required",
            "mode",
            "uid",
            "gid",
        ],
        other => return Err(invalid(inst, &format!("unsupported mount type {other:?}"))),
    };
    for field in spec.split(',') {
        let key = field.split_once('=').map_or(field, |(k, _)| k).trim();
        if !allowed.contains(&key.to_ascii_lowercase().as_str()) {
            return Err(invalid(
                inst,
                &format!("unexpected key {key:?} in --mount={spec}"),
            ));
        }
    }
    let needs_target = !matches!(kind.as_str(), "secret" | "ssh");
    let has_target = ["target", "dst", "destination"]
        .iter()
        .any(|k| mount_option(spec, k).is_some_and(|v| !v.is_empty()));
    if needs_target && !has_target {
        return Err(invalid(
            inst,
            &format!("--mount={spec}: a mount target is required"),
        ));
    }
    Ok(())
}

fn invalid(inst: &Instruction, message: &str) -> CompileError {
    CompileError::at(inst, ErrorKind::Invalid(message.to_string()))
}

/// `dest` relative to `workdir` unless absolute; a trailing `/` is kept.
fn absolute(workdir: &str, dest: &str) -> String {
    if dest.starts_with('/') {
        dest.to_string()
    } else if workdir.ends_with('/') {
        format!("{workdir}{dest}")
    } else {
        format!("{workdir}/{dest}")
    }
}

/// Go's `fmt.Sprintf("%q", []string{...})`: `["a" "b"]`.
fn go_quoted_slice(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}
