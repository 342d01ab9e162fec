//! Reading input files with a size cap: only a regular file is read (a FIFO or device is
//! refused before it is opened, so a read never blocks or streams forever), and never more
//! than the cap. Errors are the readers' [`WeightError`] (`NotRegular`, `TooLarge`, `Io`).

use std::io::Read;
use std::path::Path;

use super::WeightError;
use super::path_io::AtPath;

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
    let too_large = || WeightError::TooLarge { path: path.to_path_buf(), cap };
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
}
