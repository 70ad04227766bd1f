//! What nats-server itself guarantees across a stream-leader kill, without Slipway: every
//! publish acknowledged by an R3 stream is still there after the leader is SIGKILLed and
//! restarted. (A publish whose ack was lost in the kill may be stored too: more than was
//! acknowledged is no loss.)

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use slipway_testkit::NatsCluster;

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_publishes_survive_a_stream_leader_kill() {
    let mut cluster = NatsCluster::start().await.unwrap();
    let client = async_nats::connect(cluster.addrs()).await.unwrap();
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "FAILOVER".into(),
        subjects: vec!["failover.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();

    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..8)
        .map(|p| {
            let (js, acked, stop) = (js.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let subject = format!("failover.{p}.{n}");
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(async_nats::header::NATS_MESSAGE_ID, subject.as_str());
                    let ack = match js.publish_with_headers(subject, headers, "x".into()).await {
                        Ok(ack) => ack.await,
                        Err(e) => Err(e),
                    };
                    match ack {
                        Ok(_) => {
                            acked.fetch_add(1, Ordering::SeqCst);
                            n += 1;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                n
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = cluster.stream_leader(&js, "FAILOVER").await.unwrap();
    cluster.nodes[leader].kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart(leader).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acked_per_publisher = Vec::new();
    for p in publishers {
        acked_per_publisher.push(p.await.unwrap());
    }
    // Right after a failover the API may not answer at once.
    let stream = loop {
        match js.get_stream("FAILOVER").await {
            Ok(stream) => break stream,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let stored: std::collections::HashSet<String> = stream
        .info_with_subjects("failover.>")
        .await
        .unwrap()
        .map(|subject| subject.unwrap().0)
        .collect()
        .await;
    let lost: Vec<String> = acked_per_publisher
        .iter()
        .enumerate()
        .flat_map(|(p, &n)| (0..n).map(move |i| format!("failover.{p}.{i}")))
        .filter(|subject| !stored.contains(subject))
        .collect();
    let acked: u64 = acked_per_publisher.iter().sum();
    eprintln!("acked {acked}, stored {}", stored.len());
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost, first {:?}",
        lost.len(),
        lost.first()
    );
}
