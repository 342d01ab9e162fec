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
