//! The safe fetcher against a test HTTP server on loopback (allowed only through the explicit
//! address allow-list): good images, a search endpoint, and every way a server can misbehave.
//! Each refusal must be the documented error, and nothing may be written outside the cache nor
//! any partial file left in it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use sha2::{Digest, Sha256};
use xcomposer_retrieval::remote::library_urls::{fetch_library_urls, listed_urls};
use xcomposer_retrieval::remote::{AddressPolicy, CacheRecord, FetchError, FetchOptions, Fetcher, ImageMeta, RemoteSource, SearchRequest};
use xcomposer_vision::ImageLimits;

/// What the test server saw.
#[derive(Default)]
struct Seen {
    search_bodies: Mutex<Vec<String>>,
    active: AtomicUsize,
    max_active: AtomicUsize,
}

fn png(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let mut out = vec![];
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb)).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    out
}

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let mut out = vec![];
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 90])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Jpeg).unwrap();
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A valid PNG header claiming 100000×100000 pixels, with a few bytes of compressed data: tiny
/// on the wire, 30 GB if decoded.
fn bomb_png() -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        let body: Vec<u8> = kind.iter().chain(data).copied().collect();
        c.extend(&body);
        c.extend(crc32(&body).to_be_bytes());
        c
    };
    let mut ihdr = vec![];
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(chunk(b"IHDR", &ihdr));
    out.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01]));
    out.extend(chunk(b"IEND", &[]));
    out
}

fn respond(s: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| *k == "Content-Length") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
}

fn handle(mut s: TcpStream, port: u16, seen: &Seen) {
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
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
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let base = format!("http://127.0.0.1:{port}");
    let ty = |t: &str| vec![("Content-Type", t.to_string())];
    match path.split('?').next().unwrap() {
        "/good.png" => respond(&mut s, "200 OK", &ty("image/png"), &png(32, 24, [200, 30, 30])),
        "/good.jpg" => respond(&mut s, "200 OK", &ty("image/jpeg; charset=binary"), &jpeg(40, 30)),
        "/search" => {
            seen.search_bodies.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
            let answer = serde_json::json!({"images": [
                {"url": format!("{base}/good.png"), "title": "A red square", "licence": "CC0", "source_page": format!("{base}/page")},
                {"url": format!("{base}/good.jpg"), "description": "A gradient", "license": "CC-BY-4.0"},
                {"url": format!("{base}/html-as-png")},
            ]});
            respond(&mut s, "200 OK", &ty("application/json"), answer.to_string().as_bytes());
        }
        "/not-json" => respond(&mut s, "200 OK", &ty("application/json"), b"<html>oops</html>"),
        "/slow" => {
            thread::sleep(Duration::from_secs(4));
            respond(&mut s, "200 OK", &ty("image/png"), &png(4, 4, [0, 0, 0]));
        }
        "/endless" => {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n\x89PNG\r\n\x1a\n");
            let chunk = vec![0u8; 64 << 10];
            while s.write_all(&chunk).is_ok() {}
        }
        "/html-as-png" => respond(&mut s, "200 OK", &ty("image/png"), b"<!doctype html><html><body>not an image</body></html>"),
        "/png-as-html" => respond(&mut s, "200 OK", &ty("text/html"), &png(8, 8, [1, 2, 3])),
        "/loop" => respond(&mut s, "302 Found", &[("Location", "/loop".into())], b""),
        "/redirect-once" => respond(&mut s, "301 Moved Permanently", &[("Location", format!("{base}/good.png"))], b""),
        "/to-private" => respond(&mut s, "302 Found", &[("Location", "http://10.20.30.40/secret.png".into())], b""),
        "/to-mapped" => respond(&mut s, "307 Temporary Redirect", &[("Location", "http://[::ffff:169.254.169.254]/latest/meta-data".into())], b""),
        "/huge" => respond(&mut s, "200 OK", &[("Content-Type", "image/png".into()), ("Content-Length", "10000000000".into())], b"\x89PNG"),
        "/bomb.png" => respond(&mut s, "200 OK", &ty("image/png"), &bomb_png()),
        "/missing" => respond(&mut s, "404 Not Found", &ty("text/plain"), b"no"),
        "/counted.png" => {
            let now = seen.active.fetch_add(1, Ordering::SeqCst) + 1;
            seen.max_active.fetch_max(now, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(150));
            seen.active.fetch_sub(1, Ordering::SeqCst);
            respond(&mut s, "200 OK", &ty("image/png"), &png(16, 16, [0, 200, 0]));
        }
        _ => respond(&mut s, "404 Not Found", &[], b""),
    }
}

/// Starts the server; returns its base URL and what it sees.
fn server() -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let s = s.clone();
            thread::spawn(move || handle(conn, port, &s));
        }
    });
    (format!("http://127.0.0.1:{port}"), seen)
}

/// A fresh folder holding only the cache folder.
fn scratch(name: &str) -> (PathBuf, PathBuf) {
    let root = std::env::temp_dir().join(format!("xcomposer-remote-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    (root.clone(), root.join("cache"))
}

fn loopback_options() -> FetchOptions {
    FetchOptions {
        timeout: Duration::from_millis(1500),
        addresses: AddressPolicy::allowing(&["127.0.0.0/8".into()]).unwrap(),
        limits: ImageLimits { max_pixels: 4_000_000, max_file_bytes: 1 << 20 },
        ..FetchOptions::default()
    }
}

/// Every file under `dir`, relative to it.
fn files(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

#[test]
fn good_images_are_checked_cached_and_recorded() {
    let (base, _) = server();
    let (root, cache) = scratch("good");
    let f = Fetcher::new(loopback_options(), &cache).unwrap();
    let meta = ImageMeta { title: Some("A red square".into()), licence: Some("CC0".into()), ..ImageMeta::default() };
    let got = f.fetch_image(&format!("{base}/good.png"), meta.clone()).unwrap();
    let sha: String = Sha256::digest(png(32, 24, [200, 30, 30])).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(got.path, cache.join(format!("{sha}.png")));
    let record: CacheRecord = serde_json::from_slice(&std::fs::read(cache.join(format!("{sha}.png.json"))).unwrap()).unwrap();
    assert_eq!((record.url.as_str(), record.content_type.as_str(), record.size, record.sha256.as_str()), (format!("{base}/good.png").as_str(), "image/png", (32, 24), sha.as_str()));
    assert_eq!(record.meta, meta);
    assert!(record.fetched_at > 1_600_000_000);
    // The sidecar's title is what the library indexer reads as the image's text.
    let sidecar: serde_json::Value = serde_json::from_slice(&std::fs::read(cache.join(format!("{sha}.png.json"))).unwrap()).unwrap();
    assert_eq!(sidecar["title"], "A red square");

    let jpg = f.fetch_image(&format!("{base}/good.jpg"), ImageMeta::default()).unwrap();
    assert_eq!((jpg.record.content_type.as_str(), jpg.record.size), ("image/jpeg", (40, 30)));
    let redirected = f.fetch_image(&format!("{base}/redirect-once"), ImageMeta::default()).unwrap();
    assert_eq!(redirected.record.final_url, format!("{base}/good.png"));
    assert_eq!(redirected.path, got.path, "the same bytes are one cached file");
    assert_eq!(files(&root), ["cache", &format!("cache/{sha}.png"), &format!("cache/{sha}.png.json"), &format!("cache/{}.jpg", jpg.record.sha256), &format!("cache/{}.jpg.json", jpg.record.sha256)].iter().map(|s| s.to_string()).collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>());
    // A second fetcher on the same cache finds the URL without asking the server.
    let again = Fetcher::new(loopback_options(), &cache).unwrap();
    assert_eq!(again.cache().lookup(&format!("{base}/good.jpg")).unwrap().0, jpg.path);
    // A cached URL is still checked against the fetcher's rules: a stricter one refuses it.
    let strict = Fetcher::new(FetchOptions::default(), &cache).unwrap();
    assert_eq!(strict.fetch_image(&format!("{base}/good.jpg"), ImageMeta::default()).unwrap_err().rule(), "private_address");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn every_misbehaving_server_gets_its_documented_refusal_and_leaves_nothing() {
    let (base, _) = server();
    let (root, cache) = scratch("refusals");
    let f = Fetcher::new(loopback_options(), &cache).unwrap();
    let cases: [(&str, &str, &str); 13] = [
        ("/slow", "timeout", "no complete answer within 1.5 s"),
        ("/endless", "too_large", "the body is over 1048576 bytes"),
        ("/html-as-png", "content_type", "Content-Type \"image/png\" but the bytes are not a PNG, JPEG, WebP or GIF image"),
        ("/png-as-html", "content_type", "Content-Type \"text/html\" but the bytes are a png image"),
        ("/loop", "too_many_redirects", "more than 5 redirects"),
        ("/to-private", "private_address", "10.20.30.40 resolves to 10.20.30.40, a private address"),
        ("/to-mapped", "private_address", "a link-local address"),
        ("/huge", "too_large", "declared as 10000000000 bytes, over 1048576"),
        ("/bomb.png", "image", "100000×100000 is 10000000000 pixels, more than the limit of 4000000"),
        ("/missing", "status", "HTTP 404"),
        ("/nothing-here", "status", "HTTP 404"),
        ("ftp://127.0.0.1/x.png", "scheme", "scheme \"ftp\" refused"),
        ("not a url", "bad_url", "not a valid URL"),
    ];
    for (path, rule, words) in cases {
        let url = if path.starts_with('/') { format!("{base}{path}") } else { path.to_string() };
        let e = f.fetch_image(&url, ImageMeta::default()).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.rule(), rule, "{url}: {msg}");
        assert!(msg.contains(words), "{url}: {msg}");
        assert!(msg.starts_with(&url) || matches!(e, FetchError::PrivateAddress { .. }), "the message names the URL: {msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert_eq!(files(&root), ["cache"], "{url}: something was written");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn only_the_allow_list_opens_private_addresses_and_names_are_checked_after_resolving() {
    let (base, _) = server();
    let (root, cache) = scratch("policy");
    let strict = Fetcher::new(FetchOptions { timeout: Duration::from_secs(2), ..FetchOptions::default() }, &cache).unwrap();
    let e = strict.fetch_image(&format!("{base}/good.png"), ImageMeta::default()).unwrap_err();
    assert_eq!(e.rule(), "private_address", "{e}");
    assert!(e.to_string().contains("127.0.0.1, a loopback address"), "{e}");
    let port = base.rsplit(':').next().unwrap();
    let e = strict.fetch_image(&format!("http://localhost:{port}/good.png"), ImageMeta::default()).unwrap_err();
    assert_eq!(e.rule(), "private_address", "a name is refused by the address it resolves to: {e}");
    let hosts = FetchOptions { hosts: vec![".example.org".into()], ..loopback_options() };
    let e = Fetcher::new(hosts, &cache).unwrap().fetch_image(&format!("{base}/good.png"), ImageMeta::default()).unwrap_err();
    assert_eq!(e.rule(), "host_not_allowed", "{e}");
    assert_eq!(files(&root), ["cache"]);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn requests_to_one_host_wait_for_a_free_slot() {
    let (base, seen) = server();
    let (root, cache) = scratch("per-host");
    let f = Fetcher::new(FetchOptions { per_host: 2, timeout: Duration::from_secs(20), ..loopback_options() }, &cache).unwrap();
    thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let (f, base) = (&f, &base);
                s.spawn(move || f.fetch_image(&format!("{base}/counted.png?i={i}"), ImageMeta::default()))
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
    });
    let max = seen.max_active.load(Ordering::SeqCst);
    assert!((1..=2).contains(&max), "{max} requests were in flight at once with a limit of 2");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_search_endpoint_gives_checked_images_with_their_credits() {
    let (base, seen) = server();
    let (root, cache) = scratch("search");
    let f = Fetcher::new(loopback_options(), &cache).unwrap();
    let source = RemoteSource { endpoint: format!("{base}/search") };
    let req = SearchRequest { query: "a red square".into(), k: 3, language: "en".into() };
    let got = source.candidates(&f, &req).unwrap();
    let sent: serde_json::Value = serde_json::from_str(&seen.search_bodies.lock().unwrap()[0]).unwrap();
    assert_eq!(sent, serde_json::json!({"query": "a red square", "k": 3, "language": "en"}));
    assert_eq!(got.images.len(), 2);
    assert_eq!(got.images[0].record.meta.licence.as_deref(), Some("CC0"));
    assert_eq!(got.images[0].record.meta.source_page, Some(format!("{base}/page")));
    assert_eq!(got.images[0].record.meta.source, Some(format!("{base}/search")));
    assert_eq!(got.images[1].record.meta.licence.as_deref(), Some("CC-BY-4.0"), "`license` is read as `licence`");
    assert_eq!(got.failed.len(), 1);
    assert_eq!(got.failed[0].rule(), "content_type");
    let small = SearchRequest { k: 1, ..req.clone() };
    assert_eq!(source.candidates(&f, &small).unwrap().images.len(), 1, "only the first k are fetched");

    let e = RemoteSource { endpoint: format!("{base}/not-json") }.search(&f, &req).unwrap_err();
    assert_eq!(e.rule(), "bad_answer", "{e}");
    let e = RemoteSource { endpoint: format!("{base}/slow") }.search(&f, &req).unwrap_err();
    assert_eq!(e.rule(), "timeout", "{e}");
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}/search", closed.local_addr().unwrap());
    drop(closed);
    let e = RemoteSource { endpoint: down }.search(&f, &req).unwrap_err();
    assert_eq!(e.rule(), "transport", "{e}");
    assert!(files(&root).iter().all(|p| p == "cache" || p.starts_with("cache/") && !p.contains(".tmp")), "{:?}", files(&root));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn url_lists_over_the_cap_are_refused_naming_the_variable() {
    let (root, _) = scratch("urls-cap");
    for name in ["urls.txt", "library.json"] {
        // A sparse file one byte over the cap: nothing is written or read.
        let path = root.join(name);
        std::fs::File::create(&path).unwrap().set_len(xcomposer_retrieval::library::MAX_LIBRARY_META_BYTES + 1).unwrap();
        let e = listed_urls(&root).unwrap_err().to_string();
        assert!(e.starts_with(&path.display().to_string()) && e.contains("larger than the limit of 67108864 bytes") && e.contains("XCOMPOSER_MAX_LIBRARY_JSON_BYTES"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_library_fetches_the_urls_it_lists_into_its_remote_folder() {
    let (base, _) = server();
    let (root, _) = scratch("library-urls");
    std::fs::write(root.join("urls.txt"), format!("# holiday pictures\n{base}/good.png\n\n{base}/to-private\n")).unwrap();
    let meta = serde_json::json!({"images": {"gradient.jpg": {"url": format!("{base}/good.jpg"), "title": "A gradient", "licence": "CC0"}, "local.png": {"title": "no url"}}});
    std::fs::write(root.join("library.json"), meta.to_string()).unwrap();
    let listed = listed_urls(&root).unwrap();
    assert_eq!(listed.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(), [format!("{base}/good.png"), format!("{base}/to-private"), format!("{base}/good.jpg")]);
    assert_eq!(listed[2].1.title.as_deref(), Some("A gradient"));
    let report = fetch_library_urls(&root, loopback_options()).unwrap();
    assert_eq!((report.listed, report.stored.len(), report.failed.len()), (3, 2, 1));
    assert!(report.failed[0].1.contains("a private address"), "{:?}", report.failed);
    let jpg = &report.stored[1].1;
    assert!(jpg.starts_with(root.join("remote")), "{jpg:?}");
    let sidecar: serde_json::Value = serde_json::from_slice(&std::fs::read(format!("{}.json", jpg.display())).unwrap()).unwrap();
    assert_eq!((sidecar["title"].as_str(), sidecar["licence"].as_str()), (Some("A gradient"), Some("CC0")));
    std::fs::write(root.join("urls.txt"), [0xffu8, 0xfe]).unwrap();
    let e = listed_urls(&root).unwrap_err().to_string();
    assert!(e.contains("urls.txt: not UTF-8 text"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}
