//! The OpenAI-compatible API against the real server on a loopback port, with a real HTTP
//! client and the default model: answers, streaming, errors, limits, auth, the queue's 429 and
//! cancellation when a client goes away.

mod common;

use std::time::Duration;

use common::{ask, eventually, metric, model_id, sse_data, start};
use serde_json::{Value, json};
use xcomposer_server::Limits;

async fn post(base: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(format!("{base}/v1/chat/completions")).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn error_param(v: &Value) -> &str {
    v["error"]["param"].as_str().unwrap_or_else(|| panic!("no error.param in {v}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_whole_and_streamed_alike_with_usage() {
    let s = start("answers", Limits::default(), None).await;
    let models: Value = reqwest::get(format!("{}/v1/models", s.base)).await.unwrap().json().await.unwrap();
    assert_eq!(models["data"][0]["id"], model_id());

    let (status, v) = post(&s.base, &ask("Name a colour.", 8)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(!text.trim().is_empty());
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 8);
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    let ids = common::text_model().model.encode_chat(&[xcomposer_llm::Message::new("user", "Name a colour.")]).unwrap();
    assert_eq!(prompt, ids.len() as u64);
    assert_eq!(v["usage"]["total_tokens"].as_u64().unwrap(), prompt + 8);

    // Greedy twice: the same text.
    let (_, again) = post(&s.base, &ask("Name a colour.", 8)).await;
    assert_eq!(again["choices"][0]["message"]["content"], text.as_str());

    // Streamed: the deltas add up to the same text, then the finish, the usage and [DONE].
    let mut body = ask("Name a colour.", 8);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = reqwest::Client::new().post(format!("{}/v1/chat/completions", s.base)).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = sse_data(&r.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, text);
    assert!(chunks.len() >= 4, "role chunk, content chunks, finish, usage: {chunks:?}");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 8);

    // A stop string cuts the answer and finishes with "stop".
    let first_word = text.split_whitespace().nth(1).expect("two words");
    let mut body = ask("Name a colour.", 8);
    body["stop"] = json!([first_word]);
    let (_, v) = post(&s.base, &body).await;
    let cut = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert!(!cut.contains(first_word) && text.starts_with(cut), "{cut:?} vs {text:?}");

    // Seeded sampling repeats itself.
    let mut body = ask("Write a word.", 10);
    body["temperature"] = json!(1.0);
    body["seed"] = json!(7);
    let (_, a) = post(&s.base, &body).await;
    let (_, b) = post(&s.base, &body).await;
    assert_eq!(a["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_openai_errors_naming_the_field() {
    let s = start("errors", Limits::default(), None).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", s.base);
    let r = client.post(&url).body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(error_param(&v), "body");

    let cases = [
        (json!({"messages": [{"role": "user", "content": "hi"}]}), 400, "model"),
        (json!({"model": model_id(), "messages": []}), 400, "messages"),
        (json!({"model": model_id(), "messages": [{"role": "user", "content": 7}]}), 400, "messages[0].content"),
        (json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}), 404, "model"),
        (json!({"model": model_id(), "messages": [{"role": "user", "content": "hi"}], "top_p": 0}), 400, "top_p"),
        (json!({"model": model_id(), "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}), 400, "max_tokens"),
        (json!({"model": model_id(), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1_000_000}), 400, "max_tokens"),
        (json!({"model": model_id(), "messages": [{"role": "assistant", "content": "hi"}]}), 400, "messages[0].role"),
    ];
    for (body, status, param) in cases {
        let (got, v) = post(&s.base, &body).await;
        assert_eq!((got, error_param(&v)), (status, param), "{body} → {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    // The default model is text-only: an image part is refused, naming it, not dropped.
    let png = tiny_png_data_uri();
    let body = json!({"model": model_id(), "messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": png}}]}]});
    let (status, v) = post(&s.base, &body).await;
    assert_eq!((status, error_param(&v)), (400, "messages[0].content[1].image_url.url"), "{v}");
    assert_eq!(v["error"]["code"], "image_input_unsupported");
    assert!(v["error"]["message"].as_str().unwrap().contains("--xcomposer"));

    let r = client.get(format!("{}/v1/nothing", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "not_found");
}

fn tiny_png_data_uri() -> String {
    use base64::Engine;
    let mut out = vec![];
    image::RgbImage::new(4, 4).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(out))
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_are_refused_naming_the_field() {
    let limits = Limits { max_body_bytes: 4000, max_prompt_tokens: 40, max_tokens_cap: 16, max_image_pixels: 10, ..Limits::default() };
    let s = start("limits", limits, None).await;
    let (status, v) = post(&s.base, &ask(&"word ".repeat(1000), 4)).await;
    assert_eq!((status, error_param(&v)), (413, "body"), "{v}");
    let (status, v) = post(&s.base, &ask(&"word ".repeat(100), 4)).await;
    assert_eq!((status, error_param(&v)), (400, "messages"), "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let (status, v) = post(&s.base, &ask("hi", 17)).await;
    assert_eq!((status, error_param(&v)), (400, "max_tokens"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("16"));
    let body = json!({"model": model_id(), "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": tiny_png_data_uri()}}]}]});
    let (status, v) = post(&s.base, &body).await;
    assert_eq!((status, error_param(&v), v["error"]["code"].as_str()), (400, "messages[0].content[0].image_url.url", Some("image_too_large")), "{v}");
    // Within the limits, the same server answers.
    assert_eq!(post(&s.base, &ask("hi", 16)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_key_is_required_when_set() {
    let s = start("auth", Limits::default(), Some("s3cret")).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", s.base);
    let r = client.post(&url).json(&ask("hi", 2)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["type"], "authentication_error");
    let r = client.post(&url).bearer_auth("wrong").json(&ask("hi", 2)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid_api_key");
    assert_eq!(client.get(format!("{}/v1/models", s.base)).send().await.unwrap().status(), 401);
    assert_eq!(client.get(format!("{}/metrics", s.base)).send().await.unwrap().status(), 401);
    assert_eq!(client.post(&url).bearer_auth("s3cret").json(&ask("hi", 2)).send().await.unwrap().status(), 200);
    assert_eq!(client.get(format!("{}/health", s.base)).send().await.unwrap().status(), 200);
}

async fn queue_depth(base: &str) -> u64 {
    let v: Value = reqwest::get(format!("{base}/health")).await.unwrap().json().await.unwrap();
    v["queue_depth"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_429_and_a_gone_client_cancels_its_generation() {
    let s = start("queue", Limits { queue_capacity: 1, ..Limits::default() }, None).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", s.base);
    // A: a long streamed answer, running once its first content arrives.
    let mut long = ask("Write a very long story about a dragon.", 2000);
    long["stream"] = json!(true);
    let mut a = client.post(&url).json(&long).send().await.unwrap();
    assert_eq!(a.status(), 200);
    let mut seen = String::new();
    while !seen.contains("\"content\":\"") || seen.matches("data: ").count() < 3 {
        seen.push_str(&String::from_utf8_lossy(&a.chunk().await.unwrap().expect("more events")));
    }
    // B waits behind A.
    let b = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { client.post(&url).json(&ask("Name a colour.", 4)).send().await.unwrap() }
    });
    for _ in 0..200 {
        if queue_depth(&s.base).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(queue_depth(&s.base).await, 1);
    assert_eq!(metric(&s.base, "xcomposer_queue_depth").await, 1.0);
    // C finds the queue full.
    let c = client.post(&url).json(&ask("hi", 2)).send().await.unwrap();
    assert_eq!(c.status(), 429);
    let retry: u64 = c.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    let v: Value = c.json().await.unwrap();
    assert_eq!((v["error"]["type"].as_str(), v["error"]["code"].as_str()), (Some("rate_limit_error"), Some("queue_full")));
    // A's client goes away: its generation stops and B is answered.
    let cancelled = metric(&s.base, "xcomposer_cancelled_total").await;
    drop(a);
    let b = tokio::time::timeout(Duration::from_secs(60), b).await.expect("B answered after A was cancelled").unwrap();
    assert_eq!(b.status(), 200);
    assert_eq!(metric(&s.base, "xcomposer_cancelled_total").await, cancelled + 1.0);
    assert_eq!(metric(&s.base, "xcomposer_requests_total{status=\"429\"}").await, 1.0);
    assert!(metric(&s.base, "xcomposer_generated_tokens_total").await >= 4.0);
    eventually(&s.base, "xcomposer_model_busy", 0.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_answer_is_cancelled_when_its_client_hangs_up() {
    let s = start("hangup", Limits::default(), None).await;
    let client = reqwest::Client::builder().timeout(Duration::from_millis(1500)).build().unwrap();
    let r = client.post(format!("{}/v1/chat/completions", s.base)).json(&ask("Write a very long story about a dragon.", 2000)).send().await;
    assert!(r.is_err_and(|e| e.is_timeout()));
    eventually(&s.base, "xcomposer_cancelled_total", 1.0).await;
    eventually(&s.base, "xcomposer_model_busy", 0.0).await;
    assert_eq!(metric(&s.base, "xcomposer_generated_tokens_total").await, 0.0, "a cancelled generation records no tokens");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pages_are_served_without_the_key_and_load_nothing_from_elsewhere() {
    let s = start("pages", Limits::default(), Some("k")).await;
    for (path, kind) in [("/", "text/html"), ("/chat", "text/html"), ("/static/app.css", "text/css"), ("/static/common.js", "text/javascript"), ("/static/compose.js", "text/javascript"), ("/static/chat.js", "text/javascript")] {
        let r = reqwest::get(format!("{}{path}", s.base)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
        let body = r.text().await.unwrap();
        assert!(!body.contains("http://") && !body.contains("https://"), "{path} refers to another site");
        if path.ends_with(".js") {
            assert!(!body.contains("innerHTML") && !body.contains("insertAdjacentHTML") && !body.contains("document.write"), "{path} writes HTML");
        }
    }
    assert_eq!(reqwest::get(format!("{}/static/../Cargo.toml", s.base)).await.unwrap().status(), 404);
}
