//! Extended attributes: systemd marks the cgroup of a unit with `Delegate=` by
//! `trusted.delegate` (and, since 251, `user.delegate`).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Largest value read; longer ones are an error (ERANGE).
const MAX_VALUE: usize = 256;

/// The value of extended attribute `name` of `path`, or `None` if it is not set (or the file
/// system has none).
pub fn get(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let nul = |_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in path or name");
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(nul)?;
    let c_name = CString::new(name).map_err(nul)?;
    let mut buf = vec![0u8; MAX_VALUE];
    // SAFETY: both strings are NUL-terminated and live across the call; `buf` is a writable
    // allocation of `buf.len()` bytes, and getxattr writes at most `size` bytes into it.
    let rc = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::EOPNOTSUPP) => Ok(None),
            _ => Err(e),
        };
    }
    buf.truncate(usize::try_from(rc).unwrap_or(0));
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_attribute_is_none_and_missing_file_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(get(dir.path(), "user.lowsched-test-absent").unwrap(), None);
        assert!(get(&dir.path().join("nope"), "user.x").is_err());
    }
}
