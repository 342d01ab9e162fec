//! Reading input files with a size cap: only a regular file is read (a FIFO or device is
//! refused before it is opened, so a read never blocks or streams forever), and never more
//! than the cap. Errors are the readers' [`WeightError`] (`NotRegular`, `TooLarge`, `Io`). The
//! caps of the files users hand in are [`Cap`]s: a default that an environment variable raises.

use std::io::Read;
use std::path::Path;

use super::WeightError;
use super::path_io::AtPath;

/// A file-size cap that a user can raise: its default, and the environment variable that, set
/// to a whole number of bytes, replaces it (`XCOMPOSER_MAX_CONFIG_BYTES=67108864`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    /// The environment variable.
    pub var: &'static str,
    /// The cap in bytes when the variable is not set.
    pub default: u64,
}

impl Cap {
    /// The cap in bytes: the variable's value when it is set, else the default.
    pub fn bytes(&self) -> Result<u64, WeightError> {
        match std::env::var_os(self.var) {
            None => Ok(self.default),
            Some(v) => {
                let value = v.to_string_lossy().into_owned();
                value.trim().parse().map_err(|_| WeightError::Limit { var: self.var, value })
            }
        }
    }
}

/// The end of a `TooLarge` message: how to raise the cap, when a variable does.
pub fn raise_hint(var: Option<&'static str>) -> String {
    var.map(|v| format!(" (raise it with the environment variable {v})")).unwrap_or_default()
}

/// [`read_capped`] under a cap a user can raise; a file over it is refused naming the
/// variable, a variable that is not a number is an error naming it.
pub fn read_within(path: &Path, cap: Cap) -> Result<Vec<u8>, WeightError> {
    read_capped(path, cap.bytes()?).map_err(|e| match e {
        WeightError::TooLarge { path, cap: bytes, .. } => WeightError::TooLarge { path, cap: bytes, raise: Some(cap.var) },
        e => e,
    })
}

/// Reads `reader` to its end if it yields at most `cap` bytes; `None` when it yields more (then
/// only `cap + 1` bytes were read).
pub fn read_to_end_capped(reader: impl Read, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = vec![];
    reader.take(cap.saturating_add(1)).read_to_end(&mut out)?;
    Ok((out.len() as u64 <= cap).then_some(out))
}

/// Opens the regular file at `path` (links followed) for reading or mapping; a folder, FIFO or
/// device is refused before it is opened (opening a FIFO would wait for a writer).
pub fn open_regular(path: &Path) -> Result<std::fs::File, WeightError> {
    if !std::fs::metadata(path).at(path)?.is_file() {
        return Err(WeightError::NotRegular { path: path.to_path_buf() });
    }
    let file = std::fs::File::open(path).at(path)?;
    if !file.metadata().at(path)?.is_file() {
        return Err(WeightError::NotRegular { path: path.to_path_buf() });
    }
    Ok(file)
}

/// Reads the regular file at `path` (links followed) if it holds at most `cap` bytes; its type
/// is checked before it is opened ([`open_regular`]), its size before it is read.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, WeightError> {
    let too_large = || WeightError::TooLarge { path: path.to_path_buf(), cap, raise: None };
    let file = open_regular(path)?;
    if file.metadata().at(path)?.len() > cap {
        return Err(too_large());
    }
    read_to_end_capped(file, cap).at(path)?.ok_or_else(too_large)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_folders_fifos_and_files_over_the_cap() {
        let dir = std::env::temp_dir().join(format!("xcomposer-capped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f.json");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_capped(&file, 5).unwrap(), b"12345");
        let e = read_capped(&file, 4).unwrap_err().to_string();
        assert_eq!(e, format!("{}: larger than the limit of 4 bytes", file.display()));
        let e = read_capped(&dir, 100).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(read_capped(&dir.join("absent"), 1).unwrap_err().is_not_found());
        // A FIFO with no writer would block an open for reading forever.
        let fifo = dir.join("pipe.json");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
        if made {
            let e = read_capped(&fifo, 100).unwrap_err().to_string();
            assert!(e.contains("pipe.json: not a regular file"), "{e}");
        }
        // /dev/zero never ends: refused by type, without reading.
        let e = read_capped(Path::new("/dev/zero"), 100).unwrap_err().to_string();
        assert!(e.starts_with("/dev/zero: not a regular file"), "{e}");
        assert_eq!(read_to_end_capped(&b"abc"[..], 2).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cap_is_raised_by_its_variable_and_a_refusal_names_it() {
        let dir = std::env::temp_dir().join(format!("xcomposer-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f.json");
        std::fs::write(&file, b"12345").unwrap();
        // A variable of this test alone: no other test reads it.
        let cap = Cap { var: "XCOMPOSER_MAX_CAPPED_TEST_BYTES", default: 4 };
        let e = read_within(&file, cap).unwrap_err().to_string();
        assert_eq!(e, format!("{}: larger than the limit of 4 bytes (raise it with the environment variable XCOMPOSER_MAX_CAPPED_TEST_BYTES)", file.display()));
        // SAFETY: set while no other thread reads this variable (only this test uses it).
        unsafe { std::env::set_var(cap.var, "5") };
        assert_eq!(read_within(&file, cap).unwrap(), b"12345");
        unsafe { std::env::set_var(cap.var, "5 MiB") };
        assert_eq!(read_within(&file, cap).unwrap_err().to_string(), "XCOMPOSER_MAX_CAPPED_TEST_BYTES=\"5 MiB\": expected a whole number of bytes");
        unsafe { std::env::remove_var(cap.var) };
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
