//! Paths inside an image's filesystem.

/// Cleans a path inside an image: `.` and empty components dropped, `..`
/// applied and clamped at the root (as in a chroot), returned relative,
/// without leading or trailing slashes. The root itself is `""`.
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// Go's `path.Clean`: the shortest lexically equivalent path, keeping
/// leading `..` of relative paths (unlike [`clean`], which clamps at the
/// root). `.dockerignore` patterns are cleaned this way, as moby does.
pub fn go_clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_string()
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn cleans_like_a_chroot() {
        assert_eq!(clean("/a//b/./c/"), "a/b/c");
        assert_eq!(clean("../../x"), "x");
        assert_eq!(clean("a/../../b/.."), "");
        assert_eq!(clean("/"), "");
    }

    #[test]
    fn go_clean_keeps_leading_parents() {
        use super::go_clean;
        assert_eq!(go_clean("../a/./b/../c"), "../a/c");
        assert_eq!(go_clean("/../a"), "/a");
        assert_eq!(go_clean(""), ".");
        assert_eq!(go_clean("a/.."), ".");
    }
}
