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
}
