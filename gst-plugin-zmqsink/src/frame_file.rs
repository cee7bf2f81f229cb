// SPDX-License-Identifier: MPL-2.0
//! Reading the JPEG files that batch messages name by path, safely: a network message must
//! not read arbitrary files of the receiving machine, nor block the streaming thread.
//!
//! A path is read only when the user named a folder (`frame-folder`) and the path, with
//! its links resolved, lies under it (`i2i_core::files::resolve_under`, the check
//! i2itransform's `settings-folder` uses too); only regular files, opened without blocking (a FIFO
//! is refused, not waited on), their size checked before reading.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The `frame-folder` property of `zmqmsgpacksrc` and `zmqworkersrc`.
pub fn frame_folder_pspec() -> gst::glib::ParamSpec {
    use gst::glib;
    use gst::prelude::*;
    glib::ParamSpecString::builder("frame-folder")
        .nick("Frame folder")
        .blurb("Folder under which batch messages may name JPEG files by path (regular files only); unset: paths in messages are refused")
        .mutable_ready()
        .build()
}

/// Why a named file was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameFileError {
    /// No `frame-folder` set, the path is outside it, or not a regular file.
    Refused(String),
    /// The file cannot be opened or read.
    Missing(String),
    /// The file is larger than the limit.
    Oversize(String),
}

impl std::fmt::Display for FrameFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameFileError::Refused(t)
            | FrameFileError::Missing(t)
            | FrameFileError::Oversize(t) => f.write_str(t),
        }
    }
}

/// Reads the JPEG file `path` named in a batch message, at most `limit` bytes, when it
/// lies under `folder` (the element's `frame-folder`; `None`: paths are refused).
pub fn read(path: &str, folder: Option<&Path>, limit: u64) -> Result<Vec<u8>, FrameFileError> {
    use i2i_core::files::{OutsideFolder, resolve_under};
    let resolved = resolve_under(Path::new(path), folder, "frame-folder").map_err(|e| match e {
        OutsideFolder::Refused(t) => FrameFileError::Refused(t),
        OutsideFolder::Missing(t) => FrameFileError::Missing(t),
    })?;
    let refused = |why: &str| FrameFileError::Refused(format!("{path:?} {why}"));
    // O_NONBLOCK: opening a FIFO never waits for a writer; the type is checked on the
    // opened file, so nothing can be swapped in between.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(turbojpeg::libc::O_NONBLOCK)
        .open(&resolved)
        .map_err(|e| FrameFileError::Missing(format!("cannot open {path:?}: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| FrameFileError::Missing(format!("cannot read {path:?}: {e}")))?;
    if !meta.is_file() {
        return Err(refused("is not a regular file"));
    }
    if meta.len() > limit {
        return Err(FrameFileError::Oversize(format!(
            "{path:?} is larger than max-message-size ({} > {limit} bytes)",
            meta.len()
        )));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    // take() still bounds the read should the file grow meanwhile.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| FrameFileError::Missing(format!("cannot read {path:?}: {e}")))?;
    if data.len() as u64 > limit {
        return Err(FrameFileError::Oversize(format!(
            "{path:?} is larger than max-message-size ({limit} bytes)"
        )));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_under_the_folder_never_blocking() {
        let dir = std::env::temp_dir().join(format!("zmq-frame-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("frames")).unwrap();
        let folder = dir.join("frames");
        std::fs::write(folder.join("a.jpg"), b"jpeg bytes").unwrap();
        std::fs::write(dir.join("secret"), b"not yours").unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), folder.join("link.jpg")).unwrap();
        let fifo = folder.join("fifo.jpg");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { turbojpeg::libc::mkfifo(c.as_ptr(), 0o600) }, 0);

        assert_eq!(read("a.jpg", Some(&folder), 100).unwrap(), b"jpeg bytes");
        let abs = folder.join("a.jpg");
        assert!(read(abs.to_str().unwrap(), Some(&folder), 100).is_ok());
        let e = read("a.jpg", None, 100).unwrap_err();
        assert!(
            matches!(&e, FrameFileError::Refused(t) if t.contains("frame-folder")),
            "{e}"
        );
        for p in ["../secret", "link.jpg", "/etc/passwd", "/dev/zero"] {
            let e = read(p, Some(&folder), 100).unwrap_err();
            assert!(matches!(e, FrameFileError::Refused(_)), "{p}: {e}");
        }
        // Would block forever with a plain open.
        let e = read("fifo.jpg", Some(&folder), 100).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = read("a.jpg", Some(&folder), 3).unwrap_err();
        assert!(matches!(e, FrameFileError::Oversize(_)), "{e}");
        let e = read("missing.jpg", Some(&folder), 100).unwrap_err();
        assert!(matches!(e, FrameFileError::Missing(_)), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
