//! `slipway dev`: nats-server (≥ 2.14, from `.tools/`) on a free port with its data in
//! `<dir>/nats`, SQLite at `<dir>/slipway.db`, every service binary that exists so far, and a
//! demo workspace / project / deployment.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use futures::StreamExt;
use slipway_core::{
    domains::{generate, DomainInput, DEFAULT_APEX},
    krane::{instances_key, Desired, DesiredDeployment, InstanceStatus, InstancesReport},
    time::now_ms,
};
use slipway_store::{NewDeployment, Store, StoreError};
use slipway_testkit::{NatsServer, ServiceProcess};

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the control plane keeps its data between runs.
    #[arg(long, default_value = ".slipway-dev")]
    dir: PathBuf,
    /// Standby delay for superseded production deployments (shorter than production's 30m).
    #[arg(long, default_value = "30m")]
    standby_delay: String,
}

/// The services, in start order. Those not built yet say so and are skipped.
const SERVICES: &[(&str, &str)] = &[
    ("deployment-actor", "deployment-actor ready"),
    ("routing", "routing ready"),
    ("krane-agent", "krane-agent ready"),
];
const NOT_YET: &[&str] = &["deploy-orchestrator"];

pub async fn run(args: DevArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let dir = args.dir.canonicalize()?;
    let nats = NatsServer::start_in(dir.join("nats"))
        .await
        .context("starting nats-server")?;
    let database_url = format!("sqlite://{}", dir.join("slipway.db").display());
    let store = Store::open(&database_url).await?;
    let demo = seed(&store).await?;

    let bin_dir = std::env::current_exe()?
        .parent()
        .context("no directory for the slipway binary")?
        .to_path_buf();
    // The agent runs `exec:slipway demo-app …`: put this slipway first on its PATH.
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = [
        ("SLIPWAY_NATS_URL", nats.url()),
        ("SLIPWAY_DATABASE_URL", database_url.clone()),
        ("SLIPWAY_STANDBY_DELAY", args.standby_delay.clone()),
        (
            "SLIPWAY_AGENT_STATE_DIR",
            dir.join("agent").display().to_string(),
        ),
        ("PATH", path),
    ];
    let mut running: Vec<ServiceProcess> = Vec::new();
    for (name, ready) in SERVICES {
        let bin = bin_dir.join(name);
        anyhow::ensure!(
            bin.exists(),
            "{} is missing: run `cargo build --workspace` first",
            bin.display()
        );
        let process = ServiceProcess::spawn(name, &bin, &[], &env)?;
        let started =
            tokio::task::block_in_place(|| process.wait_for_log(ready, Duration::from_secs(60)));
        started.with_context(|| format!("{name} did not start"))?;
        running.push(process);
    }

    demo_routes(&nats.url(), &demo)
        .await
        .context("creating the demo routes")?;
    let demo_address = run_demo(&nats.url(), &store, &demo)
        .await
        .context("starting the demo app")?;

    println!();
    println!("Slipway dev control plane is up.");
    println!("  NATS      {}", nats.url());
    println!("  database  {database_url}");
    println!(
        "  services  {}",
        SERVICES.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
    );
    println!("  not yet   {} (later issues)", NOT_YET.join(", "));
    println!("  demo app  http://{demo_address}/  (deployment {demo}, run by krane-agent)");
    println!();
    println!("Try it (nats CLI):");
    println!("  export NATS_URL={}", nats.url());
    println!("  nats micro ls");
    println!(
        "  nats req slipway.deployment.v1.schedule_desired_state_change.{demo} '{{\"delay_ms\":5000,\"state\":\"standby\"}}'"
    );
    println!("  nats req slipway.deployment.v1.get_state.{demo} '{{}}'");
    println!("  nats req slipway.routing.v1.list_routes.proj_demo '{{}}'");
    println!("  nats kv watch slipway_routes");
    println!("  nats sub 'slipway.events.>'");
    println!();
    println!("Ctrl-C stops everything; data stays in {}.", dir.display());

    tokio::signal::ctrl_c().await?;
    eprintln!("stopping");
    // SIGTERM, newest first: the agent stops the demo app before it goes.
    for process in running.iter_mut().rev() {
        process.terminate(Duration::from_secs(10));
    }
    drop(nats);
    Ok(())
}

/// Asks the region agent to run the demo deployment (as a deploy's topology step would) and
/// waits until it reports the instance running; returns its address.
async fn run_demo(nats_url: &str, store: &Store, deployment_id: &str) -> Result<String> {
    let d = store.deployment(deployment_id).await?;
    let client = async_nats::connect(nats_url).await?;
    let js = async_nats::jetstream::new(client);
    let desired = js.get_key_value("slipway_desired").await?;
    let instances = js.get_key_value("slipway_instances").await?;
    let mut watch = instances
        .watch_with_history(instances_key(deployment_id, "local"))
        .await?;
    for topology in store.topology(deployment_id).await? {
        let doc = DesiredDeployment {
            deployment_id: d.id.clone(),
            workspace_id: d.workspace_id.clone(),
            project_id: d.project_id.clone(),
            environment_id: d.environment_id.clone(),
            image: d.image.clone(),
            replicas: topology.replicas,
            port: d.port,
            command: d.command.clone(),
            env: d.env.clone(),
            desired: if topology.desired_status == "started" {
                Desired::Running
            } else {
                Desired::Stopped
            },
            version: topology.version,
        };
        slipway_nats::krane::put_desired_deployment(&desired, &topology.region, &doc).await?;
    }
    let wait = async {
        while let Some(entry) = watch.next().await {
            let report: InstancesReport = serde_json::from_slice(&entry?.value)?;
            if let Some(i) = report
                .instances
                .iter()
                .find(|i| i.status == InstanceStatus::Running)
            {
                return Ok(i.address.clone());
            }
        }
        anyhow::bail!("the instances watch ended")
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .context("the demo app did not become healthy within 60 s")?
}

/// The demo deployment's generated domains, created through routing (as a deploy would).
async fn demo_routes(nats_url: &str, deployment_id: &str) -> Result<()> {
    let routes: Vec<serde_json::Value> = generate(&DomainInput {
        apex: DEFAULT_APEX,
        workspace_slug: "demo",
        project_slug: "demo-app",
        environment_slug: "production",
        deployment_id,
        branch: "main",
        commit_sha: "",
    })
    .into_iter()
    .map(|d| serde_json::json!({"fqdn": d.fqdn, "sticky": d.sticky.as_str()}))
    .collect();
    let body = serde_json::json!({
        "environment_id": "env_demo_production",
        "deployment_id": deployment_id,
        "routes": routes,
    });
    let client = async_nats::connect(nats_url).await?;
    let reply = client
        .request(
            "slipway.routing.v1.ensure_routes.proj_demo",
            body.to_string().into(),
        )
        .await?;
    if let Some(code) = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
    {
        anyhow::bail!(
            "routing answered {code}: {}",
            String::from_utf8_lossy(&reply.payload)
        );
    }
    Ok(())
}

/// A demo workspace, project, production environment and deployment; kept across runs.
async fn seed(store: &Store) -> Result<String> {
    let now = now_ms();
    match store.create_workspace("ws_demo", "demo", "Demo", now).await {
        Ok(_) | Err(StoreError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    match store
        .create_project("proj_demo", "ws_demo", "demo-app", "Demo app", "main", now)
        .await
    {
        Ok(_) | Err(StoreError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let regions = BTreeMap::from([("local".to_string(), 1)]);
    match store
        .create_environment(
            "env_demo_production",
            "proj_demo",
            "production",
            &regions,
            8080,
            "{}",
            now,
        )
        .await
    {
        Ok(_) | Err(StoreError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let id = "dep_demo";
    if store.find_deployment(id).await?.is_none() {
        store
            .insert_deployment(
                &NewDeployment {
                    id: id.into(),
                    environment_id: "env_demo_production".into(),
                    image: "exec:slipway demo-app --message hello".into(),
                    ..Default::default()
                },
                now,
            )
            .await?;
        store.upsert_topology(id, "local", 1, now).await?;
    }
    Ok(id.to_string())
}
