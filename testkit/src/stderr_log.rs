//! A minimal `log` backend for the example daemons: the level from `RUST_LOG`
//! (`off`, `error`, `warn` — the default —, `info`, `debug`, `trace`), one line per
//! record on stderr, `NAME LEVEL TARGET: MESSAGE` (the tests match these lines).
use std::io::Write;
use std::sync::OnceLock;

struct StderrLogger {
    name: &'static str,
}

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let _ = writeln!(
                std::io::stderr(),
                "{} {} {}: {}",
                self.name,
                r.level(),
                r.target(),
                r.args()
            );
        }
    }

    fn flush(&self) {}
}

/// Installs the logger, lines prefixed with `name`, at the level `RUST_LOG` names.
/// A second call (or another logger installed first) changes nothing.
pub fn init(name: &'static str) {
    static LOGGER: OnceLock<StderrLogger> = OnceLock::new();
    let level = match std::env::var("RUST_LOG")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "off" => log::LevelFilter::Off,
        "error" => log::LevelFilter::Error,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => log::LevelFilter::Warn,
    };
    if log::set_logger(LOGGER.get_or_init(|| StderrLogger { name })).is_ok() {
        log::set_max_level(level);
    }
}
