//! Reading a file that nothing can wedge: the one way this crate reads an
//! archive, a stored library or a stored release file.
//!
//! [`read_regular`] opens the path with `O_NONBLOCK` (so a FIFO with no
//! writer does not block the open), `fstat`s what it opened and refuses
//! anything but a regular file, and anything larger than the cap, before it
//! reads a byte; then it reads at most `cap + 1` bytes, so a file that grows
//! while it is read is still refused rather than read without end.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::Path;

/// Why [`read_regular`] did not return the file's bytes.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The path could not be opened or read (missing, permissions, ...).
    Io(io::Error),
    /// The path is not a regular file; what it is ("a directory", ...).
    NotAFile(&'static str),
    /// The file is larger than the cap: `size` is its size when opened, or
    /// `None` when it grew past the cap while it was read.
    TooLarge { size: Option<u64> },
}

/// What a file type is, in words, when it is not a regular file.
pub(crate) fn describe_non_regular(file_type: fs::FileType) -> Option<&'static str> {
    if file_type.is_file() {
        return None;
    }
    if file_type.is_dir() {
        return Some("a directory");
    }
    if file_type.is_symlink() {
        return Some("a symbolic link");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return Some("a FIFO (named pipe)");
        }
        if file_type.is_char_device() {
            return Some("a character device");
        }
        if file_type.is_block_device() {
            return Some("a block device");
        }
        if file_type.is_socket() {
            return Some("a socket");
        }
    }
    Some("not a regular file")
}

/// Opens `path` to read it, with `O_NONBLOCK` on unix, so that opening a
/// FIFO returns at once instead of waiting for a writer.
fn open_nonblocking(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // The flag's bits fit an i32 (open(2) takes an int).
        options.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
    }
    options.open(path)
}

/// The bytes of the regular file at `path`, if it has at most `cap` of
/// them; see the module doc.
pub(crate) fn read_regular(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    let file = match open_nonblocking(path) {
        Ok(file) => file,
        Err(e) => {
            // A socket cannot be opened at all (ENXIO): say what it is.
            if let Ok(meta) = fs::metadata(path)
                && let Some(what) = describe_non_regular(meta.file_type())
            {
                return Err(ReadError::NotAFile(what));
            }
            return Err(ReadError::Io(e));
        }
    };
    // fstat: the file we opened, not whatever the path names by now.
    let meta = file.metadata().map_err(ReadError::Io)?;
    if let Some(what) = describe_non_regular(meta.file_type()) {
        return Err(ReadError::NotAFile(what));
    }
    if meta.len() > cap {
        return Err(ReadError::TooLarge { size: Some(meta.len()) });
    }
    #[cfg(unix)]
    {
        // A regular file ignores O_NONBLOCK on the systems relive runs on;
        // clear it anyway, so no read can fail with EAGAIN.
        let flags = rustix::fs::fcntl_getfl(&file).map_err(|e| ReadError::Io(e.into()))?;
        rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)
            .map_err(|e| ReadError::Io(e.into()))?;
    }
    // `meta.len() <= cap` here, so the capacity is bounded by the cap.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes).map_err(ReadError::Io)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge { size: None });
    }
    Ok(bytes)
}

/// `bytes` in words for people: `3221225472 bytes (3.0 GiB)`.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{bytes} bytes ({value:.1} {})", UNITS[unit])
}
