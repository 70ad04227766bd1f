//! krane-agent running OCI images as containers on a real engine: podman's Docker Engine API
//! service (testkit `Podman`), images built `FROM scratch` around a static busybox whose httpd
//! serves files on `$PORT`.

mod common;

use std::time::{Duration, Instant};

use common::{all, doc, get, AgentCalls};
use slipway_core::krane::{labels, Desired, InstanceStatus, InstancesReport, Limits};
use slipway_testkit::{plane::Plane as Env, Podman};

async fn start(podman: &Podman) -> Env {
    Env::builder()
        .docker_host(podman.host())
        .agent()
        .start()
        .await
}

/// A fresh tag, so that tests running at once never share an image.
fn image(name: &str) -> String {
    format!(
        "localhost/slipway-test-{name}:{}",
        uuid::Uuid::new_v4().simple()
    )
}

fn ids_and_addresses(report: &InstancesReport) -> Vec<(String, String)> {
    let mut v: Vec<_> = report
        .instances
        .iter()
        .map(|i| (i.id.clone(), i.address.clone()))
        .collect();
    v.sort();
    v
}

/// The containers of deployment `id` that this test's agents started.
fn containers(podman: &Podman, env: &Env, id: &str) -> Vec<String> {
    let scope = std::fs::read_to_string(env.agent_state.path().join("local/scope")).unwrap();
    podman.containers_labelled(&[(labels::SCOPE, scope.trim()), (labels::DEPLOYMENT, id)])
}

fn instance_log(env: &Env, instance_id: &str) -> String {
    let path = env
        .agent_state
        .path()
        .join("local")
        .join(format!("{instance_id}.log"));
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The instance's log once it satisfies `ok`.
async fn log_where(env: &Env, instance_id: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = instance_log(env, instance_id);
        if ok(&log) {
            return log;
        }
        assert!(Instant::now() < deadline, "{instance_id}'s log: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_runs_as_containers_that_outlive_an_agent_restart_and_stop_for_standby() {
    let Some(podman) = Podman::start() else {
        return;
    };
    let tag = image("www");
    podman.build_www_image(&tag, &[("index.html", "hello from a container\n")]);
    let mut env = start(&podman).await;

    let mut d = doc("dep_box", tag.clone(), 2, Desired::Running, 1);
    d.env.insert("GREETING".into(), "hej".into());
    d.limits = Limits {
        memory_mb: 64,
        cpu_millis: 500,
    };
    let asked = Instant::now();
    env.desire_doc(&d).await;
    let report = env
        .report_where("dep_box", |r| all(r, 2, InstanceStatus::Running))
        .await;
    eprintln!(
        "2 containers running and healthy {:?} after the desired document was put",
        asked.elapsed()
    );
    for instance in &report.instances {
        assert!(instance.address.starts_with("127.0.0.1:"), "{instance:?}");
        assert_eq!(
            get(&instance.address, "/").await.as_deref(),
            Some("hello from a container\n")
        );
        // The environment's variables and PORT (the environment's port) are passed in.
        let vars = get(&instance.address, "/env").await.unwrap();
        assert!(
            vars.contains("GREETING=hej") && vars.contains("PORT=8080"),
            "{vars}"
        );
        // Its output is captured in the instance's log (copied from the engine's log
        // stream as it comes: moments after the app printed it).
        log_where(&env, &instance.id, |log| log.contains("serving on 8080")).await;
    }
    let started = containers(&podman, &env, "dep_box");
    assert_eq!(started.len(), 2, "{started:?}");
    let started_at = |id: &String| podman.run(&["inspect", "-f", "{{.State.StartedAt}}", id]);
    let first_started: Vec<String> = started.iter().map(started_at).collect();
    // The environment's limits, as the engine applies them.
    for id in &started {
        let limits = podman.run(&[
            "inspect",
            "-f",
            "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}",
            id,
        ]);
        assert_eq!(limits, format!("{} 500000000", 64 * 1024 * 1024));
    }

    // The agent SIGKILLed and started again adopts its containers: same instances, same
    // addresses, the same containers never restarted.
    env.agent.as_mut().unwrap().kill();
    for instance in &report.instances {
        assert!(
            get(&instance.address, "/").await.is_some(),
            "died with the agent"
        );
    }
    // While no agent runs, a container of this region's agents that no deployment claims
    // (left by a crash, say): the next agent removes it once it has read the desired state.
    let scope = std::fs::read_to_string(env.agent_state.path().join("local/scope")).unwrap();
    let label = |name: &str, value: &str| format!("{name}={value}");
    podman.run(&[
        "run",
        "-d",
        "--label",
        &label(labels::SCOPE, scope.trim()),
        "--label",
        &label(labels::REGION, "local"),
        "--label",
        &label(labels::DEPLOYMENT, "dep_gone"),
        "--label",
        &label(labels::INSTANCE, "inst_gone"),
        "--label",
        &label(labels::HOST_PORT, "1"),
        "-e",
        "PORT=8080",
        &tag,
    ]);
    assert_eq!(containers(&podman, &env, "dep_gone").len(), 1);
    let restarted = slipway_core::time::now_ms();
    env.start_agent();
    let adopted = env
        .report_where("dep_box", |r| {
            r.reported_at_ms > restarted && all(r, 2, InstanceStatus::Running)
        })
        .await;
    assert_eq!(ids_and_addresses(&adopted), ids_and_addresses(&report));
    assert_eq!(containers(&podman, &env, "dep_box"), started);
    assert_eq!(
        started.iter().map(started_at).collect::<Vec<_>>(),
        first_started
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !containers(&podman, &env, "dep_gone").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the orphan container is still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Standby: the containers stop (and go), the instances stay listed inactive.
    d.desired = Desired::Stopped;
    d.version = 2;
    env.desire_doc(&d).await;
    env.report_where("dep_box", |r| {
        r.version == 2 && all(r, 2, InstanceStatus::Inactive)
    })
    .await;
    assert!(containers(&podman, &env, "dep_box").is_empty());
    for instance in &report.instances {
        assert!(get(&instance.address, "/").await.is_none(), "still answers");
    }

    // And back: running and answering again.
    d.desired = Desired::Running;
    d.version = 3;
    env.desire_doc(&d).await;
    let back = env
        .report_where("dep_box", |r| {
            r.version == 3 && all(r, 2, InstanceStatus::Running)
        })
        .await;
    for instance in &back.instances {
        assert_eq!(
            get(&instance.address, "/").await.as_deref(),
            Some("hello from a container\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_that_cannot_be_pulled_fails_at_once_with_the_engine_s_reason() {
    let Some(podman) = Podman::start() else {
        return;
    };
    let env = start(&podman).await;
    let missing = image("missing");
    let asked = Instant::now();
    env.desire("dep_missing", missing.clone(), 2, Desired::Running, 1)
        .await;
    let report = env
        .report_where("dep_missing", |r| {
            all(r, 2, InstanceStatus::Failed) && r.instances.iter().all(|i| i.unrunnable)
        })
        .await;
    let message = report.instances[0].message.clone().unwrap_or_default();
    assert!(
        message.contains(&missing) && message.contains("cannot be pulled"),
        "{message}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "failed after {:?}",
        asked.elapsed()
    );
    assert!(containers(&podman, &env, "dep_missing").is_empty());
}

/// Credentials a user gave (`SLIPWAY_REGISTRY_AUTH`) that hold no password for the image's
/// registry, only a credential helper's entry (not supported): the deployment fails saying
/// so, rather than the image being pulled anonymously.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_whose_registry_has_only_a_credential_helper_fails_saying_so() {
    let Some(podman) = Podman::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("config.json");
    std::fs::write(
        &auth,
        r#"{"auths": {"registry.invalid:5000": {}}, "credHelpers": {"registry.invalid:5000": "ecr-login"}}"#,
    )
    .unwrap();
    let env = Env::builder()
        .docker_host(podman.host())
        .service_env("SLIPWAY_REGISTRY_AUTH", auth.display().to_string())
        .agent()
        .start()
        .await;
    let private = "registry.invalid:5000/acme/shop:1".to_string();
    env.desire("dep_helper", private.clone(), 1, Desired::Running, 1)
        .await;
    let report = env
        .report_where("dep_helper", |r| {
            all(r, 1, InstanceStatus::Failed) && r.instances[0].unrunnable
        })
        .await;
    let message = report.instances[0].message.clone().unwrap_or_default();
    assert!(
        message.contains(&private)
            && message.contains("no user name and password for registry.invalid:5000")
            && message.contains("credential helpers"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_that_keeps_exiting_is_restarted_and_reported_crash_looping() {
    let Some(podman) = Podman::start() else {
        return;
    };
    let tag = image("crash");
    podman.build_www_image(&tag, &[]);
    let env = start(&podman).await;
    let mut d = doc("dep_crash", tag, 1, Desired::Running, 1);
    d.command = vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        "echo giving up; exit 3".into(),
    ];
    env.desire_doc(&d).await;
    let report = env
        .report_where("dep_crash", |r| {
            all(r, 1, InstanceStatus::Failed) && r.instances[0].crash_looping
        })
        .await;
    let instance = &report.instances[0];
    assert!(!instance.unrunnable);
    assert!(
        instance
            .message
            .as_deref()
            .is_some_and(|m| m.contains("exited with code 3")),
        "{instance:?}"
    );
    // Every run's output is kept, each run marked.
    log_where(&env, &instance.id, |log| {
        log.matches("giving up").count() >= 3
    })
    .await;
    // One container at a time: the exited one goes before the next starts.
    assert!(containers(&podman, &env, "dep_crash").len() <= 1);
}
