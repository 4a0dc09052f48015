//! `agent`: the daemon (`agent run`) and its command-line client.

use anyhow::Result;
use clap::Parser;
use ipc::logging::{self, LogFormat};
use tokio_util::sync::CancellationToken;

use agent::cli::{Cli, Command};

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
            ipc::systemd::cancel_on_signals(shutdown.clone())
                .map_err(|e| anyhow::anyhow!("install the SIGTERM/SIGINT handlers: {e}"))?;
            agent::daemon::run(args.config(&cli.control_socket), shutdown).await?;
            Ok(0)
        }
        command => {
            // Client commands log only problems, to stderr, so their output stays clean.
            logging::init(LogFormat::Text, "warn")?;
            agent::cli::client(&cli.control_socket, cli.wait, command).await
        }
    }
}
