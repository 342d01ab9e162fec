#!/usr/bin/env bash
# Here (no GPU needed): builds xcomposer and the GPU test binaries (engine, image encoders) with --features cuda and
# fills the git-ignored .device/ that scripts/gpu-engine.sh reads on the GPU machine (name it in the
# device tool's `carry`): both binaries stripped and xz-compressed, the xcomposer-tiny fixture,
# its images, ../shared/anchors, and for PART=compose the default image library with its index
# (from the local models folder) and the clip-tiny fixture's model files and references. Refused over the 64 MiB
# carry limit.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${XCOMPOSER_SHARED:-../shared}
LIBRARY=${XCOMPOSER_MODELS:-$HOME/.cache/xcomposer/models}/library
if [ ! -f "$LIBRARY/.xcomposer/index.json" ]; then
  echo "$LIBRARY: no indexed default library here; make it with \`xcomposer search coffee\` (fetches and indexes it)" >&2
  exit 1
fi
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
cargo build --release -p xcomposer-cli --features cuda
# The path of a GPU test binary (package, test name), built in release with --features cuda.
test_binary() {
  cargo test --release -p "$1" --features cuda --test "$2" --no-run --message-format=json 2>/dev/null \
    | python3 -c "import json,sys; print([m['executable'] for m in map(json.loads, sys.stdin) if m.get('executable') and m['target']['name'] == '$2'][-1])"
}
rm -rf .device && mkdir -p .device
strip -o .device/xcomposer target/release/xcomposer && xz -T2 -6 .device/xcomposer
for t in xcomposer-llm:cuda_engine xcomposer-vision:cuda_visual xcomposer-retrieval:cuda_clip; do
  bin=$(test_binary "${t%%:*}" "${t#*:}")
  strip -o ".device/${t#*:}" "$bin" && xz -T2 -6 ".device/${t#*:}"
done
tar cJf .device/xcomposer-tiny.tar.xz -C "$SHARED/fixtures" xcomposer-tiny
cp -r "$SHARED/fixtures/images" .device/images
cp -r "$SHARED/anchors" .device/anchors
cp -r "$LIBRARY" .device/library
# What ClipEmbedder::load reads (the fixture's references and tokenizer.json stay behind).
mkdir -p .device/clip-tiny
cp "$SHARED/fixtures/clip-tiny/"{config.json,model.safetensors,vocab.json,merges.txt,preprocessor_config.json,special_tokens_map.json,tokenizer_config.json,README.md} .device/clip-tiny/
# The encoder test's references (PART=encoder).
cp "$SHARED/fixtures/clip-tiny/expected.safetensors" .device/clip-tiny/
chmod -R u+w .device
du -sh .device
bytes=$(du -sb .device | cut -f1)
if [ "$bytes" -gt $((64 * 1024 * 1024)) ]; then
  echo ".device is $bytes bytes, over the 64 MiB carry limit" >&2
  exit 1
fi
