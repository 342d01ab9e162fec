//! Finding a library's images: a recursive walk that skips hidden entries and follows a
//! symbolic link only when its target lies inside the library.

use std::collections::HashSet;
use std::path::Path;

use xcomposer_llm::readers::path_io::AtPath;

use super::{IndexReport, LibraryError};

const EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "webp", "gif", "jpe"];

/// Finds image files under `root`, as relative paths with `/` separators.
pub(crate) fn walk(root: &Path, report: &mut IndexReport) -> Result<Vec<String>, LibraryError> {
    let canon_root = root.canonicalize().at(root)?;
    let mut out = vec![];
    let mut seen = HashSet::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    seen.insert(canon_root.clone());
    while let Some((dir, rel)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                report.skipped.push((rel.clone(), format!("folder not readable: {e}")));
                continue;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let rel_path = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let Ok(ft) = entry.file_type() else { continue };
            // Follow a link only when its target stays inside the library.
            let target = if ft.is_symlink() {
                match path.canonicalize() {
                    Ok(t) if t.starts_with(&canon_root) => Some(t),
                    _ => continue,
                }
            } else {
                None
            };
            let (is_dir, is_file) = target.as_deref().map_or((ft.is_dir(), ft.is_file()), |t| (t.is_dir(), t.is_file()));
            if is_dir {
                // Each real folder once, so link cycles end.
                if let Some(c) = target.or_else(|| path.canonicalize().ok())
                    && seen.insert(c)
                {
                    stack.push((path, rel_path));
                }
            } else if is_file && Path::new(&name).extension().is_some_and(|e| EXTENSIONS.contains(&e.to_string_lossy().to_lowercase().as_str())) {
                out.push(rel_path);
            }
        }
    }
    out.sort();
    Ok(out)
}
