//! Benchmarks of InternLM-XComposer as its original evaluation code runs them, scored here
//! without any remote service or LLM judge:
//!
//! | module | what |
//! |---|---|
//! | [`mme`] | MME task files, the yes/no prompt, `calculation.py`'s score |
//! | [`mmbench`] | MMBench/MMBench-CN/CCBench TSVs, CircularEval with opencompass's rule-based extraction |
//! | [`seed`] | SEED-Bench's JSON, the likelihood-ranking prompt, accuracy per question type |
//! | [`answerer`] | the model side: XComposer's prompt pieces, 5-beam decoding, candidate cross-entropy |
//! | [`runner`] | a run: passes, resume, scores, the official tools' prediction files |
//! | [`predictions`], [`report`], [`tsv`], [`error`] | the JSONL log, results JSON/Markdown, pandas-like TSV, errors |

pub mod answerer;
pub mod error;
pub mod mmbench;
pub mod mme;
pub mod predictions;
pub mod report;
pub mod runner;
pub mod seed;
pub mod tsv;

pub use error::EvalError;
pub use runner::{Bench, DataPaths, Dataset, Scores};
