//! The default image library: 23 real photos from four registry packages (scikit-image,
//! scikit-learn, matplotlib wheels and the Debian `darknet` package), with titles, descriptions,
//! sources and licences written by us (`assets/library/library.json`). It is what composition
//! uses when the user names no library.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use xcomposer_llm::fetch::{self, Artifact, FetchError, PackedFile, Package};
use xcomposer_llm::readers::path_io::AtPath;

use crate::library::{ImageLibrary, Indexer, LibraryError, ModelIds, Progress};

/// The library's metadata file, as shipped in `assets/library/library.json`.
pub const LIBRARY_JSON: &str = include_str!("../../../assets/library/library.json");

pub use crate::library::metadata::METADATA_FILE;

/// Sub-folder of the models folder that holds the default library.
pub const DIR: &str = "library";

macro_rules! photo {
    ($member:expr, $name:expr, $sha:expr) => {
        PackedFile { member: $member, file_name: $name, sha256: $sha }
    };
}

/// Photos from the scikit-image wheel (CC0 / public domain).
pub const SKIMAGE: Artifact = Artifact {
    package: Package::Wheel { name: "scikit-image", version: "0.25.2", sha256: "24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641", platform: true },
    dir: DIR,
    files: &[
        photo!("skimage/data/astronaut.png", "astronaut.png", "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
        photo!("skimage/data/chelsea.png", "chelsea.png", "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
        photo!("skimage/data/coffee.png", "coffee.png", "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
        photo!("skimage/data/rocket.jpg", "rocket.jpg", "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
        photo!("skimage/data/motorcycle_left.png", "motorcycle_left.png", "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179"),
        photo!("skimage/data/hubble_deep_field.jpg", "hubble_deep_field.jpg", "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4"),
        photo!("skimage/data/camera.png", "camera.png", "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"),
        photo!("skimage/data/coins.png", "coins.png", "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba"),
        photo!("skimage/data/moon.png", "moon.png", "78739619d11f7eb9c165bb5d2efd4772cee557812ec847532dbb1d92ef71f577"),
        photo!("skimage/data/horse.png", "horse.png", "c7fb60789fe394c485f842291ea3b21e50d140f39d6dcb5fb9917cc178225455"),
        photo!("skimage/data/brick.png", "brick.png", "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf"),
        photo!("skimage/data/grass.png", "grass.png", "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89"),
        photo!("skimage/data/gravel.png", "gravel.png", "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12"),
    ],
};

/// Photos from the scikit-learn wheel (CC-BY-2.0).
pub const SKLEARN: Artifact = Artifact {
    package: Package::Wheel { name: "scikit-learn", version: "1.6.1", sha256: "25fc636bdaf1cc2f4a124a116312d837148b5e10872147bdaf4887926b8c03d8", platform: true },
    dir: DIR,
    files: &[
        photo!("sklearn/datasets/images/china.jpg", "china.jpg", "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29"),
        photo!("sklearn/datasets/images/flower.jpg", "flower.jpg", "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638"),
    ],
};

/// The Grace Hopper portrait from the matplotlib wheel (public domain).
pub const MATPLOTLIB: Artifact = Artifact {
    package: Package::Wheel { name: "matplotlib", version: "3.10.0", sha256: "5439f4c5a3e2e8eab18e2f8c3ef929772fd5641876db71f08127eed95ab64683", platform: true },
    dir: DIR,
    files: &[photo!("matplotlib/mpl-data/sample_data/grace_hopper.jpg", "grace_hopper.jpg", "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130")],
};

/// Photos from the Debian `darknet` package.
pub const DARKNET: Artifact = Artifact {
    package: Package::Deb { name: "darknet", version: "0.0.0+git20180914.61c9d02e-2+b4", sha256: "9ca14d36112d242a782bfed4104fa5adcd2ae8bc599ab610f42eb609ee125a01" },
    dir: DIR,
    files: &[
        photo!("usr/share/darknet/data/dog.jpg", "dog.jpg", "5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866"),
        photo!("usr/share/darknet/data/eagle.jpg", "eagle.jpg", "f95f57297fd51a6c5ddceb5ed6916fa759d1d65f402fee34c05b31a9608755c0"),
        photo!("usr/share/darknet/data/giraffe.jpg", "giraffe.jpg", "00dc48a9b2af8a1fe4c4b79319726591f1033c7e1150f21e7577a79f3b6659f1"),
        photo!("usr/share/darknet/data/horses.jpg", "horses.jpg", "c8f0a677a1356569e2ce71d2fa88c1030c0ae57ecf5e14170e02d9a86a20dcb4"),
        photo!("usr/share/darknet/data/kite.jpg", "kite.jpg", "87410f52f79cc256c3949b48a3548632c07c8e9943468ef8caa6250f6643be8e"),
        photo!("usr/share/darknet/data/person.jpg", "person.jpg", "cdcbab947e46110fc2b77784ac54ddbbab2640f1e44cb5e91fc8984a9793a7d1"),
        photo!("usr/share/darknet/data/scream.jpg", "scream.jpg", "dcab7bae866fbb396e01ab27a9c8d2d40b3e80911dafb05a5fa18d1bac6b8d17"),
    ],
};

/// Every package of the default library.
pub const PACKAGES: [Artifact; 4] = [SKIMAGE, SKLEARN, MATPLOTLIB, DARKNET];

/// The default library's folder in a models folder.
pub fn dir(models_dir: &Path) -> PathBuf {
    models_dir.join(DIR)
}

/// Fetches the photos (a second run only verifies them) and writes the metadata file. The
/// Debian photos are optional: without `apt-get` they are left out with a note in `log`.
pub fn ensure(models_dir: &Path, log: &mut dyn FnMut(&str)) -> Result<PathBuf, FetchError> {
    for a in &PACKAGES {
        match fetch::ensure(a, models_dir, log) {
            Ok(_) => {}
            Err(e @ FetchError::NoApt { .. }) => log(&format!("skipping {} photos: {e}", a.files.len())),
            Err(e) => return Err(e),
        }
    }
    let dir = dir(models_dir);
    let meta = dir.join(METADATA_FILE);
    if std::fs::read_to_string(&meta).ok().as_deref() != Some(LIBRARY_JSON) {
        fetch::write_atomic(&meta, LIBRARY_JSON.as_bytes()).at(&meta)?;
    }
    Ok(dir)
}

/// Opens the default library in `models_dir`, fetching its photos and (re-)indexing them with
/// the default models when the index is missing or was made by other models; `progress` sees
/// the indexing.
pub fn open<B: Backend>(models_dir: &Path, device: &B::Device, log: &mut dyn FnMut(&str), progress: &mut dyn FnMut(Progress)) -> Result<ImageLibrary, LibraryError> {
    open_with::<B>(models_dir, device, Some(&ModelIds::default_models()), log, progress)
}

/// [`open`], with the index's tag and metadata models checked against `models`; `None` (for a
/// caller that scores with CLIP alone and reads neither feature) takes an index made with any
/// models as it is. A missing, empty or unreadable index is made with the default models.
pub fn open_with<B: Backend>(models_dir: &Path, device: &B::Device, models: Option<&ModelIds>, log: &mut dyn FnMut(&str), progress: &mut dyn FnMut(Progress)) -> Result<ImageLibrary, LibraryError> {
    let dir = ensure(models_dir, log).map_err(|e| LibraryError::Models(format!("fetching the default image library: {e}")))?;
    let opened = match models {
        Some(models) => ImageLibrary::open_for(&dir, None, models),
        None => ImageLibrary::open(&dir, None),
    };
    match opened {
        Ok(lib) if !lib.is_empty() => Ok(lib),
        Ok(_) | Err(LibraryError::NoIndex { .. } | LibraryError::Stale { .. }) => {
            let indexer = Indexer::<B>::load_default(models_dir, device, log).map_err(|e| LibraryError::Models(e.to_string()))?;
            Ok(ImageLibrary::index(&dir, None, &indexer, progress)?.0)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_photo_has_metadata_and_every_entry_a_photo() {
        let meta: serde_json::Value = serde_json::from_str(LIBRARY_JSON).unwrap();
        let images = meta["images"].as_object().unwrap();
        let files: Vec<&str> = PACKAGES.iter().flat_map(|a| a.files.iter().map(|f| f.file_name)).collect();
        assert_eq!(files.len(), images.len());
        for f in files {
            let m = &images[f];
            for field in ["title", "description", "source", "licence"] {
                assert!(m[field].as_str().is_some_and(|s| !s.is_empty()), "{f}: {field}");
            }
        }
    }
}
