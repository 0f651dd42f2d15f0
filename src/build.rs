//! `rbuild build`: read the Dockerfile, compile, build, export.

use anyhow::{Context, Result, anyhow, bail};
use rbuild_export::{
    ImageRef, Target, load_image, write_docker_archive, write_oci_layout, write_rootfs_dir,
    write_rootfs_tar,
};
use rbuild_oci::{Descriptor, Reference};
use rbuild_solver::{BuildOptions, BuiltImage, CachePolicy, Executor, ImageRecord, Root, build};
use serde_json::json;

use crate::cli::BuildArgs;
use crate::config::Config;
use crate::output::{Dest, Output};
use crate::prepare::{Bases, prepare, report};

pub fn run(root: &Root, args: BuildArgs, config: &Config) -> Result<()> {
    if args.check {
        return crate::check::run(root, &args);
    }
    let context = &args.context;
    let tags: Vec<Reference> = args
        .tags
        .iter()
        .map(|t| Reference::parse(t).map_err(|e| anyhow!("invalid tag {t:?}: {e}")))
        .collect::<Result<_>>()?;
    let mut outputs: Vec<Output> = args
        .outputs
        .iter()
        .map(|o| Output::parse(o))
        .collect::<Result<_>>()?;
    // --push is --output type=registry: it pushes the image output.
    let has_image = outputs.iter().any(|o| matches!(o, Output::Image { .. }));
    if has_image {
        for output in &mut outputs {
            if let Output::Image { push, .. } = output {
                *push |= args.push;
            }
        }
    } else if args.push || (outputs.is_empty() && !args.load) {
        outputs.push(Output::Image {
            names: Vec::new(),
            push: args.push,
            layers: crate::output::registry_default(),
        });
    }
    for output in &outputs {
        if let Output::Image {
            names, push: true, ..
        } = output
            && names.is_empty()
            && tags.is_empty()
        {
            bail!("pushing needs an image name: give -t NAME (or name= in --output)");
        }
    }
    if args.load {
        // Before building: a missing CLI or engine should not cost a build.
        docker_cli(
            &["version", "--format", "{{.Server.Version}}"],
            "the Docker engine did not answer",
        )?;
    }
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
    // Held until the image is named: until then its blobs (pulled bases
    // included) are unreferenced and a concurrent prune must not take them.
    let guard = rbuild_solver::gc::build_guard(root).context("locking the root")?;
    // Read while the Dockerfile and the context are.
    root.open_metadata_early();
    let cache_imports: Vec<rbuild_solver::CacheImport> = args
        .cache_from
        .iter()
        .map(|s| rbuild_solver::CacheImport::parse(s))
        .collect::<Result<_, _>>()?;
    let prepared = prepare(root, &args, Bases::Pull(config))?;
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
    // -q is --progress=quiet.
    let mode = match args.quiet {
        true => crate::progress::Mode::Quiet,
        false => args.progress,
    };
    let progress = crate::progress::Progress::new(mode, args.explain_cache);
    let init =
        std::env::current_exe().context("finding the rbuild executable for RUN containers")?;
    let executor = Executor {
        init,
        snapshots: root.path().join("snapshots"),
        isolate_network: args.network == "none",
        cache_mounts: root.path().join("cache-mounts"),
        secrets,
        ssh,
    };
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let options = BuildOptions {
        context: context.clone(),
        // Created by the build when a step first needs it.
        scratch: root.tmp_path(),
        source_date_epoch,
        executor: Some(executor),
        // RUN --mount=type=bind from the context leaves out what COPY does.
        context_excludes: prepared.context_excludes.clone(),
        progress: Some(progress.sink()),
        cache: CachePolicy {
            disabled: args.no_cache,
            disabled_stages: args.no_cache_filter.clone(),
        },
        jobs,
        cache_imports: crate::registry::open_cache_imports(root, config, &cache_imports)?,
        cache_exports: args
            .cache_to
            .iter()
            .map(|s| rbuild_solver::CacheExport::parse(s))
            .collect::<Result<_, _>>()?,
        scope: format!(
            "{}\0{}",
            std::fs::canonicalize(context)
                .unwrap_or_else(|_| context.clone())
                .display(),
            dockerfile_name
        ),
    };
    let built = match build(plan, root, options) {
        Ok(built) => built,
        Err(e) => {
            progress.finish(true);
            return Err(match e.line() {
                Some(line) => anyhow!(
                    "{dockerfile_name}:{line}: {}",
                    e.to_string().trim_start_matches(&format!("line {line}: "))
                ),
                None => anyhow!("{e}"),
            });
        }
    };

    // What an export or push wrote, with its layers compressed: its
    // manifest is what --metadata-file reports, as BuildKit's does.
    let mut exported = None;
    for output in &outputs {
        if let Some(manifest) = export(root, &built, &tags, output, &progress, config)? {
            exported.get_or_insert(manifest);
        }
    }
    if args.load {
        load_into_docker(root, &built, &tags, &progress)?;
    }
    for report in crate::registry::push_caches(root, config, &built.cache_manifests)? {
        for (name, digest, _) in &report.pushed {
            progress.message(&format!("exporting cache to {name} done: {digest}"));
        }
    }
    progress.message(&format!("writing image {} done", built.config_digest));
    progress.finish(false);
    let image_id = built.config_digest.to_string();
    if let Some(path) = &args.iidfile {
        std::fs::write(path, &image_id)
            .with_context(|| format!("writing --iidfile {}", path.display()))?;
    }
    if let Some(path) = &args.metadata_file {
        let names: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        let manifest = exported.as_ref().unwrap_or(&built.manifest);
        let mut metadata = json!({
            "containerimage.config.digest": image_id,
            "containerimage.digest": manifest.digest.to_string(),
            "containerimage.descriptor": manifest,
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
    }
    // The cap applies once this image is named; another build still
    // running skips it and the last one to finish applies it.
    if let Err(e) = guard.finish(root, &config.gc) {
        eprintln!("warning: build cache garbage collection: {e}");
    }
    Ok(())
}

fn export(
    root: &Root,
    built: &BuiltImage,
    tags: &[Reference],
    output: &Output,
    progress: &crate::progress::Progress,
    config: &Config,
) -> Result<Option<Descriptor>> {
    let mut exported = None;
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
        Output::Image {
            names,
            push,
            layers,
        } => {
            let names = with_names(names)?;
            let size = image(Vec::new())?
                .manifest
                .layers
                .iter()
                .map(|l| l.size)
                .sum();
            for name in &names {
                root.images.put(ImageRecord {
                    name: name.clone(),
                    manifest: built.manifest.clone(),
                    config: built.config_digest,
                    created: built.config.created.clone(),
                    size,
                })?;
                progress.message(&format!("naming to {name} done"));
            }
            if *push {
                let registry = crate::registry::client(config)?;
                let report =
                    crate::registry::push(root, &registry, &built.manifest, &names, *layers)
                        .with_context(|| {
                            format!(
                                "pushing {}",
                                names
                                    .iter()
                                    .map(|n| n.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        })?;
                for (name, digest, size) in &report.pushed {
                    progress.message(&format!("pushing {name} done: {digest}"));
                    exported = Some(Descriptor::new(
                        rbuild_oci::media_type::OCI_MANIFEST,
                        *digest,
                        *size,
                    ));
                }
                progress.message(&crate::registry::summary(&report));
            }
        }
        Output::Docker {
            dest,
            names,
            layers,
        } => {
            let image = crate::layers::convert(root, &image(with_names(names)?)?, *layers)?;
            exported = Some(image.manifest_descriptor.clone());
            write_docker_archive(&root.content, &[image], &target(dest))?;
            say_exported(progress, "docker archive", dest);
        }
        Output::Oci {
            dest,
            tar,
            names,
            layers,
        } => {
            let target = match (tar, dest) {
                (false, Dest::Path(p)) => Target::Directory(p.clone()),
                _ => target(dest),
            };
            let image = crate::layers::convert(root, &image(with_names(names)?)?, *layers)?;
            exported = Some(image.manifest_descriptor.clone());
            write_oci_layout(&root.content, &[image], &target)?;
            say_exported(progress, "OCI layout", dest);
        }
        Output::Local { dest } => {
            write_rootfs_dir(&root.content, &image(Vec::new())?, dest)?;
            say_exported(progress, "root filesystem", &Dest::Path(dest.clone()));
        }
        Output::Tar { dest } => {
            write_rootfs_tar(
                &root.content,
                &image(Vec::new())?,
                &target(dest),
                &root.tmp_dir()?,
            )?;
            say_exported(progress, "root filesystem tarball", dest);
        }
    }
    Ok(exported)
}

fn say_exported(progress: &crate::progress::Progress, what: &str, dest: &Dest) {
    match dest {
        Dest::Path(p) => progress.message(&format!("exporting {what} to {} done", p.display())),
        Dest::Stdout => progress.message(&format!("exporting {what} to standard output done")),
    }
}

/// `--load`: the image, with the `-t` names, as a docker-save tarball in
/// the root's scratch directory, loaded with `docker load` (the archive
/// writer has no target for a pipe).
fn load_into_docker(
    root: &Root,
    built: &BuiltImage,
    tags: &[Reference],
    progress: &crate::progress::Progress,
) -> Result<()> {
    let image = load_image(&root.content, built.manifest.clone(), tags.to_vec())?;
    let file = root
        .tmp_dir()?
        .join(format!("docker-load-{}.tar", built.config_digest.short()));
    write_docker_archive(&root.content, &[image], &Target::Tar(file.clone()))
        .context("--load: writing the docker archive")?;
    let file_arg = file.to_string_lossy();
    let loaded = docker_cli(
        &["load", "-q", "-i", &file_arg],
        "loading the image into Docker failed",
    );
    let _ = std::fs::remove_file(&file);
    for line in loaded?.lines().map(str::trim).filter(|l| !l.is_empty()) {
        progress.message(line);
    }
    Ok(())
}

/// Runs the docker CLI found on PATH (so DOCKER_HOST, DOCKER_CONTEXT and
/// its config apply as for the user) and returns its standard output; a
/// failure carries `what`, docker's exit status and its standard error.
fn docker_cli(args: &[&str], what: &str) -> Result<String> {
    let out = std::process::Command::new("docker")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                anyhow!("--load needs the docker CLI, and there is no `docker` on PATH")
            }
            _ => anyhow!("--load: running docker: {e}"),
        })?;
    if !out.status.success() {
        bail!(
            "--load: {what}: `docker {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
