//! Log output for the daemon: `tracing` events as text or JSON lines on stderr (journald keeps
//! them), with a filter that a SIGHUP can change without a restart (`log.level` reloads live).
//!
//! This module sets up output only; what to log (one line per decision and per migration, with
//! the numbers behind it) is the caller's business.

use crate::config::{LogConfig, LogFormat};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log level `{filter}`: {message}")]
    Filter { filter: String, message: String },
    #[error("a global logger is already installed")]
    AlreadyInstalled,
    #[error("changing the log level: the logger is gone")]
    Gone,
}

/// Changes the running log filter (SIGHUP).
#[derive(Clone, Debug)]
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
}

impl LogHandle {
    pub fn set_level(&self, filter: &str) -> Result<(), LogError> {
        let f = parse_filter(filter)?;
        self.filter.reload(f).map_err(|_| LogError::Gone)
    }
}

fn parse_filter(filter: &str) -> Result<EnvFilter, LogError> {
    EnvFilter::try_new(filter).map_err(|e| LogError::Filter {
        filter: filter.to_string(),
        message: e.to_string(),
    })
}

/// A subscriber writing to `writer` in the configured format. `timestamps` is off under journald,
/// which stamps every line itself.
pub fn subscriber<W>(
    config: &LogConfig,
    writer: W,
    timestamps: bool,
) -> Result<(impl tracing::Subscriber + Send + Sync + 'static, LogHandle), LogError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (filter, handle) = reload::Layer::new(parse_filter(&config.level)?);
    let (text, json) = match config.format {
        LogFormat::Text => {
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(false)
                .with_target(true);
            let layer = if timestamps {
                layer.boxed_time()
            } else {
                layer.without_time().boxed_time()
            };
            (Some(layer), None)
        }
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(writer),
            ),
        ),
    };
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json);
    Ok((subscriber, LogHandle { filter: handle }))
}

/// Installs the process-wide logger on stderr.
pub fn init(config: &LogConfig) -> Result<LogHandle, LogError> {
    // systemd sets JOURNAL_STREAM when stderr goes to the journal.
    let timestamps = std::env::var_os("JOURNAL_STREAM").is_none();
    let (s, handle) = subscriber(config, std::io::stderr, timestamps)?;
    tracing::subscriber::set_global_default(s).map_err(|_| LogError::AlreadyInstalled)?;
    Ok(handle)
}

/// Boxes the two time variants of the text layer into one type.
trait BoxedTime<S> {
    fn boxed_time(self) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>;
}

impl<S, L> BoxedTime<S> for L
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    L: tracing_subscriber::Layer<S> + Send + Sync + 'static,
{
    fn boxed_time(self) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync> {
        Box::new(self)
    }
}

/// What a test logs, kept in memory: a `MakeWriter` for a test's subscriber.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl std::io::Write for LogBuffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl<'a> MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}

#[cfg(test)]
impl LogBuffer {
    /// Every line logged so far.
    pub(crate) fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(String::from)
            .collect()
    }

    /// The lines logged so far that contain `text`.
    pub(crate) fn matching(&self, text: &str) -> Vec<String> {
        let mut lines = self.lines();
        lines.retain(|l| l.contains(text));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(format: LogFormat, level: &str) -> LogConfig {
        LogConfig {
            format,
            level: level.into(),
        }
    }

    #[test]
    fn json_lines_carry_the_numbers() {
        let buf = LogBuffer::default();
        let (s, _) = subscriber(&config(LogFormat::Json, "info"), buf.clone(), true).unwrap();
        tracing::subscriber::with_default(s, || {
            tracing::info!(vm = "10.0.0.7", benefit = 41.5, c_m = 2.0, "migrate");
            tracing::debug!("not shown at info");
        });
        let lines = buf.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["message"], "migrate");
        assert_eq!(v["benefit"], 41.5);
        assert_eq!(v["vm"], "10.0.0.7");
        assert_eq!(v["level"], "INFO");
    }

    #[test]
    fn text_lines_and_a_live_level_change() {
        let buf = LogBuffer::default();
        let (s, handle) = subscriber(&config(LogFormat::Text, "warn"), buf.clone(), false).unwrap();
        tracing::subscriber::with_default(s, || {
            tracing::info!("hidden");
            tracing::warn!(host = "hv3", "skipped");
            handle.set_level("debug").unwrap();
            tracing::debug!("now shown");
            assert!(handle.set_level("scored=[").is_err());
        });
        let lines = buf.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        // Without timestamps the line starts with the level (journald adds the time).
        assert!(
            lines[0].starts_with(" WARN") || lines[0].starts_with("WARN"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("skipped host=\"hv3\""), "{}", lines[0]);
        assert!(lines[1].contains("now shown"));
    }

    #[test]
    fn bad_filters_are_refused() {
        let e = subscriber(
            &config(LogFormat::Text, "scored=["),
            LogBuffer::default(),
            true,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("scored=["), "{e}");
    }
}
