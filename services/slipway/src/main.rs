//! `slipway`: the operator CLI.

mod demo_app;
mod dev;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "slipway", version, about = "Slipway deployment control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a whole control plane on this machine: its own nats-server on a free port,
    /// SQLite, every service, and demo records to try it with. Ctrl-C stops it all.
    Dev(dev::DevArgs),
    /// A small HTTP app to deploy: `/`, `/healthz`, `/openapi.yaml` on 127.0.0.1:$PORT.
    DemoApp(demo_app::DemoAppArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::DemoApp(args) => demo_app::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slipway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
