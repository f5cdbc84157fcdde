//! Logging and metrics plumbing shared by every subcommand.
//!
//! Logs go to stderr so that commands whose output is data (`zen-lead crd`)
//! keep stdout clean.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

/// Content type of [`render`]'s output (OpenMetrics text, which Prometheus
/// scrapes natively).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Errors of the telemetry module.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "invalid --log-level {value:?}: {source}; use a level (error, warn, info, debug, trace) \
         or per-module directives such as `info,zen_lead=debug,kube=warn`"
    )]
    InvalidLogLevel {
        value: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },

    #[error("logging was already initialised in this process")]
    AlreadyInitialised,

    #[error("could not encode metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// Installs the global tracing subscriber.
pub fn init_logging(format: LogFormat, level: &str) -> Result<(), TelemetryError> {
    let filter =
        EnvFilter::builder()
            .parse(level)
            .map_err(|source| TelemetryError::InvalidLogLevel {
                value: level.to_owned(),
                source,
            })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    let result = match format {
        LogFormat::Plain => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    result.map_err(|_| TelemetryError::AlreadyInitialised)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    commit: String,
}

/// A registry with every metric prefixed `zen_lead_` and the conventional
/// `zen_lead_build_info{version,commit} 1`, so dashboards can tell which
/// build produced a series.
pub fn new_registry() -> Registry {
    let mut registry = Registry::with_prefix("zen_lead");
    let build_info = Family::<BuildLabels, Gauge>::default();
    build_info
        .get_or_create(&BuildLabels {
            version: crate::VERSION.to_owned(),
            commit: crate::GIT_COMMIT.to_owned(),
        })
        .set(1);
    registry.register(
        "build_info",
        "Version and git commit of the running zen-lead binary",
        build_info,
    );
    registry
}

/// Renders a registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> Result<String, TelemetryError> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_log_level_names_the_flag() {
        let err = init_logging(LogFormat::Plain, "info,zen_lead=verbose").unwrap_err();
        assert!(err.to_string().contains("--log-level"), "{err}");
    }

    #[test]
    fn registry_exposes_build_info() {
        let text = render(&new_registry()).expect("render");
        assert!(text.contains("zen_lead_build_info{"), "{text}");
        assert!(
            text.contains(&format!("version=\"{}\"", crate::VERSION)),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
