//! `index` on a folder with hostile files next to a good image (issue 13): an image whose resize
//! would be huge, a FIFO sidecar, `library.json` linked to `/dev/zero` and an `index.json` that is
//! a FIFO. Each is skipped or reported, and the run indexes the good image and goes on.

use std::path::Path;

use burn::backend::Flex;
use xcomposer_retrieval::library::{ImageLibrary, Indexer};

fn mkfifo(path: &Path) {
    assert!(std::process::Command::new("mkfifo").arg(path).status().unwrap().success());
}

#[test]
fn index_skips_and_reports_bad_files_and_goes_on() {
    let root = std::env::temp_dir().join(format!("xcomposer-hostile-library-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join(".xcomposer")).unwrap();
    image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90])).save(root.join("good.png")).unwrap();
    // 1 × 300 000 is under the pixel limit, but resized to 256 wide it would be 76.8 M rows.
    image::GrayImage::new(1, 300_000).save(root.join("thin.png")).unwrap();
    mkfifo(&root.join("good.png.json"));
    mkfifo(&root.join(".xcomposer/index.json"));
    std::os::unix::fs::symlink("/dev/zero", root.join("library.json")).unwrap();

    let indexer = Indexer::<Flex>::load_default(&xcomposer_llm::fetch::models_dir(), &Default::default(), &mut |m| eprintln!("[fetch] {m}")).unwrap();
    let (lib, report) = ImageLibrary::index(&root, None, &indexer, &mut |_| {}).unwrap();

    assert_eq!(lib.images().iter().map(|im| im.path.as_str()).collect::<Vec<_>>(), ["good.png"]);
    assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
    let (path, why) = &report.skipped[0];
    assert_eq!(path, "thin.png");
    assert!(why.starts_with(&format!("{}: 1×300000 would be resized to 256×76800000, more than the limit of 67108864 pixels", root.join("thin.png").display())), "{why}");
    let not_regular = "not a regular file (a folder, FIFO or device); expected a file";
    let expected = [
        format!("{}: {not_regular} (rebuilding the index now)", root.join(".xcomposer/index.json").display()),
        format!("{}: ignored, {not_regular}", root.join("library.json").display()),
        format!("{}: ignored, {not_regular}", root.join("good.png.json").display()),
    ];
    assert_eq!(report.warnings, expected);
    // The index was written over the FIFO and opens again.
    assert_eq!(ImageLibrary::open(&root, None).unwrap().len(), 1);
    std::fs::remove_dir_all(&root).unwrap();
}
