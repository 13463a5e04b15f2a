//! Finding a built kernel when the source tarball is gone.
//!
//! A cache directory's key hashes the source tarball's identity with the
//! recipe, so without the tarball (`linux-source-6.1` removed after the
//! build) the key cannot be computed. Each built directory therefore records
//! the recipe that built it in a `recipe` file, and a lookup without the
//! source takes the newest complete directory built from the current recipe.

use std::path::{Path, PathBuf};

/// The file in a kernel cache directory naming the recipe that built it.
const MARKER: &str = "recipe";

/// Records that `dir` was built from `recipe`, once its build completes
/// (best effort: a directory without the record is only not found without
/// the source). Nothing on the start-up path reads or writes it.
pub fn mark(dir: &Path, recipe: &str) {
    let path = dir.join(MARKER);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(recipe) {
        let _ = std::fs::write(&path, recipe);
    }
}

/// The newest directory of `root` named `<prefix>-<16 hex digits>` that
/// records `recipe` and that `complete` accepts.
pub fn find(
    root: &Path,
    prefix: &str,
    recipe: &str,
    complete: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let key = name
                .to_str()
                .and_then(|n| n.strip_prefix(prefix))
                .and_then(|n| n.strip_prefix('-'));
            key.is_some_and(|k| k.len() == 16 && k.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .map(|e| e.path())
        .filter(|d| std::fs::read_to_string(d.join(MARKER)).ok().as_deref() == Some(recipe))
        .filter(|d| complete(d))
        .filter_map(|d| Some((std::fs::metadata(d.join(MARKER)).ok()?.modified().ok()?, d)))
        .collect();
    found.sort();
    found.pop().map(|(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(root: &Path, name: &str, recipe: Option<&str>) -> PathBuf {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("vmlinux"), b"elf").unwrap();
        if let Some(r) = recipe {
            mark(&d, r);
        }
        d
    }

    #[test]
    fn finds_the_newest_complete_build_of_this_recipe_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let complete = |d: &Path| d.join("vmlinux").is_file();
        assert_eq!(find(root, "linux-6.1", "abc", complete), None);

        built(root, "linux-6.1-0123456789abcdef", Some("old"));
        built(root, "linux-6.1-arm64-0123456789abcdef", Some("abc"));
        built(root, "linux-6.1-00000000000000ff", None);
        let incomplete = root.join("linux-6.1-1111111111111111");
        std::fs::create_dir_all(&incomplete).unwrap();
        mark(&incomplete, "abc");
        assert_eq!(
            find(root, "linux-6.1", "abc", complete),
            None,
            "another recipe, another arch, no record, or incomplete"
        );

        let first = built(root, "linux-6.1-2222222222222222", Some("abc"));
        assert_eq!(find(root, "linux-6.1", "abc", complete), Some(first));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let newer = built(root, "linux-6.1-3333333333333333", Some("abc"));
        assert_eq!(find(root, "linux-6.1", "abc", complete), Some(newer));
        let arm = root.join("linux-6.1-arm64-0123456789abcdef");
        assert_eq!(
            find(root, "linux-6.1-arm64", "abc", |d| d
                .join("vmlinux")
                .is_file()),
            Some(arm)
        );
        assert_eq!(
            find(&root.join("missing"), "linux-6.1", "abc", complete),
            None
        );
    }
}
