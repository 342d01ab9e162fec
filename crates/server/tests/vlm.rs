//! Image parts answered by InternLM-XComposer when it is loaded (the tiny fixture model with
//! random weights: the text is noise, the plumbing is real), and refused by the text model.

mod common;

use base64::Engine;
use serde_json::{Value, json};
use xcomposer_server::Limits;

fn photo_data_uri() -> String {
    let dir = common::fixture("images");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "png" || e == "jpg")).collect();
    files.sort();
    let path = files.first().expect("an image in the fixtures");
    let mime = if path.extension().unwrap() == "png" { "png" } else { "jpeg" };
    format!("data:image/{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap()))
}

#[tokio::test(flavor = "multi_thread")]
async fn images_go_to_xcomposer_and_are_refused_by_the_text_model() {
    let s = common::start_with("vlm", Limits::default(), None, Some(&common::fixture("xcomposer-tiny"))).await;
    let models: Value = reqwest::get(format!("{}/v1/models", s.base)).await.unwrap().json().await.unwrap();
    assert_eq!(models["data"][1]["id"], "xcomposer-tiny");
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", s.base);
    let ask = |image: bool, stream: bool| {
        let mut content = vec![json!({"type": "text", "text": "What is in the picture?"})];
        if image {
            content.insert(0, json!({"type": "image_url", "image_url": {"url": photo_data_uri()}}));
        }
        json!({"model": "xcomposer-tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 6, "temperature": 0, "stream": stream})
    };
    let with: Value = client.post(&url).json(&ask(true, false)).send().await.unwrap().json().await.unwrap();
    let without: Value = client.post(&url).json(&ask(false, false)).send().await.unwrap().json().await.unwrap();
    assert_eq!(with["object"], "chat.completion", "{with}");
    let (pw, po) = (with["usage"]["prompt_tokens"].as_u64().unwrap(), without["usage"]["prompt_tokens"].as_u64().unwrap());
    assert!(pw > po, "the image adds its embeddings to the prompt: {pw} vs {po}");
    assert!(with["usage"]["completion_tokens"].as_u64().unwrap() <= 6);
    // Streamed: the same text.
    let body = client.post(&url).json(&ask(true, true)).send().await.unwrap().text().await.unwrap();
    let events = common::sse_data(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let streamed: String = events[..events.len() - 1].iter().map(|e| serde_json::from_str::<Value>(e).unwrap()).filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(String::from)).collect();
    assert_eq!(streamed, with["choices"][0]["message"]["content"].as_str().unwrap());
    // The text model, asked by name, still refuses the image and says which model sees it.
    let mut body = ask(true, false);
    body["model"] = json!(common::model_id());
    let r = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["param"], "messages[0].content[0].image_url.url");
    assert!(v["error"]["message"].as_str().unwrap().contains("xcomposer-tiny"), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_string_and_a_gone_stream_end_xcomposer_decoding_early_and_cleanly() {
    let panics = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = panics.clone();
    std::panic::set_hook(Box::new(move |info| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        eprintln!("panic: {info}");
    }));
    let s = common::start_with("vlm-stop", Limits::default(), None, Some(&common::fixture("xcomposer-tiny"))).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", s.base);
    let ask = |max_tokens: u32, stop: Option<&str>, stream: bool| json!({"model": "xcomposer-tiny", "messages": [{"role": "user", "content": "Describe a harbour."}], "max_tokens": max_tokens, "temperature": 0, "stop": stop, "stream": stream});
    let full: Value = client.post(&url).json(&ask(12, None, false)).send().await.unwrap().json().await.unwrap();
    assert_eq!(full["choices"][0]["finish_reason"], "length", "{full}");
    let text = full["choices"][0]["message"]["content"].as_str().unwrap();
    // A stop string from inside the answer: the answer ends before its first occurrence.
    let stop: String = text.trim_end().chars().last().expect("some text").to_string();
    let want = &text[..text.find(&stop).unwrap()];
    let cut: Value = client.post(&url).json(&ask(12, Some(&stop), false)).send().await.unwrap().json().await.unwrap();
    assert_eq!(cut["choices"][0]["message"]["content"], want, "{cut}");
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");
    assert!(cut["usage"]["completion_tokens"].as_u64().unwrap() <= 12);
    // A long stream whose client leaves after its first text: the decode stops, the model is free.
    let mut r = client.post(&url).json(&ask(1800, None, true)).send().await.unwrap();
    let mut seen = String::new();
    while !seen.contains("\"content\":\"") || seen.matches("data: ").count() < 3 {
        seen.push_str(&String::from_utf8_lossy(&r.chunk().await.unwrap().expect("more events")));
    }
    drop(r);
    common::eventually(&s.base, "xcomposer_cancelled_total", 1.0).await;
    common::eventually(&s.base, "xcomposer_model_busy", 0.0).await;
    let again: Value = client.post(&url).json(&ask(12, None, false)).send().await.unwrap().json().await.unwrap();
    assert_eq!(again["choices"][0]["message"]["content"], text, "the model thread answers the same after a stop");
    let _ = std::panic::take_hook();
    assert_eq!(panics.load(std::sync::atomic::Ordering::SeqCst), 0, "no panic on the way");
}
