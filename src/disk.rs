//! `rbuild du` and `rbuild prune`: the build cache's disk usage and its
//! garbage collection, as `docker buildx du` and `docker builder prune`.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::commands::{ago, human_size};
use anyhow::{Result, anyhow, bail};
use clap::Args;
use rbuild_solver::Root;
use rbuild_solver::gc::{self, PruneOptions, Pruned, Usage};

#[derive(Debug, Args)]
pub struct DuArgs {
    /// List every cache record
    #[arg(short, long)]
    pub verbose: bool,
    /// Output format: table, or json (every number in bytes and unix seconds)
    #[arg(long, value_name = "FORMAT", default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Remove all build cache (records and cache mounts too), not just what nothing uses
    #[arg(short, long)]
    pub all: bool,
    /// Keep this much build cache, removing the least recently used first (e.g. 10GB)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub keep_storage: Option<u64>,
    /// Filter what is removed: until=DURATION (only what has not been used for that long, e.g. 24h)
    #[arg(long = "filter", value_name = "FILTER")]
    pub filters: Vec<String>,
    /// Do not prompt for confirmation (rbuild never prompts; for docker compatibility)
    #[arg(short, long)]
    pub force: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    gc::parse_size(s)
}

pub fn du(root: &Root, args: &DuArgs) -> Result<()> {
    let usage = gc::usage(root)?;
    for w in &usage.warnings {
        eprintln!("warning: {w}");
    }
    let mut out = std::io::stdout().lock();
    if args.format == "json" {
        serde_json::to_writer_pretty(&mut out, &usage)?;
        writeln!(out)?;
        return Ok(());
    }
    out.write_all(render_usage(&usage, args.verbose, SystemTime::now()).as_bytes())?;
    Ok(())
}

pub fn prune(root: &Root, args: &PruneArgs) -> Result<()> {
    let mut until = None;
    for filter in &args.filters {
        let (key, value) = filter
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid --filter {filter:?}: expected KEY=VALUE"))?;
        match key.trim().to_ascii_lowercase().as_str() {
            "until" | "unused-for" => {
                until = Some(gc::parse_duration(value).map_err(|e| anyhow!("--filter {e}"))?)
            }
            other => bail!("unsupported --filter {other:?} (rbuild supports until=DURATION)"),
        }
    }
    let opts = PruneOptions {
        all: args.all,
        keep_storage: args.keep_storage,
        until,
    };
    if gc::is_busy(root).unwrap_or(false) {
        eprintln!("waiting for running builds to finish...");
    }
    let pruned = gc::prune(root, &opts)?;
    for w in &pruned.warnings {
        eprintln!("warning: {w}");
    }
    std::io::stdout()
        .lock()
        .write_all(render_pruned(&pruned).as_bytes())?;
    Ok(())
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn render_usage(u: &Usage, verbose: bool, now: SystemTime) -> String {
    let mut s = String::new();
    if verbose {
        let rows: Vec<[String; 4]> = u
            .records
            .iter()
            .map(|r| {
                [
                    r.key.short(),
                    (!r.shared).to_string(),
                    human_size(r.size),
                    ago(now, UNIX_EPOCH + Duration::from_secs(r.last_used)),
                ]
            })
            .collect();
        s += &table(["ID", "RECLAIMABLE", "SIZE", "LAST ACCESSED"], &rows);
        s.push('\n');
    }
    let t = &u.totals;
    let lines: Vec<[String; 3]> = vec![
        [
            "Cache records:".into(),
            human_size(t.cache_records.size),
            plural(t.cache_records.count, "record", "records"),
        ],
        [
            "Orphan blobs:".into(),
            human_size(t.orphan_blobs.size),
            plural(t.orphan_blobs.count, "blob", "blobs"),
        ],
        [
            "Snapshots:".into(),
            human_size(t.snapshots.size),
            plural(t.snapshots.count, "unpacked layer", "unpacked layers"),
        ],
        [
            "Cache mounts:".into(),
            human_size(t.cache_mounts.size),
            plural(t.cache_mounts.count, "cache mount", "cache mounts"),
        ],
        [
            "Shared:".into(),
            human_size(t.shared.size),
            format!(
                "{} also in images, not reclaimable",
                plural(t.shared.count, "blob", "blobs")
            ),
        ],
        [
            "Reclaimable:".into(),
            human_size(t.reclaimable),
            String::new(),
        ],
        ["Total:".into(), human_size(t.total), String::new()],
        [
            "Images:".into(),
            human_size(t.images.size),
            format!(
                "{}, not build cache",
                plural(t.images.count, "image name", "image names")
            ),
        ],
    ];
    let w0 = lines.iter().map(|l| l[0].len()).max().unwrap_or(0);
    let w1 = lines.iter().map(|l| l[1].len()).max().unwrap_or(0);
    for [label, size, note] in &lines {
        let line = format!("{label:<w0$}  {size:<w1$}  {note}");
        s += line.trim_end();
        s.push('\n');
    }
    s
}

fn render_pruned(p: &Pruned) -> String {
    let mut s = String::new();
    let mut objects: Vec<String> = Vec::new();
    objects.extend(
        p.records
            .iter()
            .map(|r| format!("{} (cache record)", r.key.short())),
    );
    objects.extend(
        p.snapshots
            .iter()
            .map(|x| format!("{} (snapshot)", x.diff_id.short())),
    );
    objects.extend(p.cache_mounts.iter().map(|m| {
        let mut id = m.id.clone();
        id.truncate(12);
        format!("{id} (cache mount)")
    }));
    if !objects.is_empty() || p.blobs.count > 0 || p.lock_files > 0 {
        if !objects.is_empty() {
            s += "Deleted build cache objects:\n";
        }
        for o in &objects {
            s += o;
            s.push('\n');
        }
        let mut parts = Vec::new();
        if p.blobs.count > 0 {
            parts.push(format!(
                "{} ({})",
                plural(p.blobs.count, "blob", "blobs"),
                human_size(p.blobs.size)
            ));
        }
        if !p.snapshots.is_empty() {
            let size = p.snapshots.iter().map(|x| x.size).sum();
            parts.push(format!(
                "{} ({})",
                plural(p.snapshots.len() as u64, "snapshot", "snapshots"),
                human_size(size)
            ));
        }
        if !p.cache_mounts.is_empty() {
            let size = p.cache_mounts.iter().map(|x| x.size).sum();
            parts.push(format!(
                "{} ({})",
                plural(p.cache_mounts.len() as u64, "cache mount", "cache mounts"),
                human_size(size)
            ));
        }
        if p.lock_files > 0 {
            parts.push(plural(p.lock_files, "lock file", "lock files"));
        }
        if !parts.is_empty() {
            s += &format!("Removed {}\n", parts.join(", "));
        }
        s.push('\n');
    }
    s += &format!("Total:\t{}\n", human_size(p.total()));
    s
}

fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; N]| -> String {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                s += cell;
            } else {
                s += &format!("{cell:<w$}   ");
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut s = line(header);
    for row in rows {
        s += &line(row.each_ref().map(String::as_str));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbuild_oci::Digest;
    use rbuild_solver::gc::{Category, RecordUsage, SnapshotUsage, Totals};

    #[test]
    fn usage_table_and_totals() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let u = Usage {
            records: vec![RecordUsage {
                key: Digest::of(b"k"),
                size: 4_190_000,
                created: 999_000,
                last_used: 999_880,
                shared: false,
                complete: true,
            }],
            totals: Totals {
                cache_records: Category {
                    count: 1,
                    size: 4_190_000,
                },
                orphan_blobs: Category {
                    count: 2,
                    size: 512,
                },
                reclaimable: 4_190_512,
                total: 4_190_512,
                ..Totals::default()
            },
            ..Usage::default()
        };
        let text = render_usage(&u, true, now);
        let key = Digest::of(b"k").short();
        assert!(
            text.starts_with(&format!(
                "ID             RECLAIMABLE   SIZE     LAST ACCESSED\n{key}   true          4.19MB   2 minutes ago\n\n"
            )),
            "{text}"
        );
        assert!(
            text.contains("Cache records:  4.19MB  1 record\n"),
            "{text}"
        );
        assert!(text.contains("Orphan blobs:   512B    2 blobs\n"), "{text}");
        assert!(text.contains("Reclaimable:    4.19MB\n"), "{text}");
        assert!(text.contains("Total:          4.19MB\n"), "{text}");
        assert!(!render_usage(&u, false, now).contains("RECLAIMABLE"));
    }

    #[test]
    fn pruned_summary() {
        assert_eq!(render_pruned(&Pruned::default()), "Total:\t0B\n");
        let p = Pruned {
            blobs: Category {
                count: 3,
                size: 2_000_000,
            },
            snapshots: vec![SnapshotUsage {
                diff_id: Digest::of(b"s"),
                size: 1_000_000,
                last_used: 0,
            }],
            lock_files: 1,
            ..Pruned::default()
        };
        let text = render_pruned(&p);
        assert_eq!(
            text,
            format!(
                "Deleted build cache objects:\n{} (snapshot)\nRemoved 3 blobs (2MB), 1 snapshot (1MB), 1 lock file\n\nTotal:\t3MB\n",
                Digest::of(b"s").short()
            )
        );
    }

    #[test]
    fn sizes_like_docker() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1_234_567), "1.23MB");
        assert_eq!(human_size(10_000_000_000), "10GB");
    }
}
