//! `rbuild history`: rows, order, sizes, truncation, -q and json, as
//! `docker history` prints them, and the same entries as docker shows for
//! the same image.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

const DOCKERFILE: &str = "FROM busybox\n\
ENV GREETING=hello\n\
RUN echo \"$GREETING world\" > /greeting.txt\n\
COPY data.txt /data/\n\
CMD [\"cat\", \"/greeting.txt\"]\n";

/// The built image's manifest and its config (from the root's store).
struct Built {
    manifest: Value,
    config: Value,
    id: String,
}

fn build(env: &Env, tag: &str, extra: &[&str]) -> Built {
    env.load_busybox();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", DOCKERFILE), ("data.txt", "some data\n")],
    );
    let meta = env.path("meta.json");
    let mut args = vec![
        "build",
        "-t",
        tag,
        "--metadata-file",
        meta.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    env.ok(&args);
    let meta = json(&std::fs::read_to_string(&meta).unwrap());
    let blob = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").unwrap();
        json(&std::fs::read_to_string(env.root().join("blobs/sha256").join(hex)).unwrap())
    };
    let id = meta["containerimage.config.digest"]
        .as_str()
        .unwrap()
        .to_string();
    Built {
        manifest: blob(meta["containerimage.digest"].as_str().unwrap()),
        config: blob(&id),
        id,
    }
}

/// Splits a table into rows of cells at the header's column starts.
fn table(text: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines();
    let header = lines.next().expect("a header line");
    let names = ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"];
    let mut starts = Vec::new();
    let mut from = 0;
    for name in names {
        let at = header[from..].find(name).unwrap() + from;
        starts.push(header[..at].chars().count());
        from = at + name.len();
    }
    let cells = |line: &str| -> Vec<String> {
        let chars: Vec<char> = line.chars().collect();
        (0..starts.len())
            .map(|i| {
                let end = starts.get(i + 1).copied().unwrap_or(chars.len());
                chars[starts[i].min(chars.len())..end.min(chars.len())]
                    .iter()
                    .collect::<String>()
                    .trim_end()
                    .to_string()
            })
            .collect()
    };
    let mut rows = vec![cells(header)];
    rows.extend(lines.map(cells));
    rows
}

/// A docker size ("1.03MB", "0B") in bytes, approximately.
fn bytes_of(size: &str) -> f64 {
    let split = size.find(|c: char| c.is_ascii_alphabetic()).unwrap();
    let (number, unit) = size.split_at(split);
    let scale = match unit {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        other => panic!("unit {other} in {size}"),
    };
    number.parse::<f64>().unwrap() * scale
}

#[test]
fn history_lists_entries_newest_first_like_docker() {
    if !require_run() {
        return;
    }
    let env = Env::new();
    let built = build(&env, "hist:v1", &[]);
    let history: Vec<&Value> = built.config["history"].as_array().unwrap().iter().collect();
    assert_eq!(history.len(), 5, "{:#}", built.config);
    let layers: Vec<u64> = built.manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .collect();
    assert_eq!(layers.len(), 3);
    let full_by: Vec<&str> = history
        .iter()
        .rev()
        .map(|h| h["created_by"].as_str().unwrap())
        .collect();
    let hex = built.id.strip_prefix("sha256:").unwrap();

    // The table: newest first, the ID on the top row only.
    let out = env.ok(&["history", "hist:v1"]);
    let rows = table(&out);
    assert_eq!(
        rows[0],
        ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
        "{out}"
    );
    assert!(
        out.starts_with("IMAGE          CREATED"),
        "columns are padded as docker's: {out}"
    );
    let rows = &rows[1..];
    assert_eq!(rows.len(), 5, "{out}");
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        ids,
        [
            &hex[..12],
            "<missing>",
            "<missing>",
            "<missing>",
            "<missing>"
        ]
    );
    let by: Vec<&str> = rows.iter().map(|r| r[2].as_str()).collect();
    assert_eq!(by[0], r#"CMD ["cat" "/greeting.txt"]"#);
    assert_eq!(by[1], "COPY data.txt /data/ # buildkit");
    assert_eq!(by[3], "ENV GREETING=hello");
    // Longer than 45 characters: 44 of them and an ellipsis.
    for (shown, full) in [(by[2], full_by[2]), (by[4], full_by[4])] {
        assert!(full.chars().count() > 45, "{full}");
        assert_eq!(shown.chars().count(), 45, "{shown}");
        let kept: String = full.chars().take(44).collect();
        assert_eq!(shown, format!("{kept}…"));
    }
    assert!(full_by[2].starts_with("RUN /bin/sh -c echo"));
    // Sizes: the files in the entry's layer, 0B for the others. The COPY
    // layer holds data.txt (10 bytes); the busybox layer is mostly the
    // busybox binary, far more than its compressed blob.
    let sizes: Vec<&str> = rows.iter().map(|r| r[3].as_str()).collect();
    assert_eq!(sizes[0], "0B");
    assert_eq!(sizes[1], "10B");
    assert_ne!(sizes[2], "0B");
    assert_eq!(sizes[3], "0B");
    let busybox = std::fs::metadata("/bin/busybox")
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(bytes_of(sizes[4]) >= busybox as f64 * 0.99, "{}", sizes[4]);
    assert!(
        bytes_of(sizes[4]) as u64 > layers[0],
        "more than the gzip blob"
    );
    let comments: Vec<&str> = rows.iter().map(|r| r[4].as_str()).collect();
    assert_eq!(comments[..4], ["buildkit.dockerfile.v0"; 4]);
    assert_eq!(comments[4], "", "the fixture's entry has no comment");
    let created: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    assert!(created[..4].iter().all(|c| c.ends_with(" ago")), "{out}");
    assert_eq!(created[4], "N/A", "the fixture is dated 1970: {out}");

    // --no-trunc: full IDs and commands.
    let out = env.ok(&["history", "--no-trunc", "hist:v1"]);
    let rows = table(&out);
    assert_eq!(rows[1][0], built.id);
    let by: Vec<&str> = rows[1..].iter().map(|r| r[2].as_str()).collect();
    assert_eq!(by, full_by);

    // By ID prefix, the same table (but for CREATED, which is relative to
    // the moment each ran: "Less than a second ago" can become "A second
    // ago" in between).
    let without_created = |out: String| -> Vec<Vec<String>> {
        table(&out)
            .into_iter()
            .map(|mut row| {
                row.remove(1);
                row
            })
            .collect()
    };
    assert_eq!(
        without_created(env.ok(&["history", &hex[..8]])),
        without_created(env.ok(&["history", "hist:v1"]))
    );

    // -q: the IMAGE column only.
    assert_eq!(
        env.ok(&["history", "-q", "hist:v1"]),
        format!("{}\n{}", &hex[..12], "<missing>\n".repeat(4))
    );
    assert_eq!(
        env.ok(&["history", "-q", "--no-trunc", "hist:v1"])
            .lines()
            .next(),
        Some(built.id.as_str())
    );

    // json: one object a line, docker's field names in its (sorted) order,
    // with Go's escaping of <, > and &.
    let out = env.ok(&["history", "--format", "json", "hist:v1"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[1].contains(r#""ID":"\u003cmissing\u003e""#), "{out}");
    let objects: Vec<Value> = lines.iter().map(|l| json(l)).collect();
    for object in &objects {
        let keys: Vec<&String> = object.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "Comment",
                "CreatedAt",
                "CreatedBy",
                "CreatedSince",
                "ID",
                "Size"
            ]
        );
    }
    assert_eq!(objects[0]["ID"], &hex[..12]);
    assert_eq!(objects[1]["ID"], "<missing>");
    assert_eq!(objects[0]["CreatedBy"], by[0]);
    assert_eq!(
        objects[2]["CreatedBy"].as_str().unwrap().chars().count(),
        45
    );
    assert_eq!(objects[0]["Size"], "0B");
    assert_eq!(objects[1]["Size"], "10B");
    assert_eq!(objects[0]["Comment"], "buildkit.dockerfile.v0");
    let created = history[4]["created"].as_str().unwrap();
    assert_eq!(
        objects[0]["CreatedAt"],
        format!("{}Z", &created[..19]),
        "RFC 3339 to the second"
    );
    assert_eq!(objects[4]["CreatedAt"], "1970-01-01T00:00:00Z");
    assert_eq!(objects[4]["CreatedSince"], "N/A");
    let out = env.ok(&["history", "--format", "json", "--no-trunc", "hist:v1"]);
    let first = json(out.lines().next().unwrap());
    assert_eq!(first["ID"], built.id.as_str());

    let err = env.fails(&["history", "nosuch:v1"]);
    assert!(err.contains("no such image: nosuch:v1"), "{err}");
    let err = env.fails(&["history", "--format", "{{.ID}}", "hist:v1"]);
    assert!(err.contains("json"), "{err}");
}

/// Writes an OCI layout of one image with `layers` one-file layers and
/// this history, and returns its directory.
fn hand_made_layout(env: &Env, name: &str, layers: usize, history: Value) -> std::path::PathBuf {
    let dir = env.path(name);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        let hex = format!("{:x}", Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 0..layers {
        let mut builder = tar::Builder::new(Vec::new());
        let data = vec![b'x'; 1000 * (i + 1)];
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, format!("file{i}"), data.as_slice())
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let (digest, size) = put(&tar);
        diff_ids.push(digest.clone());
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest,
            "size": size,
        }));
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": descriptors,
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {
                "io.containerd.image.name": format!("docker.io/library/{name}:v1"),
                "org.opencontainers.image.ref.name": "v1",
            },
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    dir
}

fn load(env: &Env, dir: &Path) {
    env.ok(&["load", "-i", dir.to_str().unwrap()]);
}

#[test]
fn history_that_does_not_match_the_layers_shows_what_is_there() {
    let env = Env::new();
    // Three non-empty entries, one layer: the oldest gets the layer.
    let dir = hand_made_layout(
        &env,
        "toomany",
        1,
        serde_json::json!([
            {"created_by": "first"},
            {"created_by": "second"},
            {"created_by": "third\twith a tab", "comment": "hand-made"},
        ]),
    );
    load(&env, &dir);
    let out = env.ok(&["history", "toomany:v1"]);
    let rows = table(&out);
    let by: Vec<&str> = rows[1..].iter().map(|r| r[2].as_str()).collect();
    assert_eq!(by, ["third with a tab", "second", "first"], "{out}");
    let sizes: Vec<&str> = rows[1..].iter().map(|r| r[3].as_str()).collect();
    assert_eq!(sizes[..2], ["0B", "0B"]);
    assert_ne!(sizes[2], "0B");
    assert_eq!(rows[1][4], "hand-made");
    assert_eq!(rows[1][1], "N/A", "no date");

    // One entry, three layers: one row, the first layer's size.
    let dir = hand_made_layout(
        &env,
        "toofew",
        3,
        serde_json::json!([{"created_by": "only"}]),
    );
    load(&env, &dir);
    let rows = table(&env.ok(&["history", "toofew:v1"]));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1][2], "only");
    // The one 1000-byte file, not the 2.56 kB tarball around it.
    assert_eq!(rows[1][3], "1kB");

    // No history at all: just the header, as docker shows it.
    let dir = hand_made_layout(&env, "nohistory", 1, serde_json::json!([]));
    load(&env, &dir);
    let out = env.ok(&["history", "nohistory:v1"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(env.ok(&["history", "-q", "nohistory:v1"]), "");
    assert_eq!(env.ok(&["history", "--format", "json", "nohistory:v1"]), "");
}

#[test]
fn history_matches_docker_history_of_the_same_image() {
    if !(require_run() && require_docker()) {
        return;
    }
    let env = Env::new();
    let tag = unique_tag("history");
    let _cleanup = DockerImages(vec![tag.clone()]);
    let tar = env.path("image.tar");
    let docker_output = format!("type=docker,dest={}", tar.display());
    build(&env, &tag, &["-o", "type=image", "-o", &docker_output]);
    run(
        docker().args(["load", "-i", tar.to_str().unwrap()]),
        "docker load",
    );
    let theirs = run(
        docker().args([
            "history",
            "--no-trunc",
            "--format",
            "{{.CreatedBy}}|{{.Size}}|{{.Comment}}",
            &tag,
        ]),
        "docker history",
    );
    let ours: Vec<String> = env
        .ok(&["history", "--no-trunc", "--format", "json", &tag])
        .lines()
        .map(|l| {
            let o = json(l);
            format!(
                "{}|{}|{}",
                o["CreatedBy"].as_str().unwrap(),
                o["Size"].as_str().unwrap(),
                o["Comment"].as_str().unwrap()
            )
        })
        .collect();
    // Sizes too: both add up the files in each layer.
    let shape = |line: &str| -> String { line.to_string() };
    let theirs: Vec<String> = theirs.lines().map(shape).collect();
    let ours: Vec<String> = ours.iter().map(|l| shape(l)).collect();
    assert_eq!(theirs.len(), 5, "{theirs:?}");
    assert_eq!(ours, theirs);
    // The top row is the image docker loaded, under the same ID.
    let docker_ids = run(docker().args(["history", "-q", &tag]), "docker history -q");
    assert_eq!(env.ok(&["history", "-q", &tag]), docker_ids);
}
