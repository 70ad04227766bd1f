//! Start-up provisioning is idempotent and safe when several services start at once.

use slipway_nats::provision::{
    self, DESIRED, EVENTS, INSTANCES, ROUTES, TIMERS, TRAFFIC, TRANSITIONS, WORKFLOWS,
};
use slipway_testkit::NatsServer;

#[tokio::test]
async fn concurrent_and_repeated_provisioning_converges() {
    let server = NatsServer::start().await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = server.url();
        tasks.push(tokio::spawn(async move {
            let client = async_nats::connect(url).await.unwrap();
            provision::provision(&async_nats::jetstream::new(client), 1).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    provision::provision(&js, 1).await.unwrap();

    for name in [TIMERS, EVENTS, WORKFLOWS, TRAFFIC] {
        let info = js.get_stream(name).await.unwrap().get_info().await.unwrap();
        assert_eq!(info.config.name, name);
    }
    let timers = js
        .get_stream(TIMERS)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert!(timers.config.allow_message_schedules && timers.config.allow_message_ttl);
    assert_eq!(timers.config.subjects, vec!["slipway.timers.>".to_string()]);
    let workflows = js
        .get_stream(WORKFLOWS)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(
        workflows.config.retention,
        async_nats::jetstream::stream::RetentionPolicy::WorkQueue
    );
    for bucket in [TRANSITIONS, ROUTES, DESIRED, INSTANCES] {
        js.get_key_value(bucket).await.unwrap();
    }
}
