//! The pipeline with scripted stages (no model weights): composition, provenance and fallbacks,
//! rendering and its safety rules, and every edit operation.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use xcomposer_composer::article::{Candidate, Source};
use xcomposer_composer::render::{self, Format};
use xcomposer_composer::retriever::Retrieved;
use xcomposer_composer::text_model::{Completion, Request};
use xcomposer_composer::{Article, ComposeError, ComposeRequest, Composer, Edit, Language, Retriever, TextModel};

/// Answers by prompt kind; records every prompt it saw.
struct ScriptedModel {
    spot_answer: String,
    caption_answers: Mutex<Vec<String>>,
    seen: Mutex<Vec<String>>,
}

impl ScriptedModel {
    fn new(spot: &str, captions: &[&str]) -> Arc<Self> {
        Arc::new(ScriptedModel { spot_answer: spot.into(), caption_answers: Mutex::new(captions.iter().rev().map(|s| s.to_string()).collect()), seen: Mutex::new(vec![]) })
    }
}

const ARTICLE: &str = "# Coffee Through Time\nCoffee was first brewed in Ethiopia and Yemen centuries ago.\nTraders carried the beans across the Red Sea to Mecca and Cairo.\nShort.\nIn Venice the first European coffee houses opened their doors to merchants.\nToday espresso machines hiss in cafes all over the world, every morning, everywhere.\n";

impl TextModel for ScriptedModel {
    fn id(&self) -> String {
        "scripted".into()
    }

    fn complete(&self, req: &Request, on_text: &mut (dyn FnMut(&str) -> std::ops::ControlFlow<()> + Send)) -> Result<Completion, String> {
        let p = &req.prompt.user;
        self.seen.lock().unwrap().push(format!("{}|{}", p, req.prompt.prefix));
        let text = if req.prompt.prefix.starts_with("The lines") || req.prompt.prefix.starts_with("适合") {
            self.spot_answer.clone()
        } else if req.prompt.prefix.starts_with("The caption") || req.prompt.prefix.contains("标题是") {
            self.caption_answers.lock().unwrap().pop().unwrap_or_else(|| "\"".into())
        } else if p.contains("rewrite the paragraph") {
            format!("A fresh paragraph with seed {}.\nignored second line", req.sampling.seed)
        } else if req.prompt.prefix.starts_with("Title") {
            "unused\"".into()
        } else {
            ARTICLE.into()
        };
        let _ = on_text(&text);
        Ok(Completion { text, prompt_tokens: 10, new_tokens: 5, prefill_seconds: 0.0, decode_seconds: 0.0, stop_reason: "stop_token".into() })
    }
}

/// Ranks its images by how many words of the caption their file names have.
struct FolderRetriever {
    images: Vec<PathBuf>,
}

impl FolderRetriever {
    fn new(dir: &Path, names: &[&str]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let images = names
            .iter()
            .map(|n| {
                let p = dir.join(n);
                std::fs::write(&p, n.as_bytes()).unwrap();
                p
            })
            .collect();
        FolderRetriever { images }
    }
}

impl Retriever for FolderRetriever {
    fn id(&self) -> String {
        "folder".into()
    }

    fn retrieve(&self, caption: &str, k: usize, exclude: &[PathBuf]) -> Result<Retrieved, ComposeError> {
        let caption = caption.to_lowercase();
        let mut all: Vec<Candidate> = self
            .images
            .iter()
            .map(|p| {
                let stem = p.file_stem().unwrap().to_string_lossy().to_lowercase();
                let words: Vec<&str> = stem.split(|c: char| !c.is_alphanumeric()).collect();
                let score = caption.split(|c: char| !c.is_alphanumeric()).filter(|w| words.contains(w)).count() as f32;
                Candidate { path: p.clone(), score, parts: vec![], description: None, remote: None }
            })
            .collect();
        all.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.path.cmp(&b.path)));
        let fresh: Vec<Candidate> = all.iter().filter(|c| !exclude.contains(&c.path)).take(k).cloned().collect();
        if fresh.is_empty() {
            return Ok(Retrieved { candidates: all.into_iter().take(k).collect(), note: Some("exhausted".into()) });
        }
        Ok(Retrieved { candidates: fresh, note: None })
    }
}

fn tmp(tag: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pipeline-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The default stages with the one-shot writer, whose whole-article answer the script gives
/// (the structured writer is tested in `constrained_stages.rs`).
fn composer(model: Arc<ScriptedModel>, dir: &Path, names: &[&str]) -> Composer {
    let mut c = Composer::with_model(model.clone(), Box::new(FolderRetriever::new(dir, names)));
    c.writer = Box::new(xcomposer_composer::LlmWriter::new(model, Arc::new(xcomposer_composer::Prompts::default())));
    c
}

const PHOTOS: &[&str] = &["ethiopia-coffee.png", "red-sea-ship.jpg", "venice-cafe.png", "espresso machine.JPG", "mecca.png"];

#[test]
fn compose_records_every_decision_and_renders_linked_outputs() {
    let dir = tmp("compose");
    let model = ScriptedModel::new("适合 <Seg0>, <Seg4> and <Seg9>", &["ethiopia coffee\" and more", "\"", "espresso machine"]);
    let c = composer(model.clone(), &dir.join("photos"), PHOTOS);
    let mut req = ComposeRequest::new("Write an illustrated article about coffee.");
    req.images = Some(3);
    let mut streamed = String::new();
    let mut stages = vec![];
    let mut article = c
        .compose(&req, &mut |e| match e {
            xcomposer_composer::Event::Text(t) => streamed.push_str(t),
            xcomposer_composer::Event::Finished { stage, .. } => stages.push(stage.name()),
            _ => {}
        })
        .unwrap();
    assert_eq!(streamed, ARTICLE, "the writer's text streams as it is written");
    assert_eq!(stages, ["writer", "spotter", "captioner", "retriever", "selector"]);
    assert_eq!(article.title, "Coffee Through Time");
    assert_eq!(article.paragraphs.len(), 5);
    assert_eq!(article.language, Language::En);
    // The model named 0 and 4 (9 is out of range); a third was placed by the rule, after the
    // longest remaining paragraph of its run.
    assert_eq!(article.spots(), [0, 3, 4]);
    assert_eq!(article.spotting.by, Source::Model);
    assert!(article.spotting.detail.contains("ignored [9]") && article.spotting.detail.contains("1 more placed"), "{}", article.spotting.detail);
    let caps: Vec<&str> = article.images.iter().map(|s| s.caption.as_str()).collect();
    assert_eq!(caps, ["ethiopia coffee", "In Venice the first European coffee houses opened their doors to merchants", "espresso machine"]);
    assert_eq!(article.images[1].caption_source.by, Source::Fallback);
    // No image twice.
    let chosen: Vec<&Path> = article.images.iter().map(|s| s.image().unwrap().path.as_path()).collect();
    assert_eq!(chosen[0].file_name().unwrap(), "ethiopia-coffee.png");
    assert_eq!(chosen[2].file_name().unwrap(), "espresso machine.JPG");
    assert_eq!(chosen[1].file_name().unwrap(), "venice-cafe.png");
    // 4 candidates asked for; the images of earlier slots are left out of later ones.
    assert_eq!(article.images.iter().map(|s| s.candidates.len()).collect::<Vec<_>>(), [4, 4, 3]);
    assert!(article.images.iter().all(|s| s.selection.by == Source::Score));
    assert_eq!(article.timings.len(), 5);

    let out = dir.join("out");
    let written = render::write(&mut article, &out, &[Format::Markdown, Format::Html, Format::Json], false, &[dir.join("photos")]).unwrap();
    assert_eq!(written.files.len(), 3);
    let md = std::fs::read_to_string(out.join("article.md")).unwrap();
    assert!(md.starts_with("# Coffee Through Time\n\nCoffee was first brewed"), "{md}");
    assert!(md.contains("![ethiopia coffee](assets/01-ethiopia-coffee.png \"ethiopia coffee\")\n*ethiopia coffee*\n"), "{md}");
    assert!(md.contains("(assets/03-espresso-machine.jpg \"espresso machine\")"), "{md}");
    let links = render::image_links(&md);
    assert_eq!(links.len(), 3);
    for (link, slot) in links.iter().zip(&article.images) {
        assert_eq!(std::fs::read(out.join(link)).unwrap(), std::fs::read(&slot.image().unwrap().path).unwrap());
    }
    let html = std::fs::read_to_string(out.join("article.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<title>Coffee Through Time</title>"));
    assert_eq!(html.matches("<img src=\"assets/").count(), 3);
    assert_eq!(Article::load(&out.join("article.json")).unwrap(), article, "JSON round-trips");

    // An existing output folder is not overwritten without being asked.
    let e = render::write(&mut article, &out, &[Format::Markdown], false, &[dir.join("photos")]).unwrap_err();
    assert!(matches!(e, ComposeError::OutputExists(_)), "{e}");
    // With replace, a user's own file there is left alone.
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    render::write(&mut article, &out, &[Format::Markdown, Format::Json], true, &[dir.join("photos")]).unwrap();
    assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
}

#[test]
fn unusable_answers_fall_back_and_say_so() {
    let dir = tmp("fallback");
    let model = ScriptedModel::new("I cannot decide, sorry.", &["", "same", "same"]);
    let c = composer(model, &dir.join("photos"), &PHOTOS[..2]);
    let mut article = c.compose(&ComposeRequest::new("Write about coffee."), &mut |_| {}).unwrap();
    assert_eq!(article.spotting.by, Source::Fallback);
    assert_eq!(article.spots(), [0, 1, 4], "3 images for 5 paragraphs, after the longest of each run");
    assert_eq!(article.images[0].caption_source.by, Source::Fallback, "empty caption → from the paragraph");
    assert_eq!(article.images[1].caption_source.by, Source::Model);
    assert_eq!(article.images[2].caption_source.by, Source::Fallback, "a repeated caption → from the paragraph");
    assert!(article.images.iter().all(|s| !s.caption.is_empty()));
    // Two photos for three slots: the third repeats one, and the selection says so.
    assert!(article.images[2].selection.detail.contains("exhausted"), "{:?}", article.images[2].selection);
    let out = dir.join("out");
    render::write(&mut article, &out, &[Format::Markdown], false, &[dir.join("photos")]).unwrap();
    assert_eq!(render::image_links(&std::fs::read_to_string(out.join("article.md")).unwrap()).len(), 3);
}

#[test]
fn chinese_instructions_use_the_original_prompts() {
    let dir = tmp("zh");
    let model = ScriptedModel::new("<Seg1>", &["长城\"。"]);
    let c = composer(model.clone(), &dir.join("photos"), PHOTOS);
    let article = c.compose(&ComposeRequest::new("写一篇关于咖啡历史的图文并茂的文章"), &mut |_| {}).unwrap();
    assert_eq!(article.language, Language::Zh);
    let seen = model.seen.lock().unwrap();
    assert!(seen[0].starts_with("根据给定标题写一个图文并茂，不重复的文章：写一篇关于咖啡历史"), "{}", seen[0]);
    assert!(seen.iter().any(|p| p.contains("根据上述文章，选择适合插入图像的行 |适合插入图像的行是")));
    assert!(seen.iter().any(|p| p.contains("给出适合在<Seg1>后插入的图像对应的标题。 | 标题是\"")));
    assert_eq!(article.images[0].caption, "长城");
}

#[test]
fn every_edit_operation_changes_what_it_says_and_nothing_else() {
    let dir = tmp("edit");
    let model = ScriptedModel::new("<Seg0> <Seg4>", &["ethiopia coffee", "espresso machine", "venice cafe", "mecca", "red sea ship"]);
    let c = composer(model, &dir.join("photos"), PHOTOS);
    let mut a = c.compose(&ComposeRequest::new("Write about coffee."), &mut |_| {}).unwrap();
    assert_eq!(a.spots(), [0, 4]);
    let before = a.clone();

    // swap
    c.edit(&mut a, &Edit::Swap { slot: 1, candidate: 2 }).unwrap();
    assert_eq!(a.images[1].chosen, 2);
    assert_eq!(a.images[1].selection.by, Source::User);
    assert_eq!(a.images[0], before.images[0]);
    let e = c.edit(&mut a, &Edit::Swap { slot: 1, candidate: 9 }).unwrap_err().to_string();
    assert!(e.contains("slot 1 has 4 candidates (0–3), not 9"), "{e}");

    // caption (user text) → searched again
    c.edit(&mut a, &Edit::Caption { slot: 1, text: "venice cafe".into() }).unwrap();
    assert_eq!(a.images[1].caption, "venice cafe");
    assert_eq!(a.images[1].caption_source.by, Source::User);
    assert_eq!(a.images[1].image().unwrap().path.file_name().unwrap(), "venice-cafe.png");

    // recaption → the model's next answer, searched again
    c.edit(&mut a, &Edit::Recaption { slot: 0 }).unwrap();
    // The model's next answer, "venice cafe", repeats slot 1's caption: the paragraph's instead.
    assert_eq!(a.images[0].caption, "Coffee was first brewed in Ethiopia and Yemen centuries ago");
    assert_eq!(a.images[0].caption_source.by, Source::Fallback);
    // add after paragraph 2, captioned by the model ("mecca"), no image used twice
    c.edit(&mut a, &Edit::Add { after: 2 }).unwrap();
    assert_eq!(a.spots(), [0, 2, 4]);
    assert_eq!(a.images[1].caption, "mecca");
    assert_eq!(a.images[1].image().unwrap().path.file_name().unwrap(), "mecca.png");
    let e = c.edit(&mut a, &Edit::Add { after: 2 }).unwrap_err().to_string();
    assert!(e.contains("already has an image"), "{e}");
    let e = c.edit(&mut a, &Edit::Add { after: 99 }).unwrap_err().to_string();
    assert!(e.contains("paragraph 99 does not exist (the article has 5 paragraphs"), "{e}");

    // delete
    c.edit(&mut a, &Edit::Delete { slot: 0 }).unwrap();
    assert_eq!(a.spots(), [2, 4]);
    assert!(c.edit(&mut a, &Edit::Delete { slot: 5 }).unwrap_err().to_string().contains("image slot 5 does not exist"));

    // regenerate a paragraph: only that one changes
    let paragraphs = a.paragraphs.clone();
    c.edit(&mut a, &Edit::Regenerate { paragraph: 1 }).unwrap();
    assert!(a.paragraphs[1].starts_with("A fresh paragraph with seed"), "{}", a.paragraphs[1]);
    assert_eq!(a.paragraphs[0], paragraphs[0]);
    assert_eq!(a.paragraphs[2..], paragraphs[2..]);

    // insert N: spotted, captioned and retrieved anew
    c.edit(&mut a, &Edit::Insert { count: 1 }).unwrap();
    assert_eq!(a.images.len(), 1);
    assert_eq!(a.settings.images, Some(1));
    assert!(c.edit(&mut a, &Edit::Insert { count: 0 }).is_err());

    assert_eq!(a.edits.len(), 7, "{:?}", a.edits);
    a.check().unwrap();
    // Re-rendering in place after the edits: links resolve and the stale copies are gone.
    let out = dir.join("out");
    let mut first = before.clone();
    render::write(&mut first, &out, &[Format::Markdown, Format::Json], false, &[dir.join("photos")]).unwrap();
    render::write(&mut a, &out, &[Format::Markdown, Format::Json], true, &[dir.join("photos")]).unwrap();
    let left: Vec<String> = std::fs::read_dir(out.join("assets")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

#[test]
fn saved_articles_are_checked_when_read() {
    let dir = tmp("load");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("article.json");
    std::fs::write(&p, "{\"format\": \"something\"}").unwrap();
    let e = Article::load(&p).unwrap_err().to_string();
    assert!(e.contains("article.json: not an xcomposer article: field `format` is Some(\"something\")"), "{e}");
    std::fs::write(&p, "{\"format\": \"xcomposer-article\", \"version\": 7}").unwrap();
    assert!(Article::load(&p).unwrap_err().to_string().contains("this build reads version 1"));
    let model = ScriptedModel::new("<Seg1>", &["x"]);
    let c = composer(model, &dir.join("photos"), PHOTOS);
    let a = c.compose(&ComposeRequest::new("Write about coffee."), &mut |_| {}).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
    v["images"][0]["after_paragraph"] = 40.into();
    std::fs::write(&p, v.to_string()).unwrap();
    let e = Article::load(&p).unwrap_err().to_string();
    assert!(e.contains("images[0].after_paragraph is 40, but there are 5 paragraphs"), "{e}");
    assert!(Article::load(&dir.join("missing.json")).unwrap_err().to_string().contains("missing.json"));
}

/// A composed article rendered into `dir/out`, with its photos in `dir/photos`.
fn rendered(dir: &Path) -> (Composer, PathBuf) {
    let model = ScriptedModel::new("<Seg0> <Seg4>", &["ethiopia coffee", "espresso machine"]);
    let c = composer(model, &dir.join("photos"), PHOTOS);
    let mut a = c.compose(&ComposeRequest::new("Write about coffee."), &mut |_| {}).unwrap();
    let out = dir.join("out");
    render::write(&mut a, &out, &[Format::Markdown, Format::Json], false, &[dir.join("photos")]).unwrap();
    (c, out)
}

/// `out/article.json` with `change` applied to its JSON.
fn tampered(out: &Path, change: impl FnOnce(&mut serde_json::Value)) -> Article {
    let p = out.join("article.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    change(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
    Article::load(&p).unwrap()
}

#[test]
fn edit_copies_only_regular_files_from_the_article_folder_or_the_library() {
    let dir = tmp("edit-sources");
    let (c, out) = rendered(&dir);
    let secret = dir.join("secret.txt");
    std::fs::write(&secret, "private").unwrap();
    std::os::unix::fs::symlink(&secret, dir.join("photos/link.png")).unwrap();
    let fifo = dir.join("photos/pipe.png");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let cases = [(secret.clone(), "outside"), (dir.join("photos/link.png"), "outside"), (fifo, "not a regular file"), (PathBuf::from("/etc/hostname"), "outside")];
    for (path, why) in cases {
        let mut a = tampered(&out, |v| v["images"][1]["candidates"][2]["path"] = path.to_str().unwrap().into());
        c.edit(&mut a, &Edit::Swap { slot: 1, candidate: 2 }).unwrap();
        let e = render::write(&mut a, &out, &[Format::Markdown, Format::Json], true, &[dir.join("photos")]).unwrap_err().to_string();
        assert!(e.contains("article.json") && e.contains("images[1].candidates[2].path") && e.contains(path.to_str().unwrap()) && e.contains(why), "{e}");
    }
    let copied: Vec<String> = std::fs::read_dir(out.join("assets")).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
    assert!(!copied.iter().any(|t| t == "private"), "{copied:?}");
    // A copy already inside the article's own folder may be used again.
    let own = out.join("assets/01-ethiopia-coffee.png");
    let mut a = tampered(&out, |v| v["images"][1]["candidates"][2]["path"] = own.to_str().unwrap().into());
    c.edit(&mut a, &Edit::Swap { slot: 1, candidate: 2 }).unwrap();
    render::write(&mut a, &out, &[Format::Markdown, Format::Json], true, &[dir.join("photos")]).unwrap();
}

#[test]
fn copies_never_write_through_a_planted_symlink() {
    let dir = tmp("symlink-targets");
    let (c, out) = rendered(&dir);
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    let assets = out.join("assets");
    let names: Vec<String> = std::fs::read_dir(&assets).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    for name in &names {
        std::fs::remove_file(assets.join(name)).unwrap();
        std::os::unix::fs::symlink(&victim, assets.join(name)).unwrap();
        std::os::unix::fs::symlink(&victim, assets.join(format!(".{name}.tmp"))).unwrap();
    }
    std::os::unix::fs::symlink(&victim, out.join(".article.md.tmp")).unwrap();
    let mut a = Article::load(&out.join("article.json")).unwrap();
    c.edit(&mut a, &Edit::Swap { slot: 0, candidate: 1 }).unwrap();
    render::write(&mut a, &out, &[Format::Markdown, Format::Json], true, &[dir.join("photos")]).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    for s in &a.images {
        let p = out.join(s.asset.as_ref().unwrap());
        assert!(std::fs::symlink_metadata(&p).unwrap().is_file(), "{}", p.display());
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&s.image().unwrap().path).unwrap());
    }
}

#[test]
fn stale_assets_are_deleted_only_inside_the_assets_folder() {
    let dir = tmp("stale");
    let (_c, out) = rendered(&dir);
    let outside = dir.join("precious");
    std::fs::create_dir_all(&outside).unwrap();
    for f in ["a.txt", "b.txt", "c.txt"] {
        std::fs::write(outside.join(f), "mine").unwrap();
    }
    std::os::unix::fs::symlink(&outside, out.join("assets/sub")).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let current = Article::load(&out.join("article.json")).unwrap();
    let names = [outside.join("a.txt").to_str().unwrap().to_string(), "assets/../notes.txt".into(), "assets/sub/b.txt".into(), format!("assets/{}", outside.join("c.txt").display())];
    for pair in names.chunks(2) {
        // The previous article.json names paths outside assets/: none is deleted, each is reported.
        tampered(&out, |v| {
            for (i, n) in pair.iter().enumerate() {
                v["images"][i]["asset"] = n.as_str().into();
            }
        });
        let written = render::write(&mut current.clone(), &out, &[Format::Markdown, Format::Json], true, &[dir.join("photos")]).unwrap();
        let mut expected = pair.to_vec();
        expected.sort();
        assert_eq!(written.left_alone, expected);
    }
    for f in ["a.txt", "b.txt", "c.txt"] {
        assert_eq!(std::fs::read_to_string(outside.join(f)).unwrap(), "mine", "{f}");
    }
    assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
    // A stale copy that is inside assets/ is still removed.
    let mut a = current.clone();
    a.images.remove(0);
    let gone = out.join(current.images[0].asset.as_ref().unwrap());
    render::write(&mut a, &out, &[Format::Markdown, Format::Json], true, &[dir.join("photos")]).unwrap();
    assert!(!gone.exists());
}

#[test]
fn a_stopping_callback_ends_the_composition_at_the_next_stage_or_inside_the_writer() {
    use std::ops::ControlFlow;
    use xcomposer_composer::{Event, Stage};
    let dir = tmp("stop");
    let stop_at = |when: fn(&Event) -> bool| {
        let model = ScriptedModel::new("适合 <Seg0>", &["ethiopia coffee"]);
        let c = composer(model.clone(), &dir.join("photos"), PHOTOS);
        let mut events = 0;
        let r = c.compose_stoppable(&ComposeRequest::new("Write about coffee."), &mut |e| {
            events += 1;
            if when(&e) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        });
        let prompts = model.seen.lock().unwrap().len();
        (r.map(|a| a.title), events, prompts)
    };
    // Inside the writer: its first text stops it; nothing after the writer runs.
    let (r, events, prompts) = stop_at(|e| matches!(e, Event::Text(_)));
    assert!(matches!(r, Err(ComposeError::Cancelled)), "{r:?}");
    assert_eq!((events, prompts), (2, 1), "writer started, one text; only the writer's prompt ran");
    // Between stages: the spotter's start stops it before the spotter's prompt.
    let (r, _, before_spot) = stop_at(|e| matches!(e, Event::Started(Stage::Spot)));
    assert!(matches!(r, Err(ComposeError::Cancelled)), "{r:?}");
    let (whole, _, all) = stop_at(|_| false);
    assert_eq!(whole.unwrap(), "Coffee Through Time");
    assert!(before_spot < all, "the stages after the stop ran no prompt: {before_spot} of {all}");
}
