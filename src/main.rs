//! The `croco` binary: parse arguments, run the command, turn any error into
//! one clear message and an exit code (see `croco::cli` for the codes).

use std::process::ExitCode;

use clap::Parser;
use croco::cli::{self, Cli, CliError, LogFormat};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.log_format);
    match main_inner(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output has gone (`croco status | head`): it has what it wanted.
        Err(error) if error.is_closed_pipe() => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", with_causes(&error));
            ExitCode::from(error.exit_code())
        }
    }
}

/// The error's message followed by each cause its message does not already
/// hold: many errors embed their source, but a transport error's root cause
/// (`Connection refused`) is often only in the chain.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let text = error.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        cause = error.source();
    }
    message
}

fn main_inner(cli: Cli) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(cli::run(cli))
}

fn init_logging(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let registry = tracing_subscriber::registry().with(croco::store::retries::layer());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => registry.with(logs.with_filter(filter)).init(),
        LogFormat::Json => registry.with(logs.json().with_filter(filter)).init(),
    }
}
