//! Every hypervisor call the daemon makes goes through here: off the event loop (a blocking
//! thread), bounded in time, and watched for an outage, which is logged when it begins and when
//! it ends (not per call) and shown by the `scored_hypervisor_up` gauge and `scored status`.
//!
//! Owns the outage record and nothing else; it never decides what a failed call means for a VM.

use crate::hypervisor::{Hypervisor, HypervisorError};
use crate::metrics::Metrics;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// While the hypervisor does not answer: its last error and when the outage began.
#[derive(Clone, Debug)]
pub struct Outage {
    pub error: String,
    pub since: Instant,
}

pub(super) struct HypervisorCalls {
    hv: Arc<dyn Hypervisor>,
    metrics: Arc<Metrics>,
    outage: Mutex<Option<Outage>>,
}

impl HypervisorCalls {
    pub(super) fn new(hv: Arc<dyn Hypervisor>, metrics: Arc<Metrics>) -> Self {
        HypervisorCalls {
            hv,
            metrics,
            outage: Mutex::new(None),
        }
    }

    /// The outage under way, if any.
    pub(super) fn outage(&self) -> Option<Outage> {
        self.outage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs `f` on a blocking thread and waits for it at most `within`. A call that does not
    /// return in time is left to its thread and reported as [`HypervisorError::NoAnswer`]: the
    /// token and the event loop never wait on a hung hypervisor for longer than the bound.
    pub(super) async fn call<T: Send + 'static>(
        &self,
        what: &'static str,
        within: Duration,
        f: impl FnOnce(&dyn Hypervisor) -> Result<T, HypervisorError> + Send + 'static,
    ) -> Result<T, HypervisorError> {
        let hv = self.hv.clone();
        let call = tokio::task::spawn_blocking(move || f(hv.as_ref()));
        let r = match tokio::time::timeout(within, call).await {
            Ok(Ok(r)) => r,
            Ok(Err(source)) => Err(HypervisorError::Task { call: what, source }),
            Err(_) => Err(HypervisorError::NoAnswer {
                call: what,
                after: within,
            }),
        };
        match &r {
            Err(e) if e.is_unavailable() => self.failed(what, e),
            _ => self.answered(),
        }
        r
    }

    fn failed(&self, what: &str, e: &HypervisorError) {
        self.metrics.hypervisor_up.set(0);
        let mut outage = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        let began = outage.is_none();
        let since = outage
            .as_ref()
            .map(|o| o.since)
            .unwrap_or_else(Instant::now);
        *outage = Some(Outage {
            error: e.to_string(),
            since,
        });
        drop(outage);
        if began {
            tracing::warn!(call = what, error = %e, "hypervisor not answering: no decisions for this host's VMs and no VMs taken in until it is back");
        }
    }

    fn answered(&self) {
        self.metrics.hypervisor_up.set(1);
        let ended = self.outage.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(o) = ended {
            tracing::info!(down_s = o.since.elapsed().as_secs_f64(), last_error = %o.error, "hypervisor answering again");
        }
    }
}
