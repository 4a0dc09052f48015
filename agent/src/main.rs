//! `agent`: the daemon (`agent run`) and its command-line client.

use anyhow::Result;
use clap::Parser;
use ipc::logging::{self, LogFormat};
use tokio_util::sync::CancellationToken;

use agent::cli::{Cli, Command};

/// Cancels `token` on the first SIGTERM or SIGINT.
fn on_signals(token: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
        token.cancel();
    });
    Ok(())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match real_main(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agent: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

async fn real_main(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Run(args) => {
            logging::init(cli.log_format, &cli.log_level)?;
            let shutdown = CancellationToken::new();
            on_signals(shutdown.clone())?;
            agent::daemon::run(args.config(&cli.control_socket), shutdown).await?;
            Ok(0)
        }
        command => {
            // Client commands log only problems, to stderr, so their output stays clean.
            logging::init(LogFormat::Text, "warn")?;
            agent::cli::client(&cli.control_socket, command).await
        }
    }
}
