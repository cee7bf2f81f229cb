// SPDX-License-Identifier: MPL-2.0
//! Reading a file that a setting names (a style picture, a LoRA adapter), within bounds:
//! settings may come from the network, so such a file must not cost unbounded memory.
//! Regular files and FIFOs are read (a FIFO streams a file in); devices, sockets and
//! folders are refused, so `/dev/zero` cannot fill the memory.

use std::io::Read;
use std::path::Path;

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
}
