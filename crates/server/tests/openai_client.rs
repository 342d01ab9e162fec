//! The official `openai` Python client, unchanged (base_url + api_key), against the real
//! server: a whole answer, a streamed one, and an error raised as the client's own exception.
//! The client is installed into a virtual environment under `target/` on first use; without
//! Python or pip the test fails saying so.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use xcomposer_server::Limits;

fn venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/openai-venv")
}

/// The venv's python with `openai` importable, made on first use.
fn python_with_openai() -> PathBuf {
    let dir = venv();
    let python = dir.join("bin/python");
    let ok = |p: &Path| Command::new(p).args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    if python.exists() && ok(&python) {
        return python;
    }
    let made = Command::new("python3").args(["-m", "venv"]).arg(&dir).output();
    match made {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("could not make a Python venv at {} for the openai client test: {}", dir.display(), String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("the openai client test needs python3 (with venv) on PATH: {e}"),
    }
    let pip = Command::new(dir.join("bin/pip")).args(["install", "--quiet", "openai"]).output().expect("running pip");
    assert!(
        pip.status.success() && ok(&python),
        "the openai client test needs the `openai` package and pip could not install it (is PyPI reachable?): {}",
        String::from_utf8_lossy(&pip.stderr)
    );
    python
}

const SCRIPT: &str = r#"
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="k3y")
model = client.models.list().data[0].id
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8, temperature=0)
whole = r.choices[0].message.content
assert r.usage.completion_tokens == 8, r.usage
assert r.choices[0].finish_reason == "length"
parts = []
for chunk in client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
    if chunk.usage:
        assert chunk.usage.completion_tokens == 8
assert "".join(parts) == whole, (parts, whole)
try:
    client.chat.completions.create(model=model, messages=[], max_tokens=8)
    raise SystemExit("an empty conversation was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.body["param"] == "messages", e.body
try:
    openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="wrong", max_retries=0).models.list()
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError:
    pass
print("WHOLE:" + whole)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_official_openai_python_client_works_unchanged() {
    let python = python_with_openai();
    let s = common::start("openai-client", Limits::default(), Some("k3y")).await;
    let base = s.base.clone();
    let out = tokio::task::spawn_blocking(move || Command::new(python).args(["-c", SCRIPT, &base]).output().unwrap()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the openai client script failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let whole = stdout.lines().find_map(|l| l.strip_prefix("WHOLE:")).expect("the script printed the answer");
    assert!(!whole.trim().is_empty());
}
