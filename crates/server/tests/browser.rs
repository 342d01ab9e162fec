//! The web app in real headless Chromium (Debian's `chromium` + `chromium-driver`, which
//! `.ci/run` installs when missing), driven over the W3C WebDriver protocol with reqwest:
//! cancel a composition once its text streams, compose an article with the default models
//! through the page, see the text and an image
//! appear, swap, re-caption, delete, add, download the bundle, check that markup typed into a
//! caption stays text, and chat (an uploaded image refused by the text model, two turns).
//! A screenshot of each step goes to target/tmp/browser-screens/; the asserts are on the DOM.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: Child,
    url: String,
    http: reqwest::Client,
    screens: PathBuf,
    step: usize,
}

impl Drop for Driver {
    /// Ends the session (which closes Chromium, on a panic too), then stops chromedriver.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let rest = self.url.trim_start_matches("http://");
        if let Some((host, path)) = rest.split_once('/')
            && let Ok(mut s) = std::net::TcpStream::connect(host)
        {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(s, "DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = s.read_to_end(&mut Vec::new());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Driver {
    async fn start(downloads: &Path) -> Driver {
        let find = || ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"].into_iter().find(|p| Path::new(p).exists());
        if find().is_none() {
            // A fresh machine: install them as .ci/run does (apt-get, as root or through sudo).
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-chromium.sh");
            let status = Command::new("bash").arg(&script).status().expect("running scripts/install-chromium.sh");
            assert!(status.success(), "scripts/install-chromium.sh failed ({status}): the browser test needs Debian's chromium and chromium-driver");
        }
        let exe = find().unwrap_or_else(|| panic!("the browser test needs Debian's chromium and chromium-driver (scripts/install-chromium.sh installs them)"));
        let port = free_port();
        let child = Command::new(exe).arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("starting chromedriver");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if http.get(format!("{base}/status")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1600"],
            "prefs": {"download.default_directory": downloads.to_string_lossy(), "download.prompt_for_download": false}
        }}}});
        let r: Value = http.post(format!("{base}/session")).json(&caps).send().await.unwrap().json().await.unwrap();
        let id = r["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {r}")).to_string();
        let screens = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-screens");
        let _ = std::fs::remove_dir_all(&screens);
        std::fs::create_dir_all(&screens).unwrap();
        Driver { child, url: format!("{base}/session/{id}"), http, screens, step: 0 }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.url));
        if method != reqwest::Method::GET {
            req = req.json(&body);
        }
        let r: Value = req.send().await.unwrap().json().await.unwrap();
        if r["value"].get("error").is_some() {
            panic!("WebDriver {path}: {}", r["value"]);
        }
        r["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", json!({"url": url})).await;
    }

    async fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(reqwest::Method::POST, "/execute/sync", json!({"script": script, "args": args})).await
    }

    async fn find(&self, css: &str) -> String {
        let v = self.cmd(reqwest::Method::POST, "/element", json!({"using": "css selector", "value": css})).await;
        v[ELEMENT].as_str().unwrap().to_string()
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{e}/click"), json!({})).await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{e}/clear"), json!({})).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{e}/value"), json!({"text": text})).await;
    }

    /// Polls a script until it returns something truthy, up to `secs`.
    async fn wait(&self, what: &str, script: &str, secs: u64) -> Value {
        let t = Instant::now();
        loop {
            let v = self.js(script, json!([])).await;
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            let err = self.js("return document.getElementById('error') ? document.getElementById('error').textContent : ''", json!([])).await;
            assert!(t.elapsed().as_secs() < secs, "waited {secs} s for {what}; the page's error line: {err}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn screenshot(&mut self, name: &str) {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap();
        self.step += 1;
        std::fs::write(self.screens.join(format!("{:02}-{name}.png", self.step)), png).unwrap();
    }
}

async fn edits_reach(d: &Driver, n: usize, what: &str) {
    d.wait(what, &format!("return document.getElementById('article').dataset.edits === '{n}'"), 120).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_edit_download_and_chat_in_headless_chromium() {
    let data = common::data_dir("browser");
    let downloads = data.join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let mut d = Driver::start(&downloads).await;
    let base = common::serve_articles(&data).await;
    cancel_through_the_page(&mut d, &base).await;
    compose_through_the_page(&mut d, &base).await;
    edit_through_the_page(&mut d).await;
    download_the_bundle(&d, &downloads).await;
    chat_through_the_page(&mut d, &base).await;
    assert!(d.screens.read_dir().unwrap().count() >= 10);
}

/// A composition cancelled from the page once its text streams: the page says so, no article.
async fn cancel_through_the_page(d: &mut Driver, base: &str) {
    d.go(&format!("{base}/")).await;
    d.type_into("#instruction", "Write a very long article about tea.").await;
    d.click("#go").await;
    d.wait("streamed text", "return document.getElementById('live').textContent.length > 0", 120).await;
    d.click("#cancel").await;
    d.wait("the cancel", "return document.querySelector('#stages li.cancelled')", 60).await;
    d.wait("the status", "return document.getElementById('article').textContent.includes('cancelled')", 30).await;
    assert_eq!(d.js("return document.getElementById('cancel').hidden", json!([])).await, json!(true));
    d.screenshot("cancelled").await;
}

async fn compose_through_the_page(d: &mut Driver, base: &str) {
    d.go(&format!("{base}/")).await;
    d.type_into("#instruction", "Write an illustrated article about coffee.").await;
    d.type_into("#images", "1").await;
    d.screenshot("compose-form").await;
    d.click("#go").await;
    d.wait("streamed text", "return document.getElementById('live').textContent.length > 20", 120).await;
    d.screenshot("text-streaming").await;
    d.wait("the article", "return document.querySelector('#article h1')", 180).await;
    d.wait("the image", "const i = document.querySelector('#article figure img'); return i && i.complete && i.naturalWidth > 0", 30).await;
    let live = d.js("return document.getElementById('live').textContent", json!([])).await;
    assert!(live.as_str().unwrap().split_whitespace().count() > 10);
    let stages = d.js("return [...document.querySelectorAll('#stages li.finished')].length", json!([])).await;
    assert!(stages.as_u64().unwrap() >= 4, "finished stages shown: {stages}");
    d.screenshot("article").await;
}

async fn edit_through_the_page(d: &mut Driver) {
    let d = &mut *d;
    d.click("#article button[data-op=swap][data-candidate='1']").await;
    edits_reach(d, 1, "the swap").await;
    let chosen = d.js("return document.querySelector(\"#article button[data-op=swap][data-candidate='1']\").textContent", json!([])).await;
    assert!(chosen.as_str().unwrap().starts_with('✓'), "{chosen}");
    d.screenshot("swapped").await;

    let before = d.js("return document.querySelector('#article figcaption').textContent", json!([])).await;
    d.click("#article button[data-op=recaption]").await;
    edits_reach(d, 2, "the re-caption").await;
    d.screenshot("recaptioned").await;
    let after = d.js("return document.querySelector('#article figcaption').textContent", json!([])).await;
    assert!(!after.as_str().unwrap().is_empty(), "re-captioned: {before} → {after}");

    // Markup typed as a caption stays text.
    let hostile = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>";
    d.type_into("#article figure input[aria-label=caption]", hostile).await;
    d.click("#article button[data-op=caption]").await;
    edits_reach(d, 3, "the caption").await;
    assert_eq!(d.js("return document.querySelector('#article figcaption').textContent", json!([])).await, json!(hostile));
    assert_eq!(d.js("return document.querySelectorAll('#article img[src=x], #article script').length", json!([])).await, json!(0));
    assert_ne!(d.js("return document.title", json!([])).await, json!("pwned"));
    d.screenshot("hostile-caption-inert").await;

    d.click("#article button[data-op=delete]").await;
    edits_reach(d, 4, "the delete").await;
    d.screenshot("deleted").await;
    d.click("#article button[data-op=add][data-after='0']").await;
    edits_reach(d, 5, "the add").await;
    d.wait("the added image", "return document.querySelectorAll('#article figure').length >= 1", 30).await;
    d.screenshot("added").await;
}

async fn download_the_bundle(d: &Driver, downloads: &Path) {
    d.click("#download").await;
    let t = Instant::now();
    let zip = loop {
        let found = std::fs::read_dir(downloads).unwrap().flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == "zip"));
        if let Some(p) = found {
            break p;
        }
        assert!(t.elapsed().as_secs() < 20, "no bundle downloaded into {}", downloads.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let archive = zip::ZipArchive::new(std::fs::File::open(&zip).unwrap()).unwrap();
    assert!(archive.file_names().any(|n| n == "article.md"));
}

/// The text model refuses an uploaded image, then answers two turns.
async fn chat_through_the_page(d: &mut Driver, base: &str) {
    d.go(&format!("{base}/chat")).await;
    d.wait("the model list", "return document.querySelectorAll('#model option').length", 20).await;
    let image = common::fixture("images").join("coffee.png").canonicalize().unwrap();
    d.type_into("#text", "What is in this picture?").await;
    let file = d.find("#file").await;
    d.cmd(reqwest::Method::POST, &format!("/element/{file}/value"), json!({"text": image.to_string_lossy()})).await;
    d.click("#send").await;
    let err = d.wait("the image refusal", "return document.getElementById('error').textContent", 60).await;
    assert!(err.as_str().unwrap().contains("cannot see images"), "{err}");
    assert_eq!(d.js("return document.querySelectorAll('.msg.assistant').length", json!([])).await, json!(0), "the refused turn leaves no empty answer");
    d.screenshot("chat-image-refused").await;
    for (i, q) in ["Name a colour.", "And another one?"].iter().enumerate() {
        d.type_into("#text", q).await;
        d.click("#send").await;
        d.wait("an answer", &format!("const a = document.querySelectorAll('.msg.assistant span'); return a.length === {} && a[{}].textContent.length > 0", i + 1, i), 60).await;
    }
    d.screenshot("chat-two-turns").await;
}
