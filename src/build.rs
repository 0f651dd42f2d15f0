//! `rbuild build`: read the Dockerfile, compile, build, export.

use anyhow::{Context, Result, anyhow};
use rbuild_export::{
    ImageRef, Target, load_image, write_docker_archive, write_oci_layout, write_rootfs_dir,
    write_rootfs_tar,
};
use rbuild_oci::Reference;
use rbuild_solver::{BuildOptions, BuiltImage, Executor, ImageRecord, Root, StepStarted, build};
use serde_json::json;

use crate::cli::BuildArgs;
use crate::output::{Dest, Output};
use crate::prepare::{Bases, prepare, report};

pub fn run(root: &Root, args: BuildArgs) -> Result<()> {
    if args.check {
        return crate::check::run(root, &args);
    }
    let context = &args.context;
    let tags: Vec<Reference> = args
        .tags
        .iter()
        .map(|t| Reference::parse(t).map_err(|e| anyhow!("invalid tag {t:?}: {e}")))
        .collect::<Result<_>>()?;
    let outputs: Vec<Output> = if args.outputs.is_empty() {
        vec![Output::Image { names: Vec::new() }]
    } else {
        args.outputs
            .iter()
            .map(|o| Output::parse(o))
            .collect::<Result<_>>()?
    };
    let mut secrets = std::collections::HashMap::new();
    for spec in &args.secrets {
        let (id, source) = rbuild_solver::SecretSource::parse(spec).map_err(|e| anyhow!(e))?;
        secrets.insert(id, source);
    }
    let mut ssh = std::collections::HashMap::new();
    for spec in &args.ssh {
        let (id, socket) = rbuild_solver::parse_ssh(spec).map_err(|e| anyhow!(e))?;
        ssh.insert(id, socket);
    }
    let prepared = prepare(root, &args, Bases::Required)?;
    let (dockerfile_name, plan) = (&prepared.dockerfile_name, &prepared.plan);
    // Warnings go to stderr even with -q, which keeps stdout for the ID.
    report(&prepared)?;

    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => Some(
            v.parse::<u64>()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
        ),
        _ => None,
    };
    // RUN output goes to stderr line by line as it comes, each line marked
    // with its Dockerfile line; with -q it is kept and shown only if the
    // build fails.
    let log = RunLog::new(args.quiet);
    let output = |line: usize, stream: u8, bytes: &[u8]| log.write(line, stream, bytes);
    let init =
        std::env::current_exe().context("finding the rbuild executable for RUN containers")?;
    let snapshots = root.path().join("snapshots");
    let cache_mounts = root.path().join("cache-mounts");
    let executor = Executor {
        init: &init,
        snapshots: &snapshots,
        output: &output,
        isolate_network: args.network == "none",
        cache_mounts: &cache_mounts,
        secrets: &secrets,
        ssh: &ssh,
    };
    let options = BuildOptions {
        context,
        scratch: &root.tmp_dir(),
        source_date_epoch,
        executor: Some(executor),
        // RUN --mount=type=bind from the context leaves out what COPY does.
        context_excludes: &prepared.context_excludes,
        on_step: (!args.quiet).then_some(&print_step as &dyn Fn(&StepStarted<'_>)),
    };
    let result = build(plan, &root.content, &options);
    log.finish(result.is_err());
    let built = result.map_err(|e| match e.line() {
        Some(line) => anyhow!(
            "{dockerfile_name}:{line}: {}",
            e.to_string().trim_start_matches(&format!("line {line}: "))
        ),
        None => anyhow!("{e}"),
    })?;

    for output in &outputs {
        export(root, &built, &tags, output, args.quiet)?;
    }
    let image_id = built.config_digest.to_string();
    if let Some(path) = &args.iidfile {
        std::fs::write(path, &image_id)
            .with_context(|| format!("writing --iidfile {}", path.display()))?;
    }
    if let Some(path) = &args.metadata_file {
        let names: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        let mut metadata = json!({
            "containerimage.config.digest": image_id,
            "containerimage.digest": built.manifest.digest.to_string(),
            "containerimage.descriptor": built.manifest,
        });
        if !names.is_empty() {
            metadata["image.name"] = json!(names.join(","));
        }
        let text = serde_json::to_string_pretty(&metadata)?;
        std::fs::write(path, text)
            .with_context(|| format!("writing --metadata-file {}", path.display()))?;
    }
    if args.quiet {
        println!("{image_id}");
    } else {
        eprintln!("writing image {image_id} done");
    }
    Ok(())
}

fn export(
    root: &Root,
    built: &BuiltImage,
    tags: &[Reference],
    output: &Output,
    quiet: bool,
) -> Result<()> {
    let with_names = |extra: &[String]| -> Result<Vec<Reference>> {
        let mut names = tags.to_vec();
        for n in extra {
            names.push(Reference::parse(n).map_err(|e| anyhow!("invalid image name {n:?}: {e}"))?);
        }
        Ok(names)
    };
    let image = |names: Vec<Reference>| -> Result<ImageRef> {
        Ok(load_image(&root.content, built.manifest.clone(), names)?)
    };
    let target = |dest: &Dest| match dest {
        Dest::Path(p) => Target::Tar(p.clone()),
        Dest::Stdout => Target::Stdout,
    };
    match output {
        Output::Image { names } => {
            let names = with_names(names)?;
            let size = image(Vec::new())?
                .manifest
                .layers
                .iter()
                .map(|l| l.size)
                .sum();
            for name in names {
                root.images.put(ImageRecord {
                    name: name.clone(),
                    manifest: built.manifest.clone(),
                    config: built.config_digest,
                    created: built.config.created.clone(),
                    size,
                })?;
                if !quiet {
                    eprintln!("naming to {name} done");
                }
            }
        }
        Output::Docker { dest, names } => {
            write_docker_archive(&root.content, &[image(with_names(names)?)?], &target(dest))?;
            say_exported(quiet, "docker archive", dest);
        }
        Output::Oci { dest, tar, names } => {
            let target = match (tar, dest) {
                (false, Dest::Path(p)) => Target::Directory(p.clone()),
                _ => target(dest),
            };
            write_oci_layout(&root.content, &[image(with_names(names)?)?], &target)?;
            say_exported(quiet, "OCI layout", dest);
        }
        Output::Local { dest } => {
            write_rootfs_dir(&root.content, &image(Vec::new())?, dest)?;
            say_exported(quiet, "root filesystem", &Dest::Path(dest.clone()));
        }
        Output::Tar { dest } => {
            write_rootfs_tar(
                &root.content,
                &image(Vec::new())?,
                &target(dest),
                &root.tmp_dir(),
            )?;
            say_exported(quiet, "root filesystem tarball", dest);
        }
    }
    Ok(())
}

fn say_exported(quiet: bool, what: &str, dest: &Dest) {
    if quiet {
        return;
    }
    match dest {
        Dest::Path(p) => eprintln!("exporting {what} to {} done", p.display()),
        Dest::Stdout => eprintln!("exporting {what} to standard output done"),
    }
}

/// RUN output, printed whole lines at a time as `#LINE text`.
struct RunLog {
    quiet: bool,
    /// Unfinished lines, per Dockerfile line and stream.
    pending: std::cell::RefCell<std::collections::BTreeMap<(usize, u8), Vec<u8>>>,
    /// With -q: the last lines, shown if the build fails.
    held: std::cell::RefCell<std::collections::VecDeque<String>>,
}

impl RunLog {
    /// Lines kept for a failing quiet build.
    const HELD_LINES: usize = 20;

    fn new(quiet: bool) -> RunLog {
        RunLog {
            quiet,
            pending: Default::default(),
            held: Default::default(),
        }
    }

    fn write(&self, line: usize, stream: u8, bytes: &[u8]) {
        let mut pending = self.pending.borrow_mut();
        let buf = pending.entry((line, stream)).or_default();
        buf.extend_from_slice(bytes);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let text: Vec<u8> = buf.drain(..=end).collect();
            self.emit(line, &String::from_utf8_lossy(&text[..end]));
        }
    }

    fn emit(&self, line: usize, text: &str) {
        let text = format!("#{line} {text}");
        if self.quiet {
            let mut held = self.held.borrow_mut();
            if held.len() == Self::HELD_LINES {
                held.pop_front();
            }
            held.push_back(text);
        } else {
            eprintln!("{text}");
        }
    }

    /// Prints unfinished lines, and a quiet build's output if it failed.
    fn finish(&self, failed: bool) {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        for ((line, _), rest) in pending {
            if !rest.is_empty() {
                self.emit(line, &String::from_utf8_lossy(&rest));
            }
        }
        if self.quiet && failed {
            for text in self.held.borrow().iter() {
                eprintln!("{text}");
            }
        }
    }
}

/// Prints a step as it starts: `#LINE [stage i/n] INSTRUCTION`, numbered
/// by its Dockerfile line as its RUN output is.
fn print_step(step: &StepStarted<'_>) {
    let stage = step.stage.unwrap_or("stage");
    let what = step.created_by.trim_end_matches(" # buildkit");
    eprintln!(
        "#{} [{stage} {}/{}] {what}",
        step.line, step.index, step.total
    );
}
