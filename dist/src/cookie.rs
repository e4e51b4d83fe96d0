//! The cookie, found as erl finds it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::DistError;

/// `~/.erlang.cookie`.
pub fn default_cookie_path() -> Result<PathBuf, DistError> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| DistError::Cookie("HOME is not set: pass --cookie-file".into()))?;
    Ok(PathBuf::from(home).join(".erlang.cookie"))
}

/// Reads the cookie from `path` (the file given), else from
/// `~/.erlang.cookie`, which is created (mode 0400, 20 random capital
/// letters, as erl makes it) when missing. Surrounding whitespace is not
/// part of the cookie.
///
/// # Errors
/// [`DistError::Cookie`] naming the file: unreadable, empty, readable by
/// others (as erl, a cookie others can read is refused), or not creatable.
pub fn read_or_create(path: Option<&Path>) -> Result<String, DistError> {
    let (path, given) = match path {
        Some(path) => (path.to_path_buf(), true),
        None => (default_cookie_path()?, false),
    };
    if !given && !path.exists() {
        create(&path)?;
    }
    let meta = std::fs::metadata(&path)
        .map_err(|e| DistError::Cookie(format!("reading the cookie file {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(DistError::Cookie(format!(
            "the cookie file {} is accessible by others (mode {:o}): chmod 400 it",
            path.display(),
            meta.permissions().mode() & 0o777
        )));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| DistError::Cookie(format!("reading the cookie file {}: {e}", path.display())))?;
    let cookie = text.trim();
    if cookie.is_empty() {
        return Err(DistError::Cookie(format!("the cookie file {} is empty", path.display())));
    }
    Ok(cookie.to_string())
}

fn create(path: &Path) -> Result<(), DistError> {
    let cookie: String = (0..20).map(|_| char::from(b'A' + rand::random_range(0..26u8))).collect();
    let fail =
        |e: std::io::Error| DistError::Cookie(format!("creating the cookie file {}: {e}", path.display()));
    // Written whole to a temporary file, then renamed: a crash never leaves
    // an empty or partial cookie behind.
    let tmp = path.with_extension("tmp");
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o400).open(&tmp).map_err(fail)?;
    file.write_all(cookie.as_bytes()).and_then(|()| file.sync_all()).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_file_is_read_trimmed_and_must_be_private() {
        let dir = std::env::temp_dir().join(format!("relive-cookie-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cookie");
        std::fs::write(&path, "SECRET\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_or_create(Some(&path)).unwrap_err().to_string().contains("chmod 400"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_or_create(Some(&path)).unwrap(), "SECRET");
        let created = dir.join("new");
        create(&created).unwrap();
        assert_eq!(std::fs::metadata(&created).unwrap().permissions().mode() & 0o777, 0o400);
        assert_eq!(read_or_create(Some(&created)).unwrap().len(), 20);
        assert!(read_or_create(Some(&dir.join("missing"))).is_err(), "a file given must exist");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
