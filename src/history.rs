//! `rbuild history IMAGE`: the image's history entries, newest first, as
//! `docker history` prints them.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rbuild_oci::time::{format_rfc3339, parse_rfc3339};
use rbuild_oci::{BlobStore, History, Manifest};
use rbuild_solver::Root;

use crate::commands::{ago, find_one, human_size};

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Don't truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Only show image IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// table (default), or json: one JSON object per line
    #[arg(long, value_name = "FORMAT", value_parser = ["table", "json"])]
    pub format: Option<String>,
    /// Image name or ID
    #[arg(value_name = "IMAGE")]
    pub image: String,
}

/// One line of the history: what docker's API returns for it.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    /// The image ID (`sha256:...`) on the top row, else `<missing>`.
    id: String,
    /// Seconds since the epoch; 0 when the entry has no (valid) date.
    created: u64,
    created_by: String,
    size: u64,
    comment: String,
}

/// What docker shows as a layer's SIZE: the bytes of the files it holds
/// (regular files, and symlinks by their target's length, as the daemon's
/// directory walk counts them; a hard link counts once), not the size of
/// the (maybe compressed) tarball.
fn content_size(root: &Root, layer: &rbuild_oci::Descriptor) -> Result<u64> {
    let blob = root
        .content
        .open(&layer.digest)
        .with_context(|| format!("reading layer {}", layer.digest))?;
    rbuild_exec::layer::content_size(blob)
        .with_context(|| format!("reading layer {}", layer.digest))
}

/// Only the history of the config is needed; a hand-made config that
/// lacks other fields still shows.
#[derive(serde::Deserialize)]
struct Config {
    #[serde(default)]
    history: Vec<History>,
}

pub fn run(root: &Root, args: &HistoryArgs) -> Result<()> {
    let record = find_one(root, &args.image)?;
    let manifest: Manifest = serde_json::from_slice(
        &root
            .content
            .read_all(&record.manifest.digest)
            .with_context(|| format!("reading the manifest of {}", args.image))?,
    )
    .with_context(|| format!("the manifest of {}", args.image))?;
    let config: Config = serde_json::from_slice(
        &root
            .content
            .read_all(&record.config)
            .with_context(|| format!("reading the image config of {}", args.image))?,
    )
    .with_context(|| format!("the image config of {}", args.image))?;
    let layer_sizes: Vec<u64> = manifest
        .layers
        .iter()
        .map(|l| content_size(root, l))
        .collect::<Result<_>>()?;
    let rows = rows(&config.history, &layer_sizes, &record.config.to_string());

    let trunc = !args.no_trunc;
    let now = SystemTime::now();
    let mut out = std::io::stdout().lock();
    match args.format.as_deref() {
        Some("json") => {
            for row in &rows {
                writeln!(out, "{}", json_line(row, trunc, now))?;
            }
        }
        _ if args.quiet => {
            for row in &rows {
                writeln!(out, "{}", id(row, trunc))?;
            }
        }
        _ => {
            let header = ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"];
            let cells: Vec<[String; 5]> = rows
                .iter()
                .map(|r| {
                    [
                        id(r, trunc),
                        created_since(r, now),
                        created_by(r, trunc),
                        human_size(r.size),
                        r.comment.clone(),
                    ]
                })
                .collect();
            write!(out, "{}", table(header.map(String::from), &cells))?;
        }
    }
    Ok(())
}

/// The history entries newest first, each non-empty one paired with the
/// next layer's size, as the Docker daemon does. Entries and layers that
/// do not match (a hand-made image) are shown as far as they go: a
/// non-empty entry without a layer has size 0, layers without an entry
/// are not shown.
fn rows(history: &[History], layer_sizes: &[u64], image_id: &str) -> Vec<Row> {
    let mut layers = layer_sizes.iter();
    let mut rows: Vec<Row> = history
        .iter()
        .map(|h| Row {
            id: "<missing>".to_string(),
            created: h
                .created
                .as_deref()
                .and_then(parse_rfc3339)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
            created_by: h.created_by.clone().unwrap_or_default(),
            size: match h.empty_layer {
                true => 0,
                false => layers.next().copied().unwrap_or(0),
            },
            comment: h.comment.clone().unwrap_or_default(),
        })
        .collect();
    rows.reverse();
    if let Some(top) = rows.first_mut() {
        top.id = image_id.to_string();
    }
    rows
}

/// docker's `stringid.TruncateID`: no algorithm, 12 characters.
fn id(row: &Row, trunc: bool) -> String {
    if !trunc {
        return row.id.clone();
    }
    let id = row
        .id
        .split_once(':')
        .map_or(row.id.as_str(), |(_, hex)| hex);
    id.chars().take(12).collect()
}

fn created_since(row: &Row, now: SystemTime) -> String {
    match row.created {
        0 => "N/A".to_string(),
        secs => ago(now, UNIX_EPOCH + Duration::from_secs(secs)),
    }
}

/// RFC 3339 to the second, in UTC.
fn created_at(row: &Row) -> String {
    format_rfc3339(UNIX_EPOCH + Duration::from_secs(row.created))
}

fn created_by(row: &Row, trunc: bool) -> String {
    let text = row.created_by.replace('\t', " ");
    match trunc {
        true => ellipsis(&text, 45),
        false => text,
    }
}

/// docker's `formatter.Ellipsis`: at most `max` display columns (East
/// Asian wide characters take two), the last one an ellipsis when cut.
fn ellipsis(s: &str, max: usize) -> String {
    let total: usize = s.chars().map(char_width).sum();
    if total <= max {
        return s.to_string();
    }
    let mut width = 0;
    let mut out: String = s
        .chars()
        .take_while(|&c| {
            width += char_width(c);
            width < max
        })
        .collect();
    out.push('…');
    out
}

/// 2 for East Asian wide and fullwidth characters, else 1.
fn char_width(c: char) -> usize {
    let wide = matches!(c as u32,
        0x1100..=0x115F
        | 0x231A..=0x231B
        | 0x2329..=0x232A
        | 0x2E80..=0x303E
        | 0x3041..=0x33FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xA000..=0xA4CF
        | 0xA960..=0xA97F
        | 0xAC00..=0xD7A3
        | 0xF900..=0xFAFF
        | 0xFE10..=0xFE19
        | 0xFE30..=0xFE6F
        | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6
        | 0x1F300..=0x1F64F
        | 0x1F900..=0x1F9FF
        | 0x20000..=0x2FFFD
        | 0x30000..=0x3FFFD);
    if wide { 2 } else { 1 }
}

/// docker's `{{json .}}` of a history line: keys sorted, and `<`, `>`,
/// `&` escaped as Go's encoder does.
fn json_line(row: &Row, trunc: bool, now: SystemTime) -> String {
    let value = serde_json::json!({
        "Comment": row.comment,
        "CreatedAt": created_at(row),
        "CreatedBy": created_by(row, trunc),
        "CreatedSince": created_since(row, now),
        "ID": id(row, trunc),
        "Size": human_size(row.size),
    });
    let mut text = String::new();
    for c in value.to_string().chars() {
        match c {
            '<' => text.push_str("\\u003c"),
            '>' => text.push_str("\\u003e"),
            '&' => text.push_str("\\u0026"),
            '\u{2028}' => text.push_str("\\u2028"),
            '\u{2029}' => text.push_str("\\u2029"),
            c => text.push(c),
        }
    }
    text
}

/// Columns as docker's tabwriter lays them out: each at least 10
/// characters, 3 spaces after the widest cell; the last one unpadded.
fn table(header: [String; 5], rows: &[[String; 5]]) -> String {
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        for (cell, width) in row.iter().zip(widths) {
            out.push_str(&format!("{cell:<w$}", w = (width + 3).max(10)));
        }
        out.push_str(&row[4]);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(created_by: &str, empty_layer: bool) -> History {
        History {
            created: Some("2024-01-02T03:04:05.5Z".into()),
            created_by: Some(created_by.into()),
            author: None,
            comment: Some("buildkit.dockerfile.v0".into()),
            empty_layer,
        }
    }

    #[test]
    fn entries_pair_with_layers_newest_first() {
        let history = [
            entry("base", false),
            entry("ENV", true),
            entry("RUN", false),
        ];
        let rows = rows(&history, &[100, 7], "sha256:0123456789abcdef");
        let by: Vec<(&str, &str, u64)> = rows
            .iter()
            .map(|r| (r.id.as_str(), r.created_by.as_str(), r.size))
            .collect();
        assert_eq!(
            by,
            [
                ("sha256:0123456789abcdef", "RUN", 7),
                ("<missing>", "ENV", 0),
                ("<missing>", "base", 100)
            ]
        );
        assert_eq!(id(&rows[0], true), "0123456789ab");
        assert_eq!(id(&rows[1], true), "<missing>");
        assert_eq!(created_at(&rows[0]), "2024-01-02T03:04:05Z");
    }

    #[test]
    fn mismatched_history_does_not_panic() {
        // More non-empty entries than layers, and the other way round.
        let history = [entry("a", false), entry("b", false)];
        let sizes: Vec<u64> = rows(&history, &[5], "sha256:ab")
            .iter()
            .map(|r| r.size)
            .collect();
        assert_eq!(sizes, [0, 5]);
        assert_eq!(rows(&history[..1], &[5, 6, 7], "sha256:ab").len(), 1);
        assert!(rows(&[], &[5], "sha256:ab").is_empty());
    }

    #[test]
    fn ellipsis_like_docker() {
        let long = "a".repeat(46);
        assert_eq!(ellipsis(&long[..45], 45), long[..45]);
        assert_eq!(ellipsis(&long, 45), format!("{}…", &long[..44]));
        assert_eq!(ellipsis(&long, 45).chars().count(), 45);
        // Wide characters count twice.
        let wide = "字".repeat(23);
        assert_eq!(ellipsis(&wide, 45), format!("{}…", "字".repeat(22)));
        assert_eq!(ellipsis(&"字".repeat(22), 45), "字".repeat(22));
    }

    #[test]
    fn json_escapes_like_go() {
        let row = Row {
            id: "<missing>".into(),
            created: 0,
            created_by: "RUN a > b && c".into(),
            size: 0,
            comment: String::new(),
        };
        assert_eq!(
            json_line(&row, true, SystemTime::now()),
            r#"{"Comment":"","CreatedAt":"1970-01-01T00:00:00Z","CreatedBy":"RUN a \u003e b \u0026\u0026 c","CreatedSince":"N/A","ID":"\u003cmissing\u003e","Size":"0B"}"#
        );
    }

    #[test]
    fn table_pads_like_tabwriter() {
        let header = ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"].map(String::from);
        let row = ["<missing>", "N/A", "x", "0B", ""].map(String::from);
        assert_eq!(
            table(header, &[row]),
            "IMAGE       CREATED   CREATED BY   SIZE      COMMENT\n\
             <missing>   N/A       x            0B        \n"
        );
    }
}
