//! Many articles: what a job is and where its result goes, shared by `xcomposer batch` (one
//! machine) and the Redis Streams workers (many).
//!
//! - [`spec`]: a JSONL file of jobs, each with a given or derived id;
//! - [`store`]: article folders written atomically (a temporary folder renamed into place);
//! - [`results`]: the append-only results log `results.jsonl`;
//! - [`queue`]: the jobs stream, its consumer group, the dead-letter stream and the results hash.
//!
//! Composing is not here: the caller composes into the folder [`store::ArticleStore::begin`]
//! gives and hands it back to [`store::ArticleStore::commit`].

pub mod error;
pub mod queue;
pub mod results;
pub mod spec;
pub mod store;

pub use error::JobError;
pub use results::{JobResult, JobStatus, ResultsLog};
pub use spec::JobSpec;
pub use store::{ArticleStore, Committed, FolderStore};
