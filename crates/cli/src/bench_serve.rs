//! `xcomposer bench serve`: load on the OpenAI API. N concurrent clients each send their share of
//! a fixed number of streamed chat requests; a row per N gives requests/s, generated tokens/s,
//! time to the first text and total latency (p50/p95/p99), and the errors by kind (a 429 apart
//! from a dropped stream). A request that comes back with no result fails the run.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::serve::ServeArgs;

/// Arguments of `xcomposer bench serve`.
#[derive(clap::Args)]
pub struct ServeBenchArgs {
    /// A running server's base URL (default: start one in this process with the serve flags
    /// below, on a free loopback port).
    #[arg(long)]
    base: Option<String>,
    /// Concurrent clients, one row each.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    clients: Vec<usize>,
    /// Requests per row, shared out over the clients.
    #[arg(long, default_value_t = 32)]
    requests: usize,
    /// `max_tokens` of each request.
    #[arg(long, default_value_t = 8)]
    max_tokens: usize,
    /// The model asked, as `GET /v1/models` lists it (default: the first listed, the text model).
    #[arg(long)]
    model_id: Option<String>,
    /// The user message of each request (answered greedily).
    #[arg(long, default_value = "Name a colour.")]
    prompt: String,
    /// The server's flags (`--api-key` is also the key sent to a running `--base` server).
    #[command(flatten)]
    serve: ServeArgs,
}

/// One answered request, in seconds.
struct Answer {
    /// Until the first non-empty text.
    ttft: f64,
    /// Until `[DONE]`.
    total: f64,
    /// `usage.completion_tokens`.
    tokens: u64,
}

/// Runs `bench serve`.
pub fn run(mut args: ServeBenchArgs) -> Result<()> {
    if args.clients.contains(&0) || args.requests == 0 {
        bail!("--clients and --requests must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let base = match args.base.take() {
        Some(b) => b.trim_end_matches('/').to_string(),
        None => rt.block_on(start_server(&args.serve))?,
    };
    rt.block_on(bench(&args, &base))
}

/// Loads the models as `serve` does and serves them on 127.0.0.1, a free port; the base URL.
async fn start_server(serve: &ServeArgs) -> Result<String> {
    let state = crate::serve::load(serve)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(xcomposer_server::serve(listener, state));
    Ok(base)
}

async fn bench(args: &ServeBenchArgs, base: &str) -> Result<()> {
    let client = reqwest::Client::new();
    let key = args.serve.api_key.as_deref();
    let models: Value = authed(client.get(format!("{base}/v1/models")), key).send().await.with_context(|| format!("{base}/v1/models"))?.json().await?;
    let listed: Vec<&str> = models["data"].as_array().into_iter().flatten().filter_map(|m| m["id"].as_str()).collect();
    let model = match &args.model_id {
        Some(id) if !listed.contains(&id.as_str()) => bail!("--model-id {id:?}: {base}/v1/models lists {listed:?}"),
        Some(id) => id.clone(),
        None => listed.first().with_context(|| format!("{base}/v1/models lists no model: {models}"))?.to_string(),
    };
    println!("{base}, model {model}, {} requests a row, max_tokens {}, streamed, greedy", args.requests, args.max_tokens);
    println!("| clients | ok | req/s | tokens/s | TTFT p50 / p95 / p99 s | total p50 / p95 / p99 s | errors |");
    println!("|---|---|---|---|---|---|---|");
    let body = json!({"model": model, "messages": [{"role": "user", "content": args.prompt}], "max_tokens": args.max_tokens, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
    let (url, body) = (Arc::new(format!("{base}/v1/chat/completions")), Arc::new(body));
    for &clients in &args.clients {
        let t = Instant::now();
        let results = row(&client, &url, &body, key, clients, args.requests).await;
        if results.len() != args.requests {
            bail!("{} of {} requests came back with no result", args.requests - results.len(), args.requests);
        }
        println!("{}", table_row(clients, &results, t.elapsed().as_secs_f64()));
    }
    Ok(())
}

fn authed(req: reqwest::RequestBuilder, key: Option<&str>) -> reqwest::RequestBuilder {
    match key {
        Some(k) => req.bearer_auth(k),
        None => req,
    }
}

/// `requests` requests from `clients` concurrent clients, each sending its share in turn.
async fn row(client: &reqwest::Client, url: &Arc<String>, body: &Arc<Value>, key: Option<&str>, clients: usize, requests: usize) -> Vec<Result<Answer, String>> {
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let n = requests / clients + usize::from(i < requests % clients);
            let (client, url, body, key) = (client.clone(), url.clone(), body.clone(), key.map(String::from));
            tokio::spawn(async move {
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(one(&client, &url, &body, key.as_deref()).await);
                }
                out
            })
        })
        .collect();
    let mut results = vec![];
    for t in tasks {
        results.extend(t.await.unwrap_or_default());
    }
    results
}

/// One streamed request: its times, or what went wrong.
async fn one(client: &reqwest::Client, url: &str, body: &Value, key: Option<&str>) -> Result<Answer, String> {
    let t0 = Instant::now();
    let mut r = authed(client.post(url).json(body), key).send().await.map_err(|e| request_error(&e))?;
    if !r.status().is_success() {
        return Err(format!("http {}", r.status().as_u16()));
    }
    let (mut buf, mut ttft, mut tokens) = (String::new(), None, 0);
    while let Some(chunk) = r.chunk().await.map_err(|e| request_error(&e))? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(at) = buf.find("\n\n") {
            let event: String = buf.drain(..at + 2).collect();
            let data = event.trim_end().strip_prefix("data: ").unwrap_or_default();
            if data == "[DONE]" {
                let total = t0.elapsed().as_secs_f64();
                return Ok(Answer { ttft: ttft.unwrap_or(total), total, tokens });
            }
            let v: Value = serde_json::from_str(data).map_err(|_| "an event that is not JSON".to_string())?;
            if let Some(code) = v.get("error").map(|e| e["code"].as_str().or(e["type"].as_str()).unwrap_or("error").to_string()) {
                return Err(format!("error event {code}"));
            }
            if ttft.is_none() && v["choices"][0]["delta"]["content"].as_str().is_some_and(|c| !c.is_empty()) {
                ttft = Some(t0.elapsed().as_secs_f64());
            }
            tokens = v["usage"]["completion_tokens"].as_u64().unwrap_or(tokens);
        }
    }
    Err("stream ended without [DONE]".into())
}

/// What kind of failure a client error is, without the URL.
fn request_error(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "connect"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_body() || e.is_decode() {
        "dropped stream"
    } else {
        "request"
    };
    format!("{kind} error")
}

/// The nearest-rank `p`-th percentile of `v` (NaN when empty).
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n => v[((p / 100.0 * (n - 1) as f64).round() as usize).min(n - 1)],
    }
}

/// A Markdown table row for one number of clients.
fn table_row(clients: usize, results: &[Result<Answer, String>], wall: f64) -> String {
    let ok: Vec<&Answer> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let mut errors = std::collections::BTreeMap::<&str, usize>::new();
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        *errors.entry(e).or_default() += 1;
    }
    let errors = if errors.is_empty() { "0".to_string() } else { errors.iter().map(|(e, n)| format!("{n} × {e}")).collect::<Vec<_>>().join(", ") };
    let spread = |f: fn(&Answer) -> f64| {
        let v: Vec<f64> = ok.iter().map(|a| f(a)).collect();
        format!("{:.2} / {:.2} / {:.2}", percentile(&v, 50.0), percentile(&v, 95.0), percentile(&v, 99.0))
    };
    let tokens: u64 = ok.iter().map(|a| a.tokens).sum();
    format!("| {clients} | {} | {:.2} | {:.1} | {} | {} | {errors} |", ok.len(), ok.len() as f64 / wall, tokens as f64 / wall, spread(|a| a.ttft), spread(|a| a.total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_and_rows_count_errors_by_kind() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!((percentile(&v, 50.0), percentile(&v, 95.0), percentile(&v, 99.0)), (51.0, 95.0, 99.0));
        assert!(percentile(&[], 50.0).is_nan());
        let results = vec![Ok(Answer { ttft: 0.5, total: 1.0, tokens: 8 }), Err("http 429".to_string()), Err("http 429".to_string()), Err("dropped stream error".to_string())];
        let row = table_row(4, &results, 2.0);
        assert_eq!(row, "| 4 | 1 | 0.50 | 4.0 | 0.50 / 0.50 / 0.50 | 1.00 / 1.00 / 1.00 | 1 × dropped stream error, 2 × http 429 |");
    }
}
