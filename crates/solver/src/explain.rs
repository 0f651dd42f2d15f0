//! Why a step missed the cache: its facts (what went into its key, see
//! [`crate::cache_key`]) compared with those of the last build of the
//! same step, found by the step's slot (its context, Dockerfile, stage
//! and position).

use serde_json::Value;

use crate::progress::MissReason;

/// The first difference between the last build's facts and this one's,
/// in the order a user would look: base image, previous step, the
/// instruction, its variables, its files.
pub(crate) fn why(previous: Option<&str>, now: &Value) -> MissReason {
    let Some(previous) = previous.and_then(|p| serde_json::from_str::<Value>(p).ok()) else {
        return MissReason::NeverBuilt;
    };
    if previous["base_image"] != now["base_image"]
        && let Some(image) = now["base_image"].as_str()
    {
        let name = image.split('@').next().unwrap_or(image);
        return MissReason::BaseImage {
            name: name.to_string(),
        };
    }
    if previous["base"] != now["base"] {
        return MissReason::Parent;
    }
    if let Some(name) = changed_variable(&previous["env"], &now["env"]) {
        return MissReason::Variable { name };
    }
    if previous["op"] != now["op"] {
        return MissReason::Instruction;
    }
    if let Some(path) = changed_file(&previous["files"], &now["files"]) {
        return MissReason::File { path };
    }
    if previous["source"] != now["source"] {
        return MissReason::Source {
            what: "the source stage or image".into(),
        };
    }
    if previous["sums"] != now["sums"] {
        return MissReason::File {
            path: "(in the build context)".into(),
        };
    }
    // Same facts: the record was pruned, or never written here.
    MissReason::NeverBuilt
}

/// The first variable whose value differs (or that appeared or went).
fn changed_variable(before: &Value, now: &Value) -> Option<String> {
    let parse = |v: &Value| -> Vec<(String, String)> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str())
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.to_string(), String::new()),
            })
            .collect()
    };
    let (before, now) = (parse(before), parse(now));
    for (k, v) in &now {
        if before.iter().find(|(bk, _)| bk == k).map(|(_, bv)| bv) != Some(v) {
            return Some(k.clone());
        }
    }
    before
        .iter()
        .find(|(k, _)| !now.iter().any(|(nk, _)| nk == k))
        .map(|(k, _)| k.clone())
}

/// The first file (in path order) added, removed or changed.
fn changed_file(before: &Value, now: &Value) -> Option<String> {
    let parse = |v: &Value| -> Vec<(String, String)> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e[0].as_str()?.to_string(), e[1].as_str()?.to_string())))
            .collect()
    };
    let (before, now) = (parse(before), parse(now));
    let mut paths: Vec<&String> = before.iter().chain(now.iter()).map(|(p, _)| p).collect();
    paths.sort();
    paths.dedup();
    paths.into_iter().find_map(|path| {
        let a = before.iter().find(|(p, _)| p == path);
        let b = now.iter().find(|(p, _)| p == path);
        (a != b).then(|| path.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts(env: &[&str], files: &[(&str, &str)]) -> Value {
        json!({
            "op": "sha256:op", "base": "chain:a", "base_image": null,
            "env": env,
            "files": files.iter().map(|(p, d)| json!([p, d])).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn names_the_first_difference() {
        let before = facts(&["A=1", "B=2"], &[("a.txt", "1"), ("b.txt", "2")]);
        let text = before.to_string();
        assert_eq!(why(None, &before), MissReason::NeverBuilt);
        assert_eq!(why(Some(&text), &before), MissReason::NeverBuilt);
        assert_eq!(
            why(
                Some(&text),
                &facts(&["A=1", "B=3"], &[("a.txt", "1"), ("b.txt", "2")])
            ),
            MissReason::Variable { name: "B".into() }
        );
        assert_eq!(
            why(
                Some(&text),
                &facts(&["A=1", "B=2"], &[("a.txt", "1"), ("b.txt", "9")])
            ),
            MissReason::File {
                path: "b.txt".into()
            }
        );
        assert_eq!(
            why(Some(&text), &facts(&["A=1", "B=2"], &[("a.txt", "1")])),
            MissReason::File {
                path: "b.txt".into()
            }
        );
        let mut parent = before.clone();
        parent["base"] = json!("chain:b");
        assert_eq!(why(Some(&text), &parent), MissReason::Parent);
        let mut op = before.clone();
        op["op"] = json!("sha256:other");
        assert_eq!(why(Some(&text), &op), MissReason::Instruction);
        let mut image = before.clone();
        image["base_image"] = json!("busybox@sha256:x");
        assert_eq!(
            why(Some(&text), &image),
            MissReason::BaseImage {
                name: "busybox".into()
            }
        );
    }
}
