//! `slipway env set | unset | vars`: an environment's variables. Each deployment snapshots
//! them when it is created; secret values are sealed at rest and never shown.

use std::io::BufRead;

use anyhow::{bail, Context, Result};
use slipway_core::subjects;
use slipway_proto::v1::{
    ListEnvironmentVariablesReply, ListEnvironmentVariablesRequest, SetEnvironmentVariablesReply,
    SetEnvironmentVariablesRequest, UnsetEnvironmentVariablesReply,
    UnsetEnvironmentVariablesRequest, VariableValue,
};

use crate::api::{print, Api};

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// The environment's slug.
    pub environment: String,
    #[arg(long)]
    pub project: String,
    /// Seal the values at rest and never show them again. `NAME` alone reads its value
    /// from standard input (one line), keeping it out of the shell's history.
    #[arg(long)]
    pub secret: bool,
    /// `NAME=VALUE`, repeatable.
    #[arg(required = true)]
    pub assignments: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct UnsetArgs {
    pub environment: String,
    #[arg(long)]
    pub project: String,
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct VarsArgs {
    pub environment: String,
    #[arg(long)]
    pub project: String,
}

pub async fn set(api: &Api, args: SetArgs, json_out: bool) -> Result<()> {
    let mut variables = std::collections::HashMap::new();
    for assignment in args.assignments {
        let (name, value) = match assignment.split_once('=') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None if args.secret => {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .with_context(|| format!("reading the value of {assignment} from stdin"))?;
                (assignment, line.trim_end_matches(['\n', '\r']).to_string())
            }
            None => bail!("{assignment:?} is not NAME=VALUE (NAME alone needs --secret)"),
        };
        variables.insert(
            name,
            VariableValue {
                value,
                secret: args.secret,
            },
        );
    }
    let request = SetEnvironmentVariablesRequest {
        project_id: args.project,
        environment_slug: args.environment.clone(),
        variables,
    };
    let reply: SetEnvironmentVariablesReply = api
        .request(subjects::project::SET_VARIABLES, &request)
        .await?;
    print(json_out, &reply, |r| {
        println!(
            "set in {}: {} (new deployments get them)",
            args.environment,
            r.names.join(", ")
        )
    });
    Ok(())
}

pub async fn unset(api: &Api, args: UnsetArgs, json_out: bool) -> Result<()> {
    let request = UnsetEnvironmentVariablesRequest {
        project_id: args.project,
        environment_slug: args.environment.clone(),
        names: args.names,
    };
    let reply: UnsetEnvironmentVariablesReply = api
        .request(subjects::project::UNSET_VARIABLES, &request)
        .await?;
    print(json_out, &reply, |r| {
        if r.names.is_empty() {
            println!("{} had none of them", args.environment);
        } else {
            println!("unset in {}: {}", args.environment, r.names.join(", "));
        }
    });
    Ok(())
}

pub async fn list(api: &Api, args: VarsArgs, json_out: bool) -> Result<()> {
    let request = ListEnvironmentVariablesRequest {
        project_id: args.project,
        environment_slug: args.environment,
    };
    let reply: ListEnvironmentVariablesReply = api
        .request(subjects::project::LIST_VARIABLES, &request)
        .await?;
    print(json_out, &reply, |r| {
        for v in &r.variables {
            match &v.value {
                Some(value) if !v.secret => println!("{}={value}", v.name),
                _ => println!("{}=<secret>", v.name),
            }
        }
    });
    Ok(())
}
