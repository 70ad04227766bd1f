//! `slipway`: the operator CLI.

mod api;
mod commands;
mod demo_app;
mod deploy;
mod dev;
mod logs;
mod variables;

use clap::{Parser, Subcommand};
use slipway_core::{config::NatsConfig, subjects};
use slipway_proto::v1::{PromoteRequest, RollbackRequest};

#[derive(Parser)]
#[command(name = "slipway", version, about = "Slipway deployment control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print replies as JSON (every read command), for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    nats: NatsConfig,
}

#[derive(Subcommand)]
enum Command {
    /// Start a whole control plane on this machine: its own nats-server on a free port,
    /// SQLite, every service, and demo records to try it with. Ctrl-C (or SIGTERM) stops it
    /// all.
    Dev(dev::DevArgs),
    /// A small HTTP app to deploy: `/`, `/healthz`, `/openapi.yaml` on 127.0.0.1:$PORT.
    DemoApp(demo_app::DemoAppArgs),
    /// Workspaces.
    #[command(subcommand)]
    Workspace(commands::WorkspaceCommand),
    /// Projects.
    #[command(subcommand)]
    Project(commands::ProjectCommand),
    /// Environments and their variables.
    #[command(subcommand)]
    Env(commands::EnvCommand),
    /// Deploy an image and follow it to ready (or its failure).
    Deploy(deploy::DeployArgs),
    /// Move live and environment traffic back to an earlier deployment (pins the project).
    Rollback {
        source: String,
        target: String,
        #[arg(long, default_value_t = 60_000)]
        wait_ms: i64,
    },
    /// Make a deployment live (unpins the project; on the live one, confirms a rollback).
    Promote {
        target: String,
        #[arg(long, default_value_t = 60_000)]
        wait_ms: i64,
    },
    /// Stop a deployment for good: its routes removed, its instances stopped (refused for
    /// a deployment that serves traffic).
    Archive {
        deployment: String,
        #[arg(long, default_value_t = 60_000)]
        wait_ms: i64,
    },
    /// A deployment: state, instances, domains, pending transition.
    Status { deployment: String },
    /// What a deployment's build and its instances printed (`<source> | <line>`, the source
    /// being `build` or an instance id).
    Logs {
        deployment: String,
        /// Keep printing new lines as they come (Ctrl-C stops).
        #[arg(long, short)]
        follow: bool,
    },
    /// A project's deployments, newest first; `*` marks the live one.
    Ls {
        #[arg(long)]
        project: String,
        #[arg(long = "env")]
        environment: Option<String>,
    },
    /// A project's routes.
    Routes {
        #[arg(long)]
        project: String,
    },
    /// Every pending desired-state transition and when it fires.
    Timers,
    /// Create or update every stream and bucket (as `admin`, where services run with
    /// SLIPWAY_PROVISION=false: nats/accounts.conf lets no service create streams).
    Provision {
        /// Replicas (3 on a 3-node cluster).
        #[arg(long, env = "SLIPWAY_JS_REPLICAS", default_value_t = 1)]
        replicas: usize,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let origin = api::UrlOrigin::resolve(&args);
    let cli = Cli::parse_from(args);
    let result = run(cli, origin).await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slipway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, origin: api::UrlOrigin) -> anyhow::Result<()> {
    let json_out = cli.json;
    match cli.command {
        Command::Dev(args) => return dev::run(args).await,
        Command::DemoApp(args) => return demo_app::run(args).await,
        _ => {}
    }
    let api = api::Api::connect(&cli.nats, origin).await?;
    match cli.command {
        Command::Dev(_) | Command::DemoApp(_) => Ok(()),
        Command::Workspace(c) => commands::workspace(&api, c, json_out).await,
        Command::Project(c) => commands::project(&api, c, json_out).await,
        Command::Env(c) => commands::env(&api, c, json_out).await,
        Command::Deploy(args) => deploy::deploy(&api, args, json_out).await,
        Command::Rollback {
            source,
            target,
            wait_ms,
        } => {
            let request = RollbackRequest {
                source_deployment_id: source,
                target_deployment_id: target,
                wait_ms: Some(wait_ms),
            };
            deploy::traffic(&api, subjects::deploy::ROLLBACK, &request, json_out).await
        }
        Command::Promote { target, wait_ms } => {
            let request = PromoteRequest {
                target_deployment_id: target,
                wait_ms: Some(wait_ms),
            };
            deploy::traffic(&api, subjects::deploy::PROMOTE, &request, json_out).await
        }
        Command::Archive {
            deployment,
            wait_ms,
        } => commands::archive(&api, deployment, wait_ms, json_out).await,
        Command::Status { deployment } => commands::status(&api, &deployment, json_out).await,
        Command::Logs { deployment, follow } => logs::logs(&api, &deployment, follow).await,
        Command::Ls {
            project,
            environment,
        } => commands::ls(&api, &project, environment, json_out).await,
        Command::Routes { project } => commands::routes(&api, &project, json_out).await,
        Command::Timers => commands::timers(&api, json_out).await,
        Command::Provision { replicas } => {
            let js = async_nats::jetstream::new(api.client.clone());
            slipway_nats::provision::provision(&js, replicas).await?;
            println!("streams and buckets provisioned ({replicas} replica(s))");
            Ok(())
        }
    }
}
