//! Starting the real server on a loopback port with the default model, for the API tests.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use burn::backend::Flex;
use xcomposer_composer::ChatLanguageModel;
use xcomposer_llm::LanguageModel;
use xcomposer_server::{AppState, Limits, ServerConfig, ServerModels};

/// The default model (SmolLM2-135M-Instruct), fetched on first use, loaded once per test binary.
pub fn text_model() -> Arc<ChatLanguageModel<Flex>> {
    static MODEL: OnceLock<Arc<ChatLanguageModel<Flex>>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = xcomposer_llm::fetch::models_dir();
            let path = xcomposer_llm::fetch::ensure(&xcomposer_llm::fetch::SMOLLM2_135M, &dir, &mut |m| eprintln!("[fetch] {m}")).expect("the default model").path().to_path_buf();
            Arc::new(ChatLanguageModel::new(LanguageModel::<Flex>::load(&path, &Default::default()).expect("loading the default model")))
        })
        .clone()
}

/// `../shared/fixtures/NAME` beside the checkout (or under `$XCOMPOSER_SHARED/fixtures`).
pub fn fixture(name: &str) -> PathBuf {
    let shared = std::env::var_os("XCOMPOSER_SHARED").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let dir = shared.join("fixtures").join(name);
    assert!(dir.is_dir(), "fixture folder {} is missing: the fixtures live in ../shared beside the checkout", dir.display());
    dir
}

/// A fresh data folder under the test target folder.
pub fn data_dir(tag: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("serve-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A running server: its base URL (`http://127.0.0.1:PORT`) and state.
pub struct Running {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The shared state.
    pub state: Arc<AppState>,
}

/// Serves on 127.0.0.1, port 0, on the current tokio runtime.
pub async fn start(tag: &str, limits: Limits, api_key: Option<&str>) -> Running {
    start_with(tag, limits, api_key, None).await
}

/// [`start`] with InternLM-XComposer loaded from `xcomposer` too.
pub async fn start_with(tag: &str, limits: Limits, api_key: Option<&str>, xcomposer: Option<&std::path::Path>) -> Running {
    let config = ServerConfig { api_key: api_key.map(String::from), data_dir: data_dir(tag), limits };
    let xcomposer = xcomposer.map(|dir| Arc::new(xcomposer_vision::xcomposer::model::XComposer::<Flex>::load(dir, &Default::default()).expect("loading the XComposer fixture")));
    let state = AppState::new(config, ServerModels { text: text_model(), xcomposer, composers: None }).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(xcomposer_server::serve(listener, state.clone()));
    Running { base, state }
}

/// The model id the server lists.
pub fn model_id() -> String {
    use xcomposer_composer::TextModel;
    text_model().id()
}

/// A chat request body for one user message.
pub fn ask(text: &str, max_tokens: u32) -> serde_json::Value {
    serde_json::json!({"model": model_id(), "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0})
}

/// The `data: …` payloads of a server-sent-events body.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(String::from).collect()
}

/// The default pipeline of the tests in tests/compose.rs: SmolLM2, the default library, hybrid scores.
pub struct DefaultComposers;

impl xcomposer_server::articles::ComposerFactory for DefaultComposers {
    fn composer(&self, library: Option<&std::path::Path>) -> Result<xcomposer_composer::Composer, String> {
        use xcomposer_retrieval::{EmbeddingScorer, TextEmbedder, default_library};
        assert!(library.is_none(), "the tests name no library");
        let (device, models) = (Default::default(), xcomposer_llm::fetch::models_dir());
        let lib = default_library::open::<Flex>(&models, &device, &mut |m| eprintln!("[fetch] {m}"), &mut |_| {}).map_err(|e| e.to_string())?;
        let embedder = Arc::new(TextEmbedder::<Flex>::load_default(&models, &device, &mut |m| eprintln!("[fetch] {m}")).map_err(|e| e.to_string())?);
        let retriever = xcomposer_composer::LibraryRetriever { library: lib, scorer: Box::new(EmbeddingScorer::hybrid(embedder)), scorer_name: "hybrid".into() };
        Ok(xcomposer_composer::Composer::with_model(text_model(), Box::new(retriever)))
    }
}

/// A server with the article API (default pipeline) on `data`, on the current runtime; its base URL.
pub async fn serve_articles(data: &std::path::Path) -> String {
    serve_articles_with(data, Limits::default()).await
}

/// [`serve_articles`] with other limits.
pub async fn serve_articles_with(data: &std::path::Path, limits: Limits) -> String {
    let config = ServerConfig { api_key: None, data_dir: data.to_path_buf(), limits };
    let state = AppState::new(config, ServerModels { text: text_model(), xcomposer: None, composers: Some(Arc::new(DefaultComposers)) }).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(xcomposer_server::serve(listener, state));
    base
}

/// The value of a `/metrics` line starting with `name`.
pub async fn metric(base: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Waits up to 10 s for a metric to reach `want` (the worker clears its busy flag just after
/// the answer is sent), then asserts it.
pub async fn eventually(base: &str, name: &str, want: f64) {
    for _ in 0..200 {
        if metric(base, name).await == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(metric(base, name).await, want, "{name}");
}
