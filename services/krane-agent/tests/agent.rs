//! krane-agent over real processes: a real nats-server, the agent binary, and `slipway
//! demo-app` as the deployed app (built alongside by `cargo test --workspace`).

mod common;

use std::{
    os::unix::process::CommandExt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{all, get, slipway_bin, AgentCalls, TIMEOUT};
use futures::StreamExt;
use slipway_core::krane::{instances_key, Desired, InstanceStatus, InstancesReport};
use slipway_testkit::{
    plane::{bin, Plane as Env, AGENT},
    Partition, ServiceProcess,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A nats-server and the region agent of `local`.
async fn start() -> Env {
    Env::builder().agent().start().await
}

fn demo_app(args: &str) -> String {
    format!("exec:{} demo-app {args}", slipway_bin().display())
}

#[tokio::test]
async fn runs_replicas_until_healthy_and_stops_them() {
    let env = start().await;
    env.desire(
        "dep_a",
        demo_app("--message 'hi there'"),
        2,
        Desired::Running,
        1,
    )
    .await;
    let report = env
        .report_where("dep_a", |r| all(r, 2, InstanceStatus::Running))
        .await;
    for instance in &report.instances {
        assert_eq!(
            get(&instance.address, "/").await.as_deref(),
            Some("hi there")
        );
    }

    env.desire(
        "dep_a",
        demo_app("--message 'hi there'"),
        2,
        Desired::Stopped,
        2,
    )
    .await;
    env.report_where("dep_a", |r| all(r, 2, InstanceStatus::Inactive))
        .await;
    for instance in &report.instances {
        assert!(
            get(&instance.address, "/").await.is_none(),
            "{} still answers",
            instance.address
        );
    }
}

#[tokio::test]
async fn crash_loops_and_other_image_schemes_are_reported_failed() {
    let env = start().await;
    env.desire(
        "dep_crash",
        demo_app("--exit-after 0s"),
        1,
        Desired::Running,
        1,
    )
    .await;
    let report = env
        .report_where("dep_crash", |r| {
            r.instances.len() == 1
                && r.instances[0].status == InstanceStatus::Failed
                && r.instances[0]
                    .message
                    .as_deref()
                    .is_some_and(|m| m.starts_with("crash-looping"))
        })
        .await;
    assert!(
        report.instances[0]
            .message
            .as_deref()
            .unwrap()
            .contains("exit status: 1"),
        "{report:?}"
    );
    // Every run's output is kept across its restarts (the log was truncated at each one).
    let log = std::fs::read_to_string(
        env.agent_state
            .path()
            .join("local")
            .join(format!("{}.log", report.instances[0].id)),
    )
    .unwrap();
    let runs = log.matches("exiting as asked").count();
    assert!(
        runs >= 2 && log.matches("--- slipway: ").count() >= runs,
        "{log}"
    );

    env.desire(
        "dep_oci",
        "docker.io/library/nginx:1".into(),
        1,
        Desired::Running,
        1,
    )
    .await;
    let report = env
        .report_where("dep_oci", |r| all(r, 1, InstanceStatus::Failed))
        .await;
    assert!(
        report.instances[0]
            .message
            .as_deref()
            .unwrap()
            .contains("no container engine"),
        "{report:?}"
    );

    // An app that never becomes healthy stays pending.
    env.desire("dep_sick", demo_app("--unhealthy"), 1, Desired::Running, 1)
        .await;
    let report = env
        .report_where("dep_sick", |r| {
            all(r, 1, InstanceStatus::Pending) && !r.instances[0].address.is_empty()
        })
        .await;
    // Once the app answers (503), the agent, checking every 100 ms, still says pending.
    let address = &report.instances[0].address;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while get(address, "/healthz").await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the unhealthy app never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now: InstancesReport = serde_json::from_slice(
        &env.instances
            .get(instances_key("dep_sick", "local"))
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert!(all(&now, 1, InstanceStatus::Pending), "{now:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_agent_adopts_what_is_still_desired_and_kills_the_rest() {
    let mut env = start().await;
    env.desire("dep_a", demo_app("--message one"), 1, Desired::Running, 1)
        .await;
    env.desire("dep_b", demo_app("--message two"), 1, Desired::Running, 1)
        .await;
    let a = env
        .report_where("dep_a", |r| all(r, 1, InstanceStatus::Running))
        .await
        .instances[0]
        .clone();
    let b = env
        .report_where("dep_b", |r| all(r, 1, InstanceStatus::Running))
        .await
        .instances[0]
        .clone();

    env.agent.as_mut().unwrap().kill();
    // The apps outlive the agent's SIGKILL.
    assert_eq!(get(&a.address, "/").await.as_deref(), Some("one"));
    assert_eq!(get(&b.address, "/").await.as_deref(), Some("two"));
    // While no agent runs, dep_b is stopped, and a process no deployment claims is left in
    // the state directory.
    env.desire("dep_b", demo_app("--message two"), 1, Desired::Stopped, 2)
        .await;
    let mut stray = std::process::Command::new("sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .unwrap();
    let state = env.agent_state.path().join("local");
    std::fs::write(state.join("inst_stray.pid"), stray.id().to_string()).unwrap();

    let restarted = slipway_core::time::now_ms();
    env.start_agent();
    // dep_a's instance is adopted: same id and address, never restarted.
    let after = env
        .report_where("dep_a", |r| {
            r.reported_at_ms > restarted && all(r, 1, InstanceStatus::Running)
        })
        .await;
    assert_eq!(after.instances[0].id, a.id);
    assert_eq!(after.instances[0].address, a.address);
    assert_eq!(get(&a.address, "/").await.as_deref(), Some("one"));
    // dep_b's is adopted and stopped, as its document now says.
    env.report_where("dep_b", |r| {
        r.version == 2 && all(r, 1, InstanceStatus::Inactive)
    })
    .await;
    assert!(get(&b.address, "/").await.is_none(), "dep_b still answers");
    // The stray is killed.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while stray.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the stray process still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A second agent for region `local`, sharing the state directory, once it is ready (it
/// waits for the region's lease).
fn standby_agent(env: &Env) -> ServiceProcess {
    let standby = ServiceProcess::spawn(
        "agent-b",
        bin(AGENT),
        &[],
        &env.env_for("krane-agent-local"),
    )
    .unwrap();
    standby.wait_ready(AGENT, TIMEOUT).unwrap();
    standby
}

/// Waits until the (stalled, then continued) agent has exited.
async fn exited(agent: &mut ServiceProcess) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while agent.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled agent still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An active agent and its standby, with `dep_a` (answering "one") running `replicas`
/// instances; its first report of them all running.
async fn active_and_standby(replicas: usize) -> (Env, ServiceProcess, InstancesReport) {
    let env = start().await;
    let standby = standby_agent(&env);
    let n = u32::try_from(replicas).expect("a few replicas");
    env.desire("dep_a", demo_app("--message one"), n, Desired::Running, 1)
        .await;
    let report = env
        .report_where("dep_a", |r| all(r, replicas, InstanceStatus::Running))
        .await;
    (env, standby, report)
}

/// Two agents for region `local` on one host (one state directory): one is active, the other
/// waits; each instance runs once. The active one SIGKILLed, the standby takes over within
/// the lease TTL (2 s here), adopts the running instances (they keep answering throughout)
/// and runs new deployments.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_agent_takes_over_and_adopts_the_running_instances() {
    let (mut env, standby, before) = active_and_standby(2).await;
    let active = env.agent.as_ref().unwrap();
    assert_eq!(active.count_log("active agent of the region"), 1);
    assert_eq!(standby.count_log("active agent of the region"), 0);
    let recorded = std::fs::read_dir(env.agent_state.path().join("local"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .count();
    assert_eq!(recorded, 2, "each instance runs once");

    // Requests keep going to the instances while the agents change over.
    let stop = Arc::new(AtomicBool::new(false));
    let addresses: Vec<String> = before.instances.iter().map(|i| i.address.clone()).collect();
    let prober = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(Ordering::SeqCst) {
                for address in &addresses {
                    match get(address, "/").await.as_deref() {
                        Some("one") => ok += 1,
                        _ => failed += 1,
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        }
    });
    let killed = std::time::Instant::now();
    let killed_ms = slipway_core::time::now_ms();
    env.agent.as_mut().unwrap().kill();
    tokio::task::block_in_place(|| {
        standby
            .wait_for_log("active agent of the region", TIMEOUT)
            .unwrap()
    });
    let takeover = killed.elapsed();
    let after = env
        .report_where("dep_a", |r| {
            r.reported_at_ms > killed_ms && all(r, 2, InstanceStatus::Running)
        })
        .await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = prober.await.unwrap();
    let ids = |r: &InstancesReport| r.instances.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&after),
        ids(&before),
        "the instances were restarted, not adopted"
    );
    assert_eq!(
        failed, 0,
        "{failed} requests failed during the takeover ({ok} answered)"
    );
    eprintln!("standby agent took over {takeover:?} after the active one was killed; {ok} requests answered meanwhile, none failed");

    // The new active agent runs new deployments.
    env.desire("dep_b", demo_app("--message two"), 1, Desired::Running, 1)
        .await;
    let b = env
        .report_where("dep_b", |r| all(r, 1, InstanceStatus::Running))
        .await;
    assert_eq!(
        get(&b.instances[0].address, "/").await.as_deref(),
        Some("two")
    );
}

/// Found by the cluster test: the active agent stalled (SIGSTOP) past the lease TTL, the
/// standby took the region over and made the feed's consumer its own. The stalled one,
/// continued, saw its feed fail and attached again, taking the consumer back from the new
/// active agent, which then ran no new deployment for a while. Now it looks at the lease
/// first and leaves the region to the new agent: it exits without stopping anything, and the
/// new agent's feed never fails.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_agent_that_lost_the_region_leaves_it_to_the_new_one() {
    let (mut env, standby, a) = active_and_standby(1).await;

    env.agent.as_ref().unwrap().stop();
    tokio::task::block_in_place(|| {
        standby
            .wait_for_log("active agent of the region", TIMEOUT)
            .unwrap();
        standby.wait_for_log("serving region", TIMEOUT).unwrap();
    });
    env.agent.as_ref().unwrap().cont();
    tokio::task::block_in_place(|| {
        env.agent
            .as_ref()
            .unwrap()
            .wait_for_log("another agent of the region is active now", TIMEOUT)
            .unwrap()
    });
    exited(env.agent.as_mut().unwrap()).await;
    let old = env.agent.as_ref().unwrap();
    assert_eq!(old.count_log("attaching to the desired state again"), 0);

    // The new active agent kept its feed and runs new deployments; dep_a was adopted.
    env.desire("dep_b", demo_app("--message two"), 1, Desired::Running, 1)
        .await;
    let b = env
        .report_where("dep_b", |r| all(r, 1, InstanceStatus::Running))
        .await;
    assert_eq!(
        get(&b.instances[0].address, "/").await.as_deref(),
        Some("two")
    );
    assert_eq!(
        get(&a.instances[0].address, "/").await.as_deref(),
        Some("one")
    );
    assert_eq!(standby.count_log("desired-state feed error"), 0);
}

/// A stalled agent that wakes up after its successor took the region over: the successor runs
/// what was desired meanwhile, once, and the woken agent exits without starting a second
/// instance of it (which would run on, supervised by nobody). Its supervisors touch no process
/// once its lease may have lapsed (`Tenure`); here its feed also fails first (a missed
/// heartbeat), so this scenario holds with or without that guard, which the engine's lease
/// test shows.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_agent_that_wakes_up_touches_no_process() {
    let (mut env, standby, _) = active_and_standby(1).await;
    env.agent.as_ref().unwrap().stop();
    tokio::task::block_in_place(|| standby.wait_for_log("serving region", TIMEOUT).unwrap());
    let marker = "desired-while-stalled";
    env.desire(
        "dep_c",
        demo_app(&format!("--message {marker}")),
        1,
        Desired::Running,
        1,
    )
    .await;
    let c = env
        .report_where("dep_c", |r| all(r, 1, InstanceStatus::Running))
        .await;
    env.agent.as_ref().unwrap().cont();
    exited(env.agent.as_mut().unwrap()).await;
    assert_eq!(
        processes_with_argument(marker),
        1,
        "dep_c runs once, under the active agent"
    );
    assert_eq!(
        get(&c.instances[0].address, "/").await.as_deref(),
        Some(marker)
    );
}

/// A partitioned agent (its NATS link cut, the agent itself running on) whose successor took
/// the region over and adopted its instance. The instance dies: its parent, the partitioned
/// agent, touches no process any more (its lease may be someone else's), so the dead process
/// stays a zombie, which still counts as a member of its process group. The successor sees it
/// exited all the same, restarts it, and once the link is healed the old agent leaves; the
/// instance runs once. Before, the successor took the zombie for a live instance that does
/// not answer yet, and never restarted it (the test failed: still pending after 30 s).
///
/// It also shows no second copy from the old agent, but that holds without the lease guard
/// too: across the cut, the old agent's supervisor waits on its report of the exit (a NATS
/// write) before it would restart anything.
#[tokio::test(flavor = "multi_thread")]
async fn an_instance_of_a_partitioned_agent_that_dies_is_restarted_by_its_successor() {
    let env = Env::builder().start().await;
    let nats = env.nats.addrs()[0].clone();
    let server = format!("{}:{}", nats.host(), nats.port()).parse().unwrap();
    let partition = Partition::start(server).await.unwrap();
    let mut agent_env = env.env_for("krane-agent-local");
    agent_env.push(("SLIPWAY_NATS_URL", format!("nats://{}", partition.address)));
    let active = ServiceProcess::spawn("agent-a", bin(AGENT), &[], &agent_env).unwrap();
    active.wait_ready(AGENT, TIMEOUT).unwrap();
    tokio::task::block_in_place(|| active.wait_for_log("serving region", TIMEOUT).unwrap());
    let standby = standby_agent(&env);
    // Unique: a failed run may leave its instances behind.
    let marker = format!("partitioned-{}", std::process::id());
    let marker = marker.as_str();
    env.desire(
        "dep_a",
        demo_app(&format!("--message {marker}")),
        1,
        Desired::Running,
        1,
    )
    .await;
    let first = env
        .report_where("dep_a", |r| all(r, 1, InstanceStatus::Running))
        .await;

    partition.cut();
    tokio::task::block_in_place(|| standby.wait_for_log("serving region", TIMEOUT).unwrap());
    let adopted = env
        .report_where("dep_a", |r| {
            r.epoch > first.epoch && all(r, 1, InstanceStatus::Running)
        })
        .await;
    env.kill_instance(&adopted.instances[0].id);
    let restarted = env
        .report_where("dep_a", |r| {
            r.epoch == adopted.epoch
                && all(r, 1, InstanceStatus::Running)
                && r.instances[0].address != first.instances[0].address
        })
        .await;
    partition.heal();
    let mut active = active;
    exited(&mut active).await;
    assert_eq!(
        processes_with_argument(marker),
        1,
        "dep_a runs once, under the successor"
    );
    assert_eq!(
        get(&restarted.instances[0].address, "/").await.as_deref(),
        Some(marker)
    );
    drop(standby);
}

/// Live processes with `argument` among their arguments.
fn processes_with_argument(argument: &str) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|entry| {
            std::fs::read(entry.path().join("cmdline"))
                .is_ok_and(|line| line.split(|b| *b == 0).any(|a| a == argument.as_bytes()))
        })
        .count()
}

/// The fence on reports. The active agent stalls past its lease; its standby takes over,
/// adopts the instance and reports it. The instance is killed while the old agent is still
/// stopped: its parent, it alone sees the exit once continued, and it writes that at once, as
/// if it were still active, while its successor restarts the instance. Unfenced, the late
/// report landed over the successor's (the cluster test saw one stay there: routes to an
/// address nobody supervised). Fenced, it is refused: every report after the successor's
/// first carries the successor's lease epoch, and the old agent exits.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_agent_s_late_report_never_lands_over_its_successor_s() {
    let (mut env, standby, first) = active_and_standby(1).await;
    let old_epoch = first.epoch;
    assert!(old_epoch > 0, "reports carry the lease epoch: {first:?}");
    let instance = first.instances[0].clone();
    // Every report from now on, in order (the bucket keeps only the last).
    let mut watch = env
        .instances
        .watch(instances_key("dep_a", "local"))
        .await
        .unwrap();
    let (stop_watching, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(async move {
        let mut epochs = Vec::new();
        loop {
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => {
                        let report: InstancesReport = serde_json::from_slice(&entry.value).unwrap();
                        epochs.push(report.epoch);
                    }
                    _ => return epochs,
                },
                _ = &mut stopped => return epochs,
            }
        }
    });

    env.agent.as_ref().unwrap().stop();
    let adopted = env
        .report_where("dep_a", |r| {
            r.epoch > old_epoch && all(r, 1, InstanceStatus::Running)
        })
        .await;
    assert_eq!(
        adopted.instances[0].id, instance.id,
        "adopted, not restarted"
    );
    let new_epoch = adopted.epoch;

    // Killed by hand: its process stays a zombie of the stopped agent, so the new one sees
    // it fail its health check, not exit.
    env.kill_instance(&instance.id);
    env.report_where("dep_a", |r| {
        r.epoch == new_epoch && r.instances[0].status != InstanceStatus::Running
    })
    .await;
    env.agent.as_ref().unwrap().cont();
    exited(env.agent.as_mut().unwrap()).await;
    let restarted = env
        .report_where("dep_a", |r| {
            all(r, 1, InstanceStatus::Running) && r.instances[0].address != instance.address
        })
        .await;
    assert_eq!(restarted.epoch, new_epoch);
    assert_eq!(
        get(&restarted.instances[0].address, "/").await.as_deref(),
        Some("one")
    );

    stop_watching.send(()).unwrap();
    let epochs = watcher.await.unwrap();
    let successor_from = epochs.iter().position(|e| *e == new_epoch).unwrap();
    assert!(
        epochs[successor_from..].iter().all(|e| *e == new_epoch),
        "a report of the old agent landed after its successor's: epochs in order {epochs:?}"
    );
    assert_eq!(standby.count_log("desired-state feed error"), 0);
}

#[tokio::test]
async fn a_stopped_agent_stops_its_instances() {
    let mut env = start().await;
    env.desire("dep_a", demo_app("--message bye"), 1, Desired::Running, 1)
        .await;
    let report = env
        .report_where("dep_a", |r| all(r, 1, InstanceStatus::Running))
        .await;
    let mut agent = env.agent.take().unwrap();
    agent.terminate(Duration::from_secs(10));
    assert!(
        get(&report.instances[0].address, "/").await.is_none(),
        "the instance outlived the agent"
    );
    let leftovers: Vec<_> = std::fs::read_dir(env.agent_state.path().join("local"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn a_stopped_instance_finishes_its_requests_in_flight() {
    let env = start().await;
    env.desire("dep_a", demo_app("--message drain"), 1, Desired::Running, 1)
        .await;
    let report = env
        .report_where("dep_a", |r| all(r, 1, InstanceStatus::Running))
        .await;
    // A request that takes a second, sent before the instance is told to stop.
    let mut stream = tokio::net::TcpStream::connect(&report.instances[0].address)
        .await
        .unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    env.desire("dep_a", demo_app("--message drain"), 1, Desired::Stopped, 2)
        .await;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("slow"),
        "the request in flight was cut off: {response:?}"
    );
    env.report_where("dep_a", |r| all(r, 1, InstanceStatus::Inactive))
        .await;
}

/// Without `SLIPWAY_AGENT_ALLOW_EXEC=true` an exec: image is a shell on the host for whoever
/// may deploy: the agent refuses it, reports it failed and says how to allow it.
#[tokio::test]
async fn exec_images_run_only_where_allowed() {
    let mut env = Env::builder().start().await;
    let mut vars = env.env_for("krane-agent-local");
    vars.push(("SLIPWAY_AGENT_ALLOW_EXEC", "false".into()));
    let agent = slipway_testkit::ServiceProcess::spawn("agent", bin("krane-agent"), &[], &vars)
        .expect("spawning the agent");
    agent
        .wait_ready("krane-agent", TIMEOUT)
        .expect("the agent is ready");
    env.agent = Some(agent);
    let marker = env.agent_state.path().join("ran");
    let image = format!("exec:touch {}", marker.display());
    env.desire("dep_exec", image, 1, Desired::Running, 1).await;
    let report = env
        .report_where("dep_exec", |r| all(r, 1, InstanceStatus::Failed))
        .await;
    let message = report.instances[0].message.clone().unwrap_or_default();
    assert!(
        message.contains("SLIPWAY_AGENT_ALLOW_EXEC=true"),
        "{message}"
    );
    assert!(!marker.exists(), "the command line ran");
}

/// A stopped document's supervisor ends; the next document starts a new one.
#[tokio::test]
async fn a_deployment_stopped_and_started_again_runs_again() {
    let env = start().await;
    let set = |desired, version| {
        env.desire(
            "dep_again",
            demo_app("--message again"),
            1,
            desired,
            version,
        )
    };
    let reported = |version, status| {
        env.report_where("dep_again", move |r| {
            r.version == version && all(r, 1, status)
        })
    };
    set(Desired::Running, 1).await;
    reported(1, InstanceStatus::Running).await;
    set(Desired::Stopped, 2).await;
    reported(2, InstanceStatus::Inactive).await;
    set(Desired::Running, 3).await;
    let report = reported(3, InstanceStatus::Running).await;
    assert_eq!(
        get(&report.instances[0].address, "/").await.as_deref(),
        Some("again")
    );
    // Running again while the supervisor is still stopping (and about to end): the new
    // document is not lost between the supervisor that ends and the one that takes over.
    set(Desired::Stopped, 4).await;
    set(Desired::Running, 5).await;
    reported(5, InstanceStatus::Running).await;
}

/// CPU time (user + system, in clock ticks) process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name (which may hold spaces): utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The agent's CPU ticks over 3 s in which nothing happens.
async fn idle_ticks(env: &Env) -> u64 {
    let pid = env.agent.as_ref().unwrap().pid();
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cpu_ticks(pid) - before
}

/// An agent's idle work does not grow with the documents it has seen: 500 stopped
/// deployments later it is as idle as before (it kept a supervisor per document, each waking
/// every check interval).
#[tokio::test]
async fn idle_work_does_not_grow_with_stopped_documents() {
    let env = start().await;
    let before = idle_ticks(&env).await;
    for i in 0..500 {
        env.desire(
            &format!("dep_stopped{i}"),
            demo_app("--message x"),
            1,
            Desired::Stopped,
            1,
        )
        .await;
    }
    env.report_where("dep_stopped499", |r| r.version == 1).await;
    let after = idle_ticks(&env).await;
    eprintln!("agent CPU over 3 s idle: {before} ticks, then {after} with 500 stopped documents");
    assert!(after <= before + 3, "{before} -> {after} ticks");
}
