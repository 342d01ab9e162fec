//! `compose --remote`: an article from the default library and a remote image-search endpoint
//! on loopback (allowed with `--allow-address`), beside a source that is down and one that is
//! too slow; the remote candidates carry their URL, licence and source, a chosen one is copied
//! into the article's `assets/` (never linked), and the failed sources are recorded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

fn library() -> PathBuf {
    xcomposer_retrieval::default_library::ensure(&xcomposer_llm::fetch::models_dir(), &mut |m| eprintln!("[fetch] {m}")).expect("fetching the default library")
}

fn model() {
    xcomposer_llm::fetch::ensure(&xcomposer_llm::fetch::SMOLLM2_135M, &xcomposer_llm::fetch::models_dir(), &mut |m| eprintln!("[fetch] {m}")).expect("fetching the default model");
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn handle(mut s: TcpStream, port: u16, lib: &Path) {
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut length = 0;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let _ = reader.read_exact(&mut vec![0; length]);
    let base = format!("http://127.0.0.1:{port}");
    let (ty, body): (&str, Vec<u8>) = match path.as_str() {
        "/search" => (
            "application/json",
            serde_json::json!({"images": [
                {"url": format!("{base}/img/puppy.jpg"), "title": "A puppy", "description": "A young dog looking at the camera", "licence": "CC0", "source_page": format!("{base}/puppy")},
                {"url": format!("{base}/img/kitten.png"), "title": "A tabby cat", "license": "CC-BY-4.0"},
            ]})
            .to_string()
            .into_bytes(),
        ),
        "/slow" => {
            thread::sleep(Duration::from_secs(30));
            ("application/json", b"{\"images\": []}".to_vec())
        }
        "/img/puppy.jpg" => ("image/jpeg", std::fs::read(lib.join("dog.jpg")).unwrap()),
        "/img/kitten.png" => ("image/png", std::fs::read(lib.join("chelsea.png")).unwrap()),
        _ => ("text/plain", b"no".to_vec()),
    };
    let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: {ty}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let _ = s.write_all(&body);
}

fn server(lib: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let lib = lib.clone();
            thread::spawn(move || handle(conn, port, &lib));
        }
    });
    format!("http://127.0.0.1:{port}")
}

#[test]
fn compose_with_a_remote_source_beside_the_default_library() {
    model();
    let lib = library();
    let base = server(lib.clone());
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}/search", closed.local_addr().unwrap());
    drop(closed);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-remote-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (out, cache) = (dir.join("article"), dir.join("cache"));
    let remote_flags: Vec<String> = [
        "--remote", &format!("{base}/search"), "--remote", &down, "--remote", &format!("{base}/slow"),
        "--allow-address", "127.0.0.0/8", "--fetch-timeout", "3", "--remote-cache", cache.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // The flags go before an edit's subcommand.
    let run = |args: &[&str], subcommand: &[&str]| -> Output {
        let o = Command::new(env!("CARGO_BIN_EXE_xcomposer")).args(args).args(&remote_flags).args(subcommand).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    run(&["compose", "Write an illustrated article about cats and dogs.", "--out", out.to_str().unwrap(), "--max-new-tokens", "80", "--max-paragraphs", "3", "--images", "1", "--candidates", "40"], &[]);
    let json = out.join("article.json");
    let article: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let slot = &article["images"][0];
    let candidates = slot["candidates"].as_array().unwrap();
    let remote: Vec<(usize, &serde_json::Value)> = candidates.iter().enumerate().filter(|(_, c)| c.get("remote").is_some()).collect();
    assert_eq!(remote.len(), 2, "both remote images are scored beside the library's: {slot}");
    assert!(candidates.len() > 2, "library candidates too: {slot}");
    let puppy = remote.iter().find(|(_, c)| c["remote"]["url"] == format!("{base}/img/puppy.jpg")).expect("the puppy is a candidate").1;
    assert_eq!(puppy["remote"]["licence"], "CC0");
    assert_eq!(puppy["remote"]["source_page"], format!("{base}/puppy"));
    assert_eq!(puppy["remote"]["source"], format!("{base}/search"));
    assert!(puppy["description"].as_str().unwrap().contains("A young dog"), "{puppy}");
    assert!(Path::new(puppy["path"].as_str().unwrap()).starts_with(&cache), "{puppy}");
    let kitten = remote.iter().find(|(_, c)| c["remote"]["url"] == format!("{base}/img/kitten.png")).unwrap().1;
    assert_eq!(kitten["remote"]["licence"], "CC-BY-4.0");
    let why = slot["selection"]["detail"].as_str().unwrap();
    assert!(why.contains(&format!("remote source {down} skipped")), "{why}");
    assert!(why.contains(&format!("remote source {base}/slow skipped")) && why.contains("within 3 s"), "{why}");

    // Show the puppy: it is copied into assets/, and nothing links to the server.
    let j = remote.iter().find(|(_, c)| c["remote"]["url"] == format!("{base}/img/puppy.jpg")).unwrap().0;
    run(&["edit", json.to_str().unwrap()], &["swap", "0", &j.to_string()]);
    let article: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let asset = out.join(article["images"][0]["asset"].as_str().unwrap());
    assert_eq!(std::fs::read(&asset).unwrap(), std::fs::read(lib.join("dog.jpg")).unwrap());
    for f in ["article.md", "article.html"] {
        let text = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(!text.contains("src=\"http") && !text.contains("](http"), "{f} links to a remote image: {text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn chat_refuses_an_image_url_of_a_private_address_before_loading_a_model() {
    let out = Command::new(env!("CARGO_BIN_EXE_xcomposer")).env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE").args(["chat", "--image", "http://10.1.2.3/cat.png", "What is this?"]).output().unwrap();
    assert!(!out.status.success());
    assert_eq!(stderr(&out).trim(), "error: http://10.1.2.3/cat.png: 10.1.2.3 resolves to 10.1.2.3, a private address; refused (only public addresses are fetched unless allowed with --allow-address)");
}
