//! The PyTorch zip-format reader on the xcomposer-tiny checkpoint: two shards with the original's
//! f16/f32/i64 mix, driven by `pytorch_model.bin.index.json`; counts checked against the
//! fixture's own `checkpoint_log`.

mod common;

use xcomposer_llm::torch::{TorchDtype, TorchWeights};
use xcomposer_llm::weights::WeightSource;

#[test]
fn reads_every_tensor_of_the_sharded_tiny_checkpoint() {
    let dir = common::fixture("xcomposer-tiny");
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let log = &expected["checkpoint_log"];
    let w = TorchWeights::open_dir(&dir).unwrap();
    assert_eq!(w.names().len() as u64, log["num_tensors"].as_u64().unwrap());
    let count = |d: TorchDtype| w.names().iter().filter(|n| w.tensor(n).unwrap().dtype == d).count() as u64;
    assert_eq!(count(TorchDtype::F32), log["dtypes"]["float32"].as_u64().unwrap());
    assert_eq!(count(TorchDtype::F16), log["dtypes"]["float16"].as_u64().unwrap());
    assert_eq!(count(TorchDtype::I64), log["dtypes"]["int64"].as_u64().unwrap());
    let mut bytes = 0u64;
    for name in w.names() {
        let t = w.load(name).unwrap();
        assert_eq!(t.data.len(), t.shape.iter().product::<usize>(), "{name}");
        assert!(t.data.iter().all(|v| v.is_finite()), "{name}");
        bytes += (t.data.len() * w.tensor(name).unwrap().dtype.size()) as u64;
    }
    assert_eq!(bytes, log["total_size"].as_u64().unwrap());
    let e = w.load("nope").unwrap_err().to_string();
    assert!(e.contains("'nope' is missing"), "{e}");
}
