use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use netmon::cli::{Cli, Command};
use netmon::filter::Filter;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("netmon: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(real_main(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("netmon: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::Health { socket, timeout }) => {
            match netmon::health::check(&socket, timeout).await {
                Ok((n, instance)) => {
                    println!("healthy: {n} interfaces, instance {instance}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(why) => {
                    println!("unhealthy: {why}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Some(Command::Dump {
            json,
            include,
            exclude,
        }) => {
            let filter = Filter::new(&include, &exclude).context("--include/--exclude")?;
            let mut out = std::io::stdout().lock();
            netmon::dump::run_dump(&filter, json, &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Watch { socket, json }) => {
            let shutdown = CancellationToken::new();
            ipc::systemd::cancel_on_signals(shutdown.clone())
                .map_err(|e| anyhow::anyhow!("install the SIGTERM/SIGINT handlers: {e}"))?;
            netmon::watch::run(&socket, json, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            ipc::logging::init(cli.log.log_format, &cli.log.log_level).context("set up logging")?;
            raise_fd_limit();
            let shutdown = CancellationToken::new();
            ipc::systemd::cancel_on_signals(shutdown.clone())
                .map_err(|e| anyhow::anyhow!("install the SIGTERM/SIGINT handlers: {e}"))?;
            netmon::run(cli.daemon.config(), shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Every client is a descriptor, and systemd's default soft limit (1,024) is below
/// the default client cap: raise the soft limit to the hard one (no privilege needed).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return;
        }
        let (soft, hard) = (lim.rlim_cur, lim.rlim_max);
        lim.rlim_cur = hard;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            let e = std::io::Error::last_os_error();
            tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
        }
    }
}
