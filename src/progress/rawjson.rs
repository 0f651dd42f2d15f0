//! `--progress=rawjson`: one BuildKit `SolveStatus` JSON object per line,
//! the form `docker buildx build --progress=rawjson` prints, so tools that
//! read BuildKit's stream can read rbuild's:
//!
//! ```text
//! {"vertexes":[{"digest":"sha256:..","name":"[build 3/4] RUN make","started":"2024-..Z"}]}
//! {"logs":[{"vertex":"sha256:..","stream":1,"data":"Y29tcGlsaW5nCg==","timestamp":"2024-..Z"}]}
//! ```
//!
//! Like BuildKit, each vertex update repeats all that is known about the
//! vertex, absent fields left out. Logs are passed on as the chunks came,
//! base64-encoded. Events about a vertex never announced (so without a
//! digest to name it by) are dropped, and so are messages: every line must
//! be a `SolveStatus`.

use std::collections::HashMap;
use std::io::Write;
use std::time::SystemTime;

use base64::Engine as _;
use rbuild_oci::time::format_rfc3339;
use rbuild_solver::progress::{Event, Vertex, VertexId};
use serde::Serialize;

use super::{Renderer, emit};

pub(super) struct RawJson {
    out: Box<dyn Write + Send>,
    vertices: HashMap<VertexId, JsonVertex>,
}

/// What is known about a vertex; BuildKit's `client.Vertex`.
#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonVertex {
    /// Empty until the vertex is announced.
    #[serde(skip_serializing_if = "String::is_empty")]
    digest: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// rbuild's addition: why the cache missed.
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_miss: Option<String>,
    /// When the vertex started, to date its completion from its elapsed time.
    #[serde(skip)]
    started_at: Option<SystemTime>,
}

/// BuildKit's `client.VertexLog`.
#[derive(Serialize)]
struct JsonLog<'a> {
    vertex: &'a str,
    stream: u8,
    data: String,
    timestamp: String,
}

#[derive(Serialize)]
struct VertexStatus<'a> {
    vertexes: [&'a JsonVertex; 1],
}

#[derive(Serialize)]
struct LogStatus<'a> {
    logs: [JsonLog<'a>; 1],
}

fn is_false(b: &bool) -> bool {
    !b
}

impl RawJson {
    pub fn new(out: Box<dyn Write + Send>) -> RawJson {
        RawJson {
            out,
            vertices: HashMap::new(),
        }
    }

    /// Records what `event` says about its vertex; returns the line to print.
    fn apply(&mut self, event: Event) -> Option<String> {
        let now = SystemTime::now();
        match event {
            Event::Started { vertex, at } => {
                let id = vertex.id;
                let v = self.announce(vertex);
                v.started_at.get_or_insert(at);
                v.started.get_or_insert_with(|| format_rfc3339(at));
                self.vertex_line(id)
            }
            Event::Cached { vertex } => {
                let id = vertex.id;
                let v = self.announce(vertex);
                v.cached = true;
                // BuildKit dates a cached vertex as starting and ending at once.
                v.started_at.get_or_insert(now);
                v.started.get_or_insert_with(|| format_rfc3339(now));
                v.completed = Some(format_rfc3339(now));
                self.vertex_line(id)
            }
            Event::Miss { vertex, reason } => {
                self.entry(vertex).cache_miss = Some(reason.to_string());
                self.vertex_line(vertex)
            }
            Event::Log {
                vertex,
                stream,
                data,
                at,
            } => self.log_line(vertex, stream, &data, at),
            Event::Done { vertex, elapsed } => {
                let v = self.entry(vertex);
                let end = v.started_at.map_or(now, |s| s + elapsed);
                v.completed = Some(format_rfc3339(end));
                self.vertex_line(vertex)
            }
            Event::Failed {
                vertex,
                elapsed,
                message,
            } => {
                let v = self.entry(vertex);
                let end = v.started_at.map_or(now, |s| s + elapsed);
                v.completed = Some(format_rfc3339(end));
                v.error = Some(message);
                self.vertex_line(vertex)
            }
        }
    }

    fn entry(&mut self, id: VertexId) -> &mut JsonVertex {
        self.vertices.entry(id).or_default()
    }

    fn announce(&mut self, vertex: Vertex) -> &mut JsonVertex {
        let v = self.entry(vertex.id);
        if v.digest.is_empty() {
            v.digest = vertex.digest.to_string();
            v.name = vertex.name;
        }
        v
    }

    /// `{"vertexes":[..]}` for a vertex, once it has a digest.
    fn vertex_line(&self, id: VertexId) -> Option<String> {
        let v = self.vertices.get(&id).filter(|v| !v.digest.is_empty())?;
        serde_json::to_string(&VertexStatus { vertexes: [v] }).ok()
    }

    /// `{"logs":[..]}` for a chunk of a vertex's output.
    fn log_line(&self, id: VertexId, stream: u8, data: &[u8], at: SystemTime) -> Option<String> {
        let v = self.vertices.get(&id).filter(|v| !v.digest.is_empty())?;
        let log = JsonLog {
            vertex: &v.digest,
            stream,
            data: base64::engine::general_purpose::STANDARD.encode(data),
            timestamp: format_rfc3339(at),
        };
        serde_json::to_string(&LogStatus { logs: [log] }).ok()
    }
}

impl Renderer for RawJson {
    fn event(&mut self, event: Event) {
        if let Some(mut line) = self.apply(event) {
            line.push('\n');
            emit(&mut *self.out, &line);
        }
    }

    fn message(&mut self, _text: &str) {}

    fn finish(&mut self, _failed: bool) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::testing::*;
    use rbuild_solver::progress::MissReason;
    use serde_json::Value;

    fn run(events: Vec<Event>) -> Vec<Value> {
        let capture = Capture::default();
        let mut json = RawJson::new(capture.writer());
        for event in events {
            json.event(event);
        }
        json.finish(false);
        capture
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    }

    fn decode(data: &Value) -> Vec<u8> {
        let text = data.as_str().expect("data is a string");
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("data is base64")
    }

    #[test]
    fn vertex_lifecycle_and_logs() {
        let name = "[build 3/4] RUN make";
        let digest = digest_of(6, name).to_string();
        let lines = run(vec![
            started(6, name),
            log(6, 215, b"compi"),
            log(6, 300, b"ling\n\xff"),
            done(6, 1300),
        ]);
        assert_eq!(lines.len(), 4);

        let v = &lines[0]["vertexes"][0];
        assert_eq!(v["digest"], digest.as_str());
        assert_eq!(v["name"], name);
        assert_eq!(v["started"], "2023-11-14T22:13:20Z");
        for absent in ["completed", "cached", "error", "cacheMiss"] {
            assert!(v.get(absent).is_none(), "{absent} left out: {v}");
        }

        let log = &lines[1]["logs"][0];
        assert_eq!(log["vertex"], digest.as_str());
        assert_eq!(log["stream"], 1);
        assert_eq!(log["timestamp"], "2023-11-14T22:13:20.215Z");
        assert_eq!(decode(&log["data"]), b"compi");
        assert_eq!(decode(&lines[2]["logs"][0]["data"]), b"ling\n\xff");

        let v = &lines[3]["vertexes"][0];
        assert_eq!(v["digest"], digest.as_str());
        assert_eq!(v["name"], name);
        assert_eq!(v["started"], "2023-11-14T22:13:20Z");
        assert_eq!(v["completed"], "2023-11-14T22:13:21.3Z");
    }

    #[test]
    fn cached_failed_and_miss() {
        let lines = run(vec![
            cached(1, "[a 1/2] RUN x"),
            Event::Miss {
                vertex: 2,
                reason: MissReason::Instruction,
            },
            started(2, "[a 2/2] RUN y"),
            failed(2, 500, "exit code 1"),
        ]);
        assert_eq!(
            lines.len(),
            3,
            "the early miss waits for the vertex's digest"
        );

        let v = &lines[0]["vertexes"][0];
        assert_eq!(v["cached"], true);
        assert!(v["started"].is_string() && v["completed"].is_string());

        let v = &lines[1]["vertexes"][0];
        assert_eq!(v["name"], "[a 2/2] RUN y");
        assert_eq!(v["cacheMiss"], "the instruction changed");

        let v = &lines[2]["vertexes"][0];
        assert_eq!(v["error"], "exit code 1");
        assert_eq!(v["completed"], "2023-11-14T22:13:20.5Z");
        assert!(v.get("cached").is_none());
    }

    #[test]
    fn miss_of_an_announced_vertex_is_its_own_update() {
        let lines = run(vec![
            started(3, "[a 1/1] RUN z"),
            Event::Miss {
                vertex: 3,
                reason: MissReason::Variable { name: "V".into() },
            },
        ]);
        assert_eq!(lines[1]["vertexes"][0]["cacheMiss"], "variable V changed");
        assert_eq!(lines[1]["vertexes"][0]["name"], "[a 1/1] RUN z");
    }

    #[test]
    fn unknown_vertices_and_messages_print_nothing() {
        let capture = Capture::default();
        let mut json = RawJson::new(capture.writer());
        json.event(log(9, 0, b"x"));
        json.event(done(9, 0));
        json.message("naming to docker.io/library/app:v1 done");
        json.finish(true);
        assert_eq!(capture.text(), "");
    }
}
