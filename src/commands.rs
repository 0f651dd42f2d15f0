//! The image commands: images, rmi, tag, save, load, inspect.

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail};
use rbuild_export::{ImageRef, Target, import, import_reader, load_image, write_docker_archive};
use rbuild_oci::{BlobStore, Reference, time::parse_rfc3339};
use rbuild_solver::{ImageRecord, Root};

use crate::cli::ImagesArgs;

/// The records an argument names: a reference, or an image ID (prefix).
fn find(root: &Root, arg: &str) -> Result<Vec<ImageRecord>> {
    let records = root.images.list()?;
    let hex = arg.strip_prefix("sha256:").unwrap_or(arg);
    if !hex.is_empty()
        && hex.len() <= 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        let by_id: Vec<ImageRecord> = records
            .iter()
            .filter(|r| r.config.hex().starts_with(hex))
            .cloned()
            .collect();
        if !by_id.is_empty() {
            return Ok(by_id);
        }
    }
    let reference = Reference::parse(arg).map_err(|e| anyhow!("{arg}: {e}"))?;
    Ok(records
        .into_iter()
        .filter(|r| r.name == reference)
        .collect())
}

pub(crate) fn find_one(root: &Root, arg: &str) -> Result<ImageRecord> {
    let mut found = find(root, arg)?;
    match found.len() {
        0 => bail!("no such image: {arg}"),
        _ => {
            // Several names of one image are fine; several images are not.
            let first = found.remove(0);
            if found.iter().any(|r| r.config != first.config) {
                bail!("{arg} is ambiguous: it names more than one image");
            }
            Ok(first)
        }
    }
}

pub fn images(root: &Root, args: &ImagesArgs) -> Result<()> {
    let filter = args
        .repository
        .as_deref()
        .map(|r| Reference::parse_name_only(r).map_err(|e| anyhow!("{r}: {e}")))
        .transpose()?;
    let records: Vec<ImageRecord> = root
        .images
        .list()?
        .into_iter()
        .filter(|r| match &filter {
            None => true,
            Some(f) => {
                r.name.repository() == f.repository()
                    && f.tag().is_none_or(|t| r.name.tag() == Some(t))
            }
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if args.quiet {
        let mut seen = std::collections::BTreeSet::new();
        for r in &records {
            if seen.insert(r.config) {
                writeln!(
                    out,
                    "{}",
                    if args.no_trunc {
                        r.config.to_string()
                    } else {
                        r.config.short()
                    }
                )?;
            }
        }
        return Ok(());
    }
    let now = SystemTime::now();
    let rows: Vec<[String; 5]> = records
        .iter()
        .map(|r| {
            [
                r.name.familiar_repository(),
                r.name.tag().unwrap_or("<none>").to_string(),
                if args.no_trunc {
                    r.config.to_string()
                } else {
                    r.config.short()
                },
                r.created
                    .as_deref()
                    .and_then(parse_rfc3339)
                    .map(|t| ago(now, t))
                    .unwrap_or_else(|| "N/A".into()),
                human_size(r.size),
            ]
        })
        .collect();
    let header = ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 5]| -> String {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == 4 {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        s
    };
    writeln!(out, "{}", line(header))?;
    for row in &rows {
        writeln!(
            out,
            "{}",
            line([&row[0], &row[1], &row[2], &row[3], &row[4]])
        )?;
    }
    Ok(())
}

pub fn rmi(root: &Root, images: &[String]) -> Result<()> {
    let mut failed = false;
    for arg in images {
        let found = find(root, arg)?;
        if found.is_empty() {
            eprintln!("error: no such image: {arg}");
            failed = true;
            continue;
        }
        for record in found {
            root.images.remove(&record.name)?;
            println!("Untagged: {}", record.name.familiar());
        }
    }
    if failed {
        bail!("some images could not be removed");
    }
    Ok(())
}

pub fn tag(root: &Root, source: &str, target: &str) -> Result<()> {
    let record = find_one(root, source)?;
    let name = Reference::parse(target).map_err(|e| anyhow!("invalid tag {target:?}: {e}"))?;
    root.images.put(ImageRecord { name, ..record })?;
    Ok(())
}

pub fn save(root: &Root, output: Option<&Path>, images: &[String]) -> Result<()> {
    // Names of one image are grouped so its blobs are written once.
    let mut refs: Vec<ImageRef> = Vec::new();
    for arg in images {
        let record = find_one(root, arg)?;
        let is_id = Reference::parse(arg)
            .map(|r| r != record.name)
            .unwrap_or(true);
        let names = if is_id {
            Vec::new()
        } else {
            vec![record.name.clone()]
        };
        match refs
            .iter_mut()
            .find(|r| r.manifest_descriptor.digest == record.manifest.digest)
        {
            Some(existing) => existing.names.extend(names),
            None => refs.push(load_image(&root.content, record.manifest.clone(), names)?),
        }
    }
    let target = match output {
        Some(p) => Target::Tar(p.to_path_buf()),
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                bail!(
                    "refusing to write a tarball to a terminal: use -o FILE or redirect standard output"
                );
            }
            Target::Stdout
        }
    };
    write_docker_archive(&root.content, &refs, &target)?;
    Ok(())
}

pub fn load(root: &Root, input: Option<&Path>, quiet: bool) -> Result<()> {
    let imported = match input {
        Some(path) => {
            import(&root.content, path).with_context(|| format!("loading {}", path.display()))?
        }
        None => import_reader(&root.content, std::io::stdin().lock())
            .context("loading from standard input")?,
    };
    for image in imported {
        let size = image.manifest_size_sum(&root.content);
        match image.name {
            Some(name) => {
                root.images.put(ImageRecord {
                    name: name.clone(),
                    manifest: image.manifest.clone(),
                    config: image.config_digest,
                    created: image.config.created.clone(),
                    size,
                })?;
                println!(
                    "{}{}",
                    if quiet { "" } else { "Loaded image: " },
                    name.familiar()
                );
            }
            None => println!(
                "{}{}",
                if quiet { "" } else { "Loaded image ID: " },
                image.config_digest
            ),
        }
    }
    Ok(())
}

pub fn inspect(root: &Root, images: &[String]) -> Result<()> {
    let mut configs = Vec::new();
    for arg in images {
        let record = find_one(root, arg)?;
        let bytes = root.content.read_all(&record.config)?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).with_context(|| format!("image config of {arg}"))?;
        configs.push(value);
    }
    println!("{}", serde_json::to_string_pretty(&configs)?);
    Ok(())
}

/// Human-readable age, as docker prints it.
pub(crate) fn ago(now: SystemTime, then: SystemTime) -> String {
    let secs = now.duration_since(then).map(|d| d.as_secs()).unwrap_or(0);
    let (n, unit) = match secs {
        0 => return "Less than a second ago".into(),
        s if s < 60 => (s, "second"),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3600, "hour"),
        s if s < 86_400 * 14 => (s / 86_400, "day"),
        s if s < 86_400 * 60 => (s / (86_400 * 7), "week"),
        s if s < 86_400 * 365 * 2 => (s / (86_400 * 30), "month"),
        s => (s / (86_400 * 365), "year"),
    };
    if n == 1 {
        let article = if unit == "hour" { "An" } else { "A" };
        format!("{article} {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}

/// Decimal sizes with three significant digits, like docker (`1.99MB`).
pub(crate) fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit < units.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    let digits = if size >= 100.0 {
        0
    } else if size >= 10.0 {
        1
    } else {
        2
    };
    let rounded = format!("{size:.digits$}");
    let trimmed = if rounded.contains('.') {
        rounded
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        rounded
    };
    format!("{trimmed}{}", units[unit])
}

trait ImportedSize {
    fn manifest_size_sum(&self, store: &dyn BlobStore) -> u64;
}

impl ImportedSize for rbuild_export::Imported {
    fn manifest_size_sum(&self, store: &dyn BlobStore) -> u64 {
        load_image(store, self.manifest.clone(), Vec::new())
            .map(|i| i.manifest.layers.iter().map(|l| l.size).sum())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_docker() {
        assert_eq!(human_size(6), "6B");
        assert_eq!(human_size(1_990_000), "1.99MB");
        assert_eq!(human_size(12_345), "12.3kB");
        assert_eq!(human_size(123_456_789), "123MB");
    }
}
