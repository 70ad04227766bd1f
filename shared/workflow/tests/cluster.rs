//! The engine on a 3-node JetStream cluster (R3): workflows started through one node and run
//! by workers attached to the others all complete — none dropped because a replica had not
//! yet applied its record — also while the leader of the records' stream is killed and
//! restarted.

use std::time::Duration;

use async_nats::jetstream;
use futures::future::join_all;
use slipway_nats::provision;
use slipway_testkit::NatsCluster;
use slipway_workflow::{Context, Engine, EngineConfig, Status, Workflow, WorkflowError};

/// Takes the lease of its key and journals three steps under it.
struct Leased;

impl Workflow for Leased {
    const KIND: &'static str = "leased";
    type Input = String;
    type Output = u64;

    async fn run(&self, ctx: &mut Context, key: String) -> Result<u64, WorkflowError> {
        let epoch = ctx
            .lease(&key, |_| async { Ok(()) })
            .await?
            .unwrap_or_default();
        for step in ["one", "two", "three"] {
            ctx.step(step, || async { Ok(step.len()) }).await?;
        }
        Ok(epoch)
    }
}

fn config() -> EngineConfig {
    let mut config = EngineConfig::new("deploy-orchestrator");
    config.ack_wait = Duration::from_secs(2);
    config.lease_ttl = Duration::from_secs(2);
    config
}

async fn engine(addrs: Vec<async_nats::ServerAddr>) -> Engine {
    let client = async_nats::connect(addrs).await.unwrap();
    Engine::builder(jetstream::new(client), config())
        .register(Leased)
        .build()
        .await
        .unwrap()
}

async fn start_all(starter: &Engine, from: usize, to: usize) {
    join_all((from..to).map(|i| {
        let starter = starter.clone();
        async move {
            let id = format!("wf_{i:04}");
            starter
                .start::<Leased>(&id, "k", &format!("key-{}", i % 10), None)
                .await
                .unwrap();
        }
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_workflow_completes_on_a_cluster_across_a_leader_kill() {
    let mut cluster = NatsCluster::start().await.unwrap();
    let admin = async_nats::connect(cluster.addrs()).await.unwrap();
    let js = jetstream::new(admin);
    provision::provision(&js, 3).await.unwrap();
    let records = format!("KV_{}", provision::WORKFLOW_RECORDS);
    let leader = cluster.stream_leader(&js, &records).await.unwrap();
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    // Started through the leader, run by workers attached to the followers: the workers'
    // first read of each record races the replication of its create.
    let starter = engine(vec![cluster.nodes[leader].url().parse().unwrap()]).await;
    for &node in &followers {
        tokio::spawn(
            engine(vec![cluster.nodes[node].url().parse().unwrap()])
                .await
                .run_workers(),
        );
    }
    // One follower stalls again and again (SIGSTOP up to a second, as in a VM pause): when it
    // runs again it answers reads before it has caught up.
    let stalled = cluster.nodes[followers[0]].pid().unwrap();
    let stalls = tokio::spawn(async move {
        for i in 0..12u64 {
            slipway_testkit::process::signal(stalled, "-STOP");
            tokio::time::sleep(Duration::from_millis(300 + 60 * i)).await;
            slipway_testkit::process::signal(stalled, "-CONT");
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    });
    start_all(&starter, 0, 150).await;
    stalls.await.unwrap();

    // Then the records' leader dies and comes back while more are started and run; clients
    // now know every node.
    let starter = engine(cluster.addrs()).await;
    tokio::spawn(engine(cluster.addrs()).await.run_workers());
    let more = tokio::spawn({
        let starter = starter.clone();
        async move { start_all(&starter, 150, 250).await }
    });
    cluster.nodes[leader].kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart(leader).await.unwrap();
    more.await.unwrap();

    let waits = (0..250).map(|i| {
        let starter = starter.clone();
        async move {
            let id = format!("wf_{i:04}");
            (id.clone(), starter.wait(&id, Duration::from_secs(90)).await)
        }
    });
    let unfinished: Vec<String> = join_all(waits)
        .await
        .into_iter()
        .filter_map(|(id, record)| match record {
            Ok(r) if r.status == Status::Completed => None,
            Ok(r) => Some(format!("{id}: {:?} {:?}", r.status, r.error)),
            Err(e) => Some(format!("{id}: {e}")),
        })
        .collect();
    assert!(
        unfinished.is_empty(),
        "{} of 250 workflows did not complete: {:?}",
        unfinished.len(),
        &unfinished[..unfinished.len().min(10)]
    );
}
