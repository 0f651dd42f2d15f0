//! What a base image's filesystem holds, read from its layer tarballs.
//!
//! COPY needs to know whether its destination is an existing directory,
//! which parent directories it must create, and what user and group names
//! mean in the image; all of that is answered here from the layers' headers
//! (and the bytes of `/etc/passwd` and `/etc/group`) without unpacking them.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, Read};

use serde::{Deserialize, Serialize};

use crate::summary::LayerSummary;

/// Path component limit when following symlinks, as Linux has.
const MAX_SYMLINKS: usize = 40;
/// Only these small files' contents are kept.
pub(crate) const KEPT_FILES: [&str; 2] = ["etc/passwd", "etc/group"];
pub(crate) const MAX_KEPT_SIZE: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    Directory,
    File,
    Symlink(String),
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub kind: NodeKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

/// A base image's merged filesystem tree (metadata only).
#[derive(Debug, Clone, Default)]
pub struct BaseFs {
    nodes: BTreeMap<String, Node>,
    files: HashMap<String, Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
    #[error("invalid user or group id {0:?}: ids must be at most 4294967295")]
    OutOfRange(String),
    #[error("invalid user {0:?}")]
    Invalid(String),
}

/// The credentials a RUN process gets for a USER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: every group in /etc/group listing the user.
    pub additional_gids: Vec<u32>,
    /// The home directory from /etc/passwd ("/" when unknown).
    pub home: String,
}

/// A resolved `user[:group]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl BaseFs {
    /// An empty filesystem (`FROM scratch`).
    pub fn empty() -> BaseFs {
        BaseFs::default()
    }

    /// Applies one layer (uncompressed, gzip or zstd) on top of what is
    /// known.
    pub fn apply_layer(&mut self, layer: impl Read) -> io::Result<()> {
        self.apply_summary(&LayerSummary::read(layer)?);
        Ok(())
    }

    /// Applies a layer, from its summary, on top of what is known.
    pub fn apply_summary(&mut self, layer: &LayerSummary) {
        // Whiteouts hide what lower layers had; this layer's own entries
        // are added afterwards.
        for removal in &layer.removals {
            self.remove_tree(&removal.path, !removal.opaque);
        }
        for addition in &layer.additions {
            if addition.node.kind != NodeKind::Directory {
                self.remove_tree(&addition.path, false);
            }
            self.nodes
                .insert(addition.path.clone(), addition.node.clone());
            if let Some(content) = &addition.content {
                self.files.insert(addition.path.clone(), content.clone());
            }
        }
    }

    /// Removes everything below `path`, and `path` itself when `itself`.
    fn remove_tree(&mut self, path: &str, itself: bool) {
        if itself {
            self.nodes.remove(path);
            self.files.remove(path);
        }
        for k in remove_below(&mut self.nodes, path) {
            self.files.remove(&k);
        }
    }

    /// Looks a path up, following symlinks (also in the last component)
    /// within the image's root. Returns the resolved path and its node.
    pub fn resolve(&self, path: &str) -> Option<(String, &Node)> {
        let resolved = self.resolve_path(path, true)?;
        if resolved.is_empty() {
            return None;
        }
        self.nodes.get(&resolved).map(|n| (resolved, n))
    }

    /// Whether `path` is an existing directory (through symlinks).
    pub fn is_dir(&self, path: &str) -> bool {
        let Some(resolved) = self.resolve_path(path, true) else {
            return false;
        };
        resolved.is_empty()
            || self
                .nodes
                .get(&resolved)
                .is_some_and(|n| n.kind == NodeKind::Directory)
    }

    /// Resolves parent components (and the last one when `follow_last`)
    /// through symlinks, treating the image root as `/`.
    pub fn resolve_path(&self, path: &str, follow_last: bool) -> Option<String> {
        let mut pending: Vec<String> = components(path).into_iter().rev().collect();
        let mut resolved: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(component) = pending.pop() {
            match component.as_str() {
                "." | "" => continue,
                ".." => {
                    resolved.pop();
                    continue;
                }
                _ => {}
            }
            resolved.push(component);
            let is_last = pending.is_empty();
            let current = resolved.join("/");
            if let Some(Node {
                kind: NodeKind::Symlink(target),
                ..
            }) = self.nodes.get(&current)
            {
                if is_last && !follow_last {
                    break;
                }
                links += 1;
                if links > MAX_SYMLINKS {
                    return None;
                }
                resolved.pop();
                if target.starts_with('/') {
                    resolved.clear();
                }
                for c in components(target).into_iter().rev() {
                    pending.push(c);
                }
            }
        }
        Some(resolved.join("/"))
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// The content of a small file the index keeps (`etc/passwd`, `etc/group`).
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }

    /// Resolves `user[:group]` the way docker does for `COPY --chown`:
    /// names through the image's /etc/passwd and /etc/group, numbers as
    /// they are; a user without a group gets the user's primary group when
    /// named, or the same number as its uid when numeric.
    pub fn owner(&self, spec: &str) -> Result<Owner, UserError> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        if user.is_empty() {
            return Err(UserError::Invalid(spec.to_string()));
        }
        let (uid, primary_gid) = match parse_id(user)? {
            Some(uid) => (uid, uid),
            None => self
                .passwd_lookup(user)
                .ok_or_else(|| UserError::NoUser(user.to_string()))?,
        };
        let gid = match group {
            None | Some("") => primary_gid,
            Some(group) => match parse_id(group)? {
                Some(gid) => gid,
                None => self
                    .group_lookup(group)
                    .ok_or_else(|| UserError::NoGroup(group.to_string()))?,
            },
        };
        Ok(Owner { uid, gid })
    }

    /// Resolves a USER for running a process, as runc does for docker
    /// (moby's GetExecUser): a name must be in /etc/passwd; a number need
    /// not be, and then its group is 0; `:group` overrides the primary
    /// group; supplementary groups are the /etc/group entries that list
    /// the user by name.
    pub fn exec_user(&self, spec: &str) -> Result<ExecUser, UserError> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let user = if user.is_empty() { "root" } else { user };
        let entry = self
            .passwd_entries()
            .into_iter()
            .find(|e| match parse_id(user) {
                Ok(Some(uid)) => e.uid == uid,
                _ => e.name == user,
            });
        let (uid, primary, name, home) = match (parse_id(user)?, entry) {
            (_, Some(e)) => (e.uid, e.gid, Some(e.name), e.home),
            (Some(uid), None) => (uid, 0, None, "/".to_string()),
            (None, None) => return Err(UserError::NoUser(user.to_string())),
        };
        let gid = match group {
            None | Some("") => primary,
            Some(group) => match parse_id(group)? {
                Some(gid) => gid,
                None => self
                    .group_lookup(group)
                    .ok_or_else(|| UserError::NoGroup(group.to_string()))?,
            },
        };
        let mut additional_gids = Vec::new();
        if let Some(name) = &name {
            for (gid, members) in self.group_entries() {
                if members.iter().any(|m| m == name) && !additional_gids.contains(&gid) {
                    additional_gids.push(gid);
                }
            }
        }
        Ok(ExecUser {
            uid,
            gid,
            additional_gids,
            home,
        })
    }

    fn passwd_entries(&self) -> Vec<PasswdEntry> {
        let Some(passwd) = self.file("etc/passwd") else {
            return Vec::new();
        };
        BufReader::new(passwd)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| {
                let f: Vec<&str> = line.split(':').collect();
                if f.len() < 4 || line.starts_with('#') {
                    return None;
                }
                Some(PasswdEntry {
                    name: f[0].to_string(),
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                    home: f
                        .get(5)
                        .filter(|h| !h.is_empty())
                        .map_or("/".to_string(), |h| h.to_string()),
                })
            })
            .collect()
    }

    /// (gid, member names) of every /etc/group entry.
    fn group_entries(&self) -> Vec<(u32, Vec<String>)> {
        let Some(group) = self.file("etc/group") else {
            return Vec::new();
        };
        BufReader::new(group)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| {
                let f: Vec<&str> = line.split(':').collect();
                if f.len() < 3 || line.starts_with('#') {
                    return None;
                }
                let members = f.get(3).map_or(Vec::new(), |m| {
                    m.split(',')
                        .filter(|n| !n.is_empty())
                        .map(|n| n.trim().to_string())
                        .collect()
                });
                Some((f[2].parse().ok()?, members))
            })
            .collect()
    }

    fn passwd_lookup(&self, name: &str) -> Option<(u32, u32)> {
        let passwd = self.file("etc/passwd")?;
        BufReader::new(passwd)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.len() >= 4 && fields[0] == name)
                    .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                    .flatten()
            })
    }

    fn group_lookup(&self, name: &str) -> Option<u32> {
        let group = self.file("etc/group")?;
        BufReader::new(group)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.len() >= 3 && fields[0] == name)
                    .then(|| fields[2].parse().ok())
                    .flatten()
            })
    }
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

/// A number is an id (rejected above 2^32-1); anything else is a name.
fn parse_id(s: &str) -> Result<Option<u32>, UserError> {
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    s.parse::<u32>()
        .map(Some)
        .map_err(|_| UserError::OutOfRange(s.to_string()))
}

/// Removes from `map` every path below `dir` (clean and relative; `""`
/// for the root); returns the removed paths.
pub(crate) fn remove_below<V>(map: &mut BTreeMap<String, V>, dir: &str) -> Vec<String> {
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let below: Vec<String> = map
        .range(prefix.clone()..)
        .map(|(k, _)| k)
        .take_while(|k| k.starts_with(&prefix))
        .cloned()
        .collect();
    for path in &below {
        map.remove(path);
    }
    below
}

fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Entry, EntryKind, LayerWriter};

    fn layer(entries: &[(&str, EntryKind)]) -> Vec<u8> {
        let mut w = LayerWriter::new(Vec::new());
        for (path, kind) in entries {
            let mode = if *kind == EntryKind::Directory {
                0o755
            } else {
                0o644
            };
            w.add(&Entry {
                path: path.to_string(),
                kind: kind.clone(),
                mode,
                uid: 0,
                gid: 0,
                mtime: 0,
                xattrs: Vec::new(),
            })
            .unwrap();
        }
        w.finish().unwrap().2
    }

    #[test]
    fn a_layer_replacing_a_directory_keeps_its_own_kept_files() {
        let mut fs = BaseFs::empty();
        let passwd = |line: &[u8]| EntryKind::Bytes(line.to_vec());
        fs.apply_layer(
            &layer(&[
                ("etc", EntryKind::Directory),
                ("etc/passwd", passwd(b"old:x:1:1::/:/bin/sh\n")),
            ])[..],
        )
        .unwrap();
        // Whiteouts apply before the layer's own entries, whatever their
        // order in the archive.
        fs.apply_layer(
            &layer(&[
                ("etc", EntryKind::Directory),
                ("etc/passwd", passwd(b"new:x:2:2::/:/bin/sh\n")),
                ("etc/.wh..wh..opq", EntryKind::Bytes(vec![])),
            ])[..],
        )
        .unwrap();
        assert_eq!(fs.owner("new").unwrap(), Owner { uid: 2, gid: 2 });
        assert!(matches!(fs.owner("old"), Err(UserError::NoUser(_))));
    }

    #[test]
    fn whiteouts_symlinks_and_users() {
        let mut fs = BaseFs::empty();
        fs.apply_layer(
            &layer(&[
                ("etc", EntryKind::Directory),
                (
                    "etc/passwd",
                    EntryKind::Bytes(
                        b"root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n".to_vec(),
                    ),
                ),
                (
                    "etc/group",
                    EntryKind::Bytes(b"root:x:0:\nstaff:x:50:app\n".to_vec()),
                ),
                ("usr", EntryKind::Directory),
                ("usr/lib", EntryKind::Directory),
                (
                    "lib",
                    EntryKind::Symlink {
                        target: "usr/lib".into(),
                    },
                ),
                ("gone", EntryKind::Directory),
                ("gone/f", EntryKind::Bytes(vec![])),
                ("opq", EntryKind::Directory),
                ("opq/old", EntryKind::Bytes(vec![])),
            ])[..],
        )
        .unwrap();
        fs.apply_layer(
            &layer(&[
                (".wh.gone", EntryKind::Bytes(vec![])),
                ("opq", EntryKind::Directory),
                ("opq/.wh..wh..opq", EntryKind::Bytes(vec![])),
                ("opq/new", EntryKind::Bytes(vec![])),
            ])[..],
        )
        .unwrap();
        assert!(fs.is_dir("/lib"));
        assert!(fs.is_dir("/"));
        assert_eq!(
            fs.resolve("/lib/../../etc/passwd")
                .map(|(p, _)| p)
                .as_deref(),
            Some("etc/passwd")
        );
        assert!(fs.get("gone").is_none() && fs.get("gone/f").is_none());
        assert!(fs.get("opq/old").is_none() && fs.get("opq/new").is_some());
        assert_eq!(
            fs.owner("app").unwrap(),
            Owner {
                uid: 1000,
                gid: 1001
            }
        );
        assert_eq!(fs.owner("app:staff").unwrap(), Owner { uid: 1000, gid: 50 });
        assert_eq!(fs.owner("7").unwrap(), Owner { uid: 7, gid: 7 });
        assert_eq!(fs.owner("7:root").unwrap(), Owner { uid: 7, gid: 0 });
        assert!(matches!(fs.owner("nobody"), Err(UserError::NoUser(_))));
        assert!(matches!(fs.owner("app:nope"), Err(UserError::NoGroup(_))));
        assert!(matches!(
            fs.owner("4294967296"),
            Err(UserError::OutOfRange(_))
        ));
        // RUN's user: supplementary groups from /etc/group, home from passwd.
        let app = fs.exec_user("app").unwrap();
        assert_eq!(
            (
                app.uid,
                app.gid,
                app.additional_gids.clone(),
                app.home.as_str()
            ),
            (1000, 1001, vec![50], "/home/app")
        );
        assert_eq!(
            fs.exec_user("1000").unwrap(),
            app,
            "a uid in passwd is that user"
        );
        let unknown = fs.exec_user("4242").unwrap();
        assert_eq!(
            (unknown.uid, unknown.gid, unknown.additional_gids.len()),
            (4242, 0, 0)
        );
        assert_eq!(fs.exec_user("app:root").unwrap().gid, 0);
        assert_eq!(fs.exec_user("").unwrap().uid, 0);
        assert!(matches!(fs.exec_user("nobody"), Err(UserError::NoUser(_))));
        assert!(matches!(
            fs.exec_user("4294967296"),
            Err(UserError::OutOfRange(_))
        ));
        assert!(matches!(
            fs.exec_user("app:nogroup"),
            Err(UserError::NoGroup(_))
        ));
    }
}
