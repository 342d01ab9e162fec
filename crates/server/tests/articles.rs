//! The article API against the real server with the default models and library: a composition
//! job followed over server-sent events, the article in every format, edits, list, delete, bad
//! requests naming the field, paths that try to leave the data folder, and a restart that
//! finds the articles again.

mod common;

use std::io::Read;
use std::path::Path;

use serde_json::{Value, json};

async fn serve(data: &Path) -> String {
    common::serve_articles(data).await
}

async fn json_of(r: reqwest::Response) -> (u16, Value) {
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_follow_fetch_edit_restart_and_delete_an_article() {
    let data = common::data_dir("articles");
    let base = serve(&data).await;
    let c = reqwest::Client::new();
    let api = format!("{base}/api/articles");

    for (body, param) in [
        (json!({"instruction": "  "}), "instruction"),
        (json!({"instruction": "x", "images": 20}), "images"),
        (json!({"instruction": "x", "library": "../../etc"}), "library"),
        (json!({"instruction": "x", "max_new_tokens": 0}), "max_new_tokens"),
        (json!({"instruction": "x", "colour": "red"}), "colour"),
    ] {
        let (status, v) = json_of(c.post(&api).json(&body).send().await.unwrap()).await;
        assert_eq!((status, v["error"]["param"].as_str()), (400, Some(param)), "{body} → {v}");
    }

    let (status, v) = json_of(c.post(&api).json(&json!({"instruction": "Write an illustrated article about coffee.", "images": 1, "max_new_tokens": 60, "seed": 0})).send().await.unwrap()).await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let api = format!("{api}/{id}");
    follow_and_fetch(&c, &api).await;
    edit_and_escape(&c, &api).await;
    restart_and_delete(&c, &data, &id).await;
}

/// The events (stages, streamed text, the end), then the article in every format.
async fn follow_and_fetch(c: &reqwest::Client, api: &str) {
    let body = c.get(format!("{api}/events")).send().await.unwrap().text().await.unwrap();
    let events: Vec<Value> = common::sse_data(&body).iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(events.iter().any(|e| e["type"] == "stage" && e["stage"] == "writer" && e["state"] == "started"));
    assert!(events.iter().any(|e| e["type"] == "stage" && e["stage"] == "selector" && e["state"] == "finished"));
    let text: String = events.iter().filter_map(|e| e["text"].as_str()).collect();
    assert!(text.split_whitespace().count() > 10, "streamed text: {text:?}");
    assert_eq!(events.last().unwrap(), &json!({"type": "end", "status": "done"}), "{events:?}");

    // The article, as JSON, Markdown, HTML and a bundle.
    let (_, v) = json_of(c.get(api).send().await.unwrap()).await;
    assert_eq!(v["job"]["status"], "done");
    let article = &v["article"];
    assert_eq!(article["images"].as_array().unwrap().len(), 1, "{article}");
    let md = c.get(format!("{api}/article.md")).send().await.unwrap().text().await.unwrap();
    assert!(md.starts_with(&format!("# {}", article["title"].as_str().unwrap())));
    let asset = article["images"][0]["asset"].as_str().unwrap().to_string();
    assert!(md.contains(&format!("]({asset} ")), "{md}");
    let html = c.get(format!("{api}/article.html")).send().await.unwrap();
    assert!(html.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    assert!(html.text().await.unwrap().contains("<h1>"));
    let img = c.get(format!("{api}/{asset}")).send().await.unwrap();
    assert_eq!(img.status(), 200);
    assert!(img.headers()["content-type"].to_str().unwrap().starts_with("image/"));
    let zip_bytes = c.get(format!("{api}/bundle.zip")).send().await.unwrap().bytes().await.unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes.to_vec())).unwrap();
    let names: Vec<String> = zip.file_names().map(String::from).collect();
    assert!(names.contains(&"article.md".to_string()) && names.contains(&asset), "{names:?}");
    let mut zipped_md = String::new();
    zip.by_name("article.md").unwrap().read_to_string(&mut zipped_md).unwrap();
    assert_eq!(zipped_md, md);
}

/// Edits, and paths that try to leave the data folder.
async fn edit_and_escape(c: &reqwest::Client, api: &str) {
    let edit = |body: Value| c.post(format!("{api}/edit")).json(&body).send();
    let (status, v) = json_of(edit(json!({"op": "swap", "slot": 0, "candidate": 2})).await.unwrap()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["article"]["images"][0]["chosen"], 2);
    let (status, v) = json_of(edit(json!({"op": "swap", "slot": 3, "candidate": 0})).await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("slot 3"));
    let (status, v) = json_of(edit(json!({"op": "caption", "slot": 0, "text": "a cup of espresso"})).await.unwrap()).await;
    assert_eq!((status, v["article"]["images"][0]["caption"].as_str()), (200, Some("a cup of espresso")), "{v}");
    let (status, v) = json_of(edit(json!({"op": "delete", "slot": 0})).await.unwrap()).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["summary"].as_str().unwrap().contains('0'));

    // Paths that try to leave the data folder.
    let list = api.rsplit_once('/').unwrap().0;
    assert_eq!(c.get(format!("{list}/..%2F..%2Fetc/article.md")).send().await.unwrap().status(), 404);
    assert_eq!(c.get(format!("{api}/assets/..%2Fjob.json")).send().await.unwrap().status(), 400);
    assert_eq!(c.get(format!("{api}/job.json")).send().await.unwrap().status(), 404);
}

/// A second server on the same data folder finds the article; then it is deleted.
async fn restart_and_delete(c: &reqwest::Client, data: &Path, id: &str) {
    let again = serve(data).await;
    let (_, list) = json_of(c.get(format!("{again}/api/articles")).send().await.unwrap()).await;
    assert_eq!(list["data"][0]["id"], id);
    assert_eq!(list["data"][0]["status"], "done");
    let (_, v) = json_of(c.get(format!("{again}/api/articles/{id}")).send().await.unwrap()).await;
    assert_eq!(v["article"]["edits"].as_array().unwrap().len(), 3, "{v}");

    // Delete.
    assert_eq!(c.delete(format!("{again}/api/articles/{id}")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(format!("{again}/api/articles/{id}")).send().await.unwrap().status(), 404);
    assert!(!data.join("articles").join(id).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_article_the_full_queue_refuses_leaves_nothing_behind() {
    let data = common::data_dir("articles-full");
    let base = common::serve_articles_with(&data, xcomposer_server::Limits { queue_capacity: 0, ..Default::default() }).await;
    let c = reqwest::Client::new();
    let r = c.post(format!("{base}/api/articles")).json(&json!({"instruction": "Write about tea."})).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let (_, list) = json_of(c.get(format!("{base}/api/articles")).send().await.unwrap()).await;
    assert_eq!(list["data"], json!([]));
    assert_eq!(std::fs::read_dir(data.join("articles")).unwrap().count(), 0);
}

/// The events of a job until its end, as JSON.
async fn events_of(c: &reqwest::Client, api: &str) -> Vec<Value> {
    let body = c.get(format!("{api}/events")).send().await.unwrap().text().await.unwrap();
    common::sse_data(&body).iter().map(|e| serde_json::from_str(e).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_composition_ends_cancelled_with_nothing_stored_and_frees_the_model() {
    let data = common::data_dir("articles-cancel");
    let base = serve(&data).await;
    let c = reqwest::Client::new();
    let create = |instruction: &str| c.post(format!("{base}/api/articles")).json(&json!({"instruction": instruction, "images": 1, "max_new_tokens": 2000})).send();
    let (_, a) = json_of(create("Write a very long illustrated article about the history of coffee.").await.unwrap()).await;
    let a = format!("{base}/api/articles/{}", a["id"].as_str().unwrap());
    // A is writing once its first text has streamed.
    let mut events = c.get(format!("{a}/events")).send().await.unwrap();
    let mut seen = String::new();
    while !seen.contains("\"type\":\"text\"") {
        seen.push_str(&String::from_utf8_lossy(&events.chunk().await.unwrap().expect("more events")));
    }
    // B waits behind A and is cancelled while queued; then A is cancelled mid-text.
    let (_, b) = json_of(create("Write about tea.").await.unwrap()).await;
    let b = format!("{base}/api/articles/{}", b["id"].as_str().unwrap());
    let (status, v) = json_of(c.post(format!("{b}/cancel")).send().await.unwrap()).await;
    assert_eq!((status, v["status"].as_str()), (202, Some("queued")), "{v}");
    let (status, v) = json_of(c.post(format!("{a}/cancel")).send().await.unwrap()).await;
    assert_eq!((status, v["status"].as_str()), (202, Some("running")), "{v}");
    drop(events);
    let a_events = events_of(&c, &a).await;
    assert_eq!(a_events.last().unwrap(), &json!({"type": "end", "status": "cancelled"}), "{a_events:?}");
    assert!(!a_events.iter().any(|e| e["stage"] == "spotter"), "no stage after the writer ran: {a_events:?}");
    let b_events = events_of(&c, &b).await;
    assert_eq!(b_events, [json!({"type": "cancelled"}), json!({"type": "end", "status": "cancelled"})]);
    for api in [&a, &b] {
        let (_, v) = json_of(c.get(api.as_str()).send().await.unwrap()).await;
        assert_eq!((v["job"]["status"].as_str(), &v["article"]), (Some("cancelled"), &Value::Null), "{v}");
        assert_eq!(c.get(format!("{api}/article.md")).send().await.unwrap().status(), 404);
        let id = api.rsplit('/').next().unwrap();
        let files: Vec<_> = std::fs::read_dir(data.join("articles").join(id)).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files, ["job.json"], "nothing of the article is stored");
        // An ended job cannot be cancelled again; it can be deleted.
        assert_eq!(c.post(format!("{api}/cancel")).send().await.unwrap().status(), 409);
        assert_eq!(c.delete(api.as_str()).send().await.unwrap().status(), 200);
    }
    // The model thread is free: a chat is answered.
    let r = c.post(format!("{base}/v1/chat/completions")).json(&common::ask("Name a colour.", 4)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
