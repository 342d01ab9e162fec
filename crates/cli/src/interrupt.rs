//! Ctrl-C for the long-running commands (`batch`, `worker`): the first SIGINT or SIGTERM sets
//! a flag the command checks between jobs and while composing; a second one quits at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};

/// Whether a stop was asked for (shared with the signal thread).
#[derive(Clone)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Installs the handlers; `what` is printed on the first signal (what happens now).
    pub fn install(what: &'static str) -> Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().context("starting the signal handler")?;
        // Registered here, before returning, so that no early signal kills the process.
        let (mut int, mut term) = rt.block_on(async { Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?)) }).context("installing the Ctrl-C handler")?;
        let f = flag.clone();
        std::thread::spawn(move || {
            rt.block_on(async {
                for n in 0..2 {
                    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
                    if n == 0 {
                        f.store(true, Ordering::SeqCst);
                        eprintln!("\n[interrupt] {what} (Ctrl-C again quits at once)");
                    }
                }
                std::process::exit(130);
            })
        });
        Ok(Interrupt(flag))
    }

    /// Whether the first signal came.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
