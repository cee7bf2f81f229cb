// SPDX-License-Identifier: MPL-2.0
//! Reading a file that a setting names (a style picture, a LoRA adapter), within bounds:
//! settings may come from the network, so such a file must not cost unbounded memory.
//! Regular files and FIFOs are read (a FIFO streams a file in); devices, sockets and
//! folders are refused, so `/dev/zero` cannot fill the memory.
//!
//! A path named by a message from outside (a batch message's frame, a setting's style
//! picture or LoRA file) is read only under the folder the user named for it in a property
//! ([`resolve_under`]): otherwise whoever reaches the socket could read any file of this
//! machine that the process can.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Why a path named from outside is not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutsideFolder {
    /// The folder property is unset or cannot be resolved, or the path leads out of it.
    Refused(String),
    /// The path, under the folder, does not exist (or a folder on the way cannot be read).
    Missing(String),
}

impl std::fmt::Display for OutsideFolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutsideFolder::Refused(t) | OutsideFolder::Missing(t) => f.write_str(t),
        }
    }
}

/// The file that `path`, named by a message from outside, stands for: relative paths start
/// at `folder`, and the result, its links resolved, must lie under `folder` (the value of
/// the property named `property`; `None`: unset, every path refused). `..` leading out
/// is refused before the file system is asked, so nothing is learnt about files outside;
/// a link leading out is refused once resolved. The file is not opened.
pub fn resolve_under(
    path: &Path,
    folder: Option<&Path>,
    property: &str,
) -> Result<PathBuf, OutsideFolder> {
    let shown = path.display();
    let Some(folder) = folder else {
        return Err(OutsideFolder::Refused(format!(
            "\"{shown}\" not read: files named over the network are read only under the \
             folder set in the {property} property, which is not set"
        )));
    };
    let root = folder.canonicalize().map_err(|e| {
        OutsideFolder::Refused(format!(
            "\"{shown}\" not read: {property} {} cannot be resolved ({e})",
            folder.display()
        ))
    })?;
    let outside = |to: &Path| {
        OutsideFolder::Refused(format!(
            "\"{shown}\" not read: it leads to {}, outside {property} {}",
            to.display(),
            root.display()
        ))
    };
    let joined = lexical(&root.join(path));
    if !joined.starts_with(&root) {
        return Err(outside(&joined));
    }
    let resolved = joined.canonicalize().map_err(|e| {
        OutsideFolder::Missing(format!(
            "\"{shown}\" cannot be opened under {property} {} ({e})",
            root.display()
        ))
    })?;
    if !resolved.starts_with(&root) {
        return Err(outside(&resolved));
    }
    Ok(resolved)
}

/// `path` with `.` and `..` taken away by their names alone (links are not followed).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The bytes of `path`, refused when they are more than `limit` or when `path` is not a
/// regular file or a FIFO; errors name the path and say what `what` is.
pub fn read_at_most(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::FileTypeExt;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("{}: cannot read ({e})", path.display()))?;
    let kind = meta.file_type();
    if !(kind.is_file() || kind.is_fifo()) {
        return Err(format!(
            "{}: not a file ({what} is read from a regular file)",
            path.display()
        ));
    }
    if meta.len() > limit {
        return Err(format!(
            "{}: {} bytes, over the limit of {limit} bytes for {what}",
            path.display(),
            meta.len()
        ));
    }
    let file =
        std::fs::File::open(path).map_err(|e| format!("{}: cannot read ({e})", path.display()))?;
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("{}: cannot read ({e})", path.display()))?;
    if data.len() as u64 > limit {
        return Err(format!(
            "{}: more than {limit} bytes, the limit for {what}",
            path.display()
        ));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_within_the_limit_and_refuses_devices_folders_and_large_files() {
        let dir = std::env::temp_dir().join(format!("i2i-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.bin");
        std::fs::write(&f, [7u8; 100]).unwrap();
        assert_eq!(read_at_most(&f, 100, "x").unwrap(), vec![7u8; 100]);
        let e = read_at_most(&f, 99, "a style picture").unwrap_err();
        assert!(
            e.contains("a.bin") && e.contains("limit of 99 bytes for a style picture"),
            "{e}"
        );
        let e = read_at_most(Path::new("/dev/zero"), 1 << 20, "x").unwrap_err();
        assert!(e.contains("/dev/zero: not a file"), "{e}");
        assert!(
            read_at_most(&dir, 1 << 20, "x")
                .unwrap_err()
                .contains("not a file")
        );
        assert!(
            read_at_most(&dir.join("none"), 10, "x")
                .unwrap_err()
                .contains("cannot read")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn paths_from_outside_resolve_only_under_the_folder() {
        let dir = std::env::temp_dir().join(format!("i2i-files-under-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let folder = dir.join("styles");
        std::fs::create_dir_all(folder.join("ink")).unwrap();
        std::fs::write(folder.join("ink/a.png"), b"picture").unwrap();
        std::fs::write(dir.join("secret"), b"not yours").unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), folder.join("link.png")).unwrap();
        std::os::unix::fs::symlink(folder.join("ink/a.png"), folder.join("inside.png")).unwrap();
        let root = folder.canonicalize().unwrap();
        let under = |p: &str| resolve_under(Path::new(p), Some(&folder), "settings-folder");

        // Relative paths start at the folder; absolute ones must lie under it.
        assert_eq!(under("ink/a.png").unwrap(), root.join("ink/a.png"));
        assert_eq!(under("./ink/../ink/a.png").unwrap(), root.join("ink/a.png"));
        let abs = folder.join("ink/a.png");
        assert_eq!(
            under(abs.to_str().unwrap()).unwrap(),
            root.join("ink/a.png")
        );
        // A link that stays inside is followed.
        assert_eq!(under("inside.png").unwrap(), root.join("ink/a.png"));

        // Out by `..`, by a link, by an absolute path: refused, naming the property.
        let escape = format!("../{}", "secret");
        for p in [
            escape.as_str(),
            "ink/../../secret",
            "link.png",
            "/etc/passwd",
            "/dev/zero",
        ] {
            match under(p) {
                Err(OutsideFolder::Refused(t)) => assert!(
                    t.contains(p) && t.contains("outside settings-folder"),
                    "{p}: {t}"
                ),
                other => panic!("{p}: {other:?}"),
            }
        }
        // Out by `..` to a file that does not exist: refused too (nothing learnt about it).
        assert!(matches!(under("../none"), Err(OutsideFolder::Refused(_))));
        // Unset: refused, naming the property.
        let e = resolve_under(Path::new("ink/a.png"), None, "settings-folder").unwrap_err();
        assert!(
            matches!(&e, OutsideFolder::Refused(t) if t.contains("\"ink/a.png\"") && t.contains("settings-folder property, which is not set")),
            "{e}"
        );
        // Missing under the folder, and a folder that does not exist.
        assert!(matches!(under("none.png"), Err(OutsideFolder::Missing(_))));
        let gone = dir.join("gone");
        let e = resolve_under(Path::new("a.png"), Some(&gone), "frame-folder").unwrap_err();
        assert!(
            matches!(&e, OutsideFolder::Refused(t) if t.contains("frame-folder") && t.contains("cannot be resolved")),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
