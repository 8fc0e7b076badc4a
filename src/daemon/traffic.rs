//! Where the flow rates come from: packet capture on a real host, or the synthetic feed of a
//! simulated one (whose clock the daemon moves). Holds no other daemon state.

use crate::flows::FlowSource;
use std::time::Instant;

/// The daemon's flow source.
pub enum Traffic {
    Capture(Box<crate::flows::capture::CaptureSource>),
    Synthetic {
        source: Box<crate::flows::synthetic::SyntheticSource>,
        started: Instant,
    },
}

impl Traffic {
    pub fn source(&self) -> &dyn FlowSource {
        match self {
            Traffic::Capture(c) => c.as_ref(),
            Traffic::Synthetic { source, .. } => source.as_ref(),
        }
    }

    pub(super) fn source_mut(&mut self) -> &mut dyn FlowSource {
        match self {
            Traffic::Capture(c) => c.as_mut(),
            Traffic::Synthetic { source, .. } => source.as_mut(),
        }
    }

    /// Moves a synthetic feed's clock to now (capture reads its own clock).
    pub fn tick(&mut self, now: Instant) {
        if let Traffic::Synthetic { source, started } = self {
            source.advance_to(now.saturating_duration_since(*started));
        }
    }
}
