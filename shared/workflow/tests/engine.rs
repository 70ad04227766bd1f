//! The engine against a real nats-server: journaled steps replay on resume, retries are
//! bounded, the failure handler runs only on terminal failure, starts are deduplicated,
//! leases exclude and expire when their holder dies.

use std::{
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use async_nats::jetstream;
use backon::ExponentialBuilder;
use futures::StreamExt;
use slipway_nats::provision;
use slipway_testkit::{Nats, Plane};
use slipway_workflow::{
    Context, Engine, EngineConfig, Failure, Holder, LeaseError, Leases, Status, StepError,
    Workflow, WorkflowError,
};

/// Counts what its steps and failure handler did.
#[derive(Default)]
struct Counters {
    first: AtomicU32,
    flaky: AtomicU32,
    runs: AtomicU32,
    failures: AtomicU32,
    /// Gated runs wait for this to open before their first step.
    gate: tokio::sync::watch::Sender<bool>,
}

/// `first` (a side effect), then `flaky` (fails as the input says), after aborting its
/// first run once if asked.
struct Probe(Arc<Counters>);

#[derive(serde::Serialize, serde::Deserialize)]
struct ProbeInput {
    /// Retryable failures before `flaky` succeeds (u32::MAX: never).
    flaky_failures: u32,
    terminal: bool,
    abort_first_run: bool,
    panic: bool,
    gated: bool,
}

impl Workflow for Probe {
    const KIND: &'static str = "probe";
    type Input = ProbeInput;
    type Output = u32;

    async fn run(&self, ctx: &mut Context, input: ProbeInput) -> Result<u32, WorkflowError> {
        let c = &self.0;
        let run = c.runs.fetch_add(1, Ordering::SeqCst);
        if input.gated {
            let _ = c.gate.subscribe().wait_for(|open| *open).await;
        }
        let drawn: u32 = ctx
            .step("first", || async {
                c.first.fetch_add(1, Ordering::SeqCst);
                Ok(rand_like())
            })
            .await?;
        if input.abort_first_run && run == 0 {
            return Err(WorkflowError::Aborted("test abort".into()));
        }
        if input.panic {
            panic!("probe panics");
        }
        ctx.step("flaky", || async {
            let n = c.flaky.fetch_add(1, Ordering::SeqCst);
            if input.terminal {
                Err(StepError::terminal("bad input"))
            } else if n < input.flaky_failures {
                Err(StepError::retryable(format!("transient {n}")))
            } else {
                Ok(())
            }
        })
        .await?;
        Ok(drawn)
    }

    async fn on_failure(
        &self,
        _input: &ProbeInput,
        _failure: &Failure<'_>,
    ) -> Result<(), StepError> {
        self.0.failures.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn rand_like() -> u32 {
    slipway_core::time::now_ms() as u32
}

struct Env {
    /// The nats-server (no services: the engine under test is in this process).
    _plane: Plane,
    js: jetstream::Context,
    engine: Engine,
    counters: Arc<Counters>,
}

async fn env() -> Env {
    let plane = Plane::builder().start().await;
    let js = plane.js.clone();
    let counters = Arc::new(Counters::default());
    let mut config = EngineConfig::new("deploy-orchestrator");
    config.ack_wait = Duration::from_secs(2);
    config.retry = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(10))
        .with_max_delay(Duration::from_millis(50))
        .with_max_times(3);
    let engine = Engine::builder(js.clone(), config)
        .register(Probe(counters.clone()))
        .build()
        .await
        .unwrap();
    tokio::spawn(engine.clone().run_workers());
    Env {
        _plane: plane,
        js,
        engine,
        counters,
    }
}

fn input(flaky_failures: u32) -> ProbeInput {
    ProbeInput {
        flaky_failures,
        terminal: false,
        abort_first_run: false,
        panic: false,
        gated: false,
    }
}

async fn run(env: &Env, id: &str, input: ProbeInput) -> slipway_workflow::WorkflowRecord {
    env.engine
        .start::<Probe>(id, "k", &input, None)
        .await
        .unwrap();
    let record = env.engine.wait(id, Duration::from_secs(30)).await.unwrap();
    assert!(record.status.is_finished(), "{record:?}");
    record
}

#[tokio::test(flavor = "multi_thread")]
async fn retryable_failures_are_retried_and_mark_nothing_failed() {
    let env = env().await;
    let record = run(&env, "wf_retry", input(2)).await;
    assert_eq!(record.status, Status::Completed);
    assert_eq!(record.steps[1].attempts, 3);
    assert_eq!(env.counters.failures.load(Ordering::SeqCst), 0);
    let drawn: u32 = record.output().unwrap();
    let journaled: u32 = rmp_serde::from_slice(&record.steps[0].result).unwrap();
    assert_eq!(drawn, journaled);
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausted_retries_and_terminal_errors_run_the_failure_handler_once() {
    let env = env().await;
    let record = run(&env, "wf_exhausted", input(u32::MAX)).await;
    assert_eq!(record.status, Status::Failed);
    // 1 attempt + 3 retries.
    assert_eq!(record.steps[1].attempts, 4);
    let error = record.error.unwrap();
    assert!(
        error.contains("failed after 4 attempts: transient 3"),
        "{error}"
    );
    assert_eq!(env.counters.failures.load(Ordering::SeqCst), 1);

    let mut terminal = input(0);
    terminal.terminal = true;
    let record = run(&env, "wf_terminal", terminal).await;
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.steps[1].attempts, 1);
    assert_eq!(record.error.as_deref(), Some("bad input"));
    assert_eq!(env.counters.failures.load(Ordering::SeqCst), 2);

    let mut panics = input(0);
    panics.panic = true;
    let record = run(&env, "wf_panic", panics).await;
    assert_eq!(record.status, Status::Failed);
    assert!(record.error.unwrap().contains("panicked"));
    assert_eq!(env.counters.failures.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_run_replays_journaled_steps() {
    let env = env().await;
    let mut aborting = input(0);
    aborting.abort_first_run = true;
    let record = run(&env, "wf_resume", aborting).await;
    assert_eq!(record.status, Status::Completed);
    assert_eq!(record.runs, 2);
    assert_eq!(env.counters.runs.load(Ordering::SeqCst), 2);
    // The side effect of the journaled step ran once; its result was replayed.
    assert_eq!(env.counters.first.load(Ordering::SeqCst), 1);
    let names: Vec<&str> = record.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["first", "flaky"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn starting_a_workflow_twice_runs_it_once() {
    let env = env().await;
    for _ in 0..3 {
        env.engine
            .start::<Probe>("wf_twice", "k", &input(0), None)
            .await
            .unwrap();
    }
    let record = env
        .engine
        .wait("wf_twice", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(record.status, Status::Completed);
    // Started again after it finished: still nothing new runs.
    env.engine
        .start::<Probe>("wf_twice", "k", &input(0), None)
        .await
        .unwrap();
    let marker = env
        .engine
        .start::<Probe>("wf_after", "k", &input(0), None)
        .await;
    marker.unwrap();
    env.engine
        .wait("wf_after", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(env.counters.runs.load(Ordering::SeqCst), 2);
    assert!(env.engine.get("wf_unknown").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_excludes_and_expires_when_its_holder_dies() {
    let env = env().await;
    let kv = env.js.get_key_value(provision::LEASES).await.unwrap();
    let ttl = Duration::from_millis(1500);
    let leases = Leases::new(kv, ttl);

    // Released: the waiter gets it at once.
    let a = leases
        .acquire("project.p1", &holder("holder-a", 1))
        .await
        .unwrap();
    let waiter = {
        let leases = leases.clone();
        tokio::spawn(async move {
            leases
                .acquire("project.p1", &holder("holder-b", 1))
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "took a held lease");
    let released = Instant::now();
    a.release().await;
    let b = waiter.await.unwrap();
    assert!(
        released.elapsed() < ttl,
        "waited for expiry after a release"
    );

    // Held and renewed well past its TTL: still excluded.
    tokio::time::sleep(ttl * 2).await;
    assert!(!b.is_lost());
    let blocked = tokio::time::timeout(
        ttl / 2,
        leases.acquire("project.p1", &holder("holder-c", 1)),
    )
    .await;
    assert!(blocked.is_err(), "took a renewed lease");

    // Its holder dies (no renewal, no release): taken over after the TTL.
    drop(b);
    let died = Instant::now();
    let c = leases
        .acquire("project.p1", &holder("holder-c", 1))
        .await
        .unwrap();
    let waited = died.elapsed();
    assert!(
        waited <= ttl + Duration::from_millis(700),
        "waited {waited:?}"
    );
    // A later run of the same holder (a resumed workflow) takes it at once, though the
    // earlier run still renews it, and knows nobody else held it in between; the earlier run
    // has lost it, and cannot take it back.
    let again = Instant::now();
    let c2 = leases
        .acquire("project.p1", &holder("holder-c", 2))
        .await
        .unwrap();
    assert!(again.elapsed() < Duration::from_millis(500));
    assert!(c2.is_continuous());
    assert!(c2.epoch() > c.epoch());
    let stale = leases.acquire("project.p1", &holder("holder-c", 1)).await;
    assert!(
        matches!(stale, Err(LeaseError::Superseded(_))),
        "{:?}",
        stale.err()
    );
    // Its renewer notices at its next renewal (a third of the TTL).
    let deadline = Instant::now() + ttl;
    while !c.is_lost() {
        assert!(
            Instant::now() < deadline,
            "the earlier run did not notice the takeover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A lease whose renewals cannot land is lost from its expiry on — another holder may take it
/// from then — not only once its renewer gives up: here the nats-server is stalled (SIGSTOP),
/// so the renewer's write hangs well past the expiry, as it would for a holder that was
/// itself stalled and woke up after it.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_is_lost_at_its_expiry_when_its_renewals_cannot_land() {
    let env = env().await;
    let kv = env.js.get_key_value(provision::LEASES).await.unwrap();
    let ttl = Duration::from_millis(1500);
    let leases = Leases::new(kv, ttl);
    let lease = leases
        .acquire("project.p2", &holder("holder-s", 1))
        .await
        .unwrap();
    let Nats::Server(server) = &env._plane.nats else {
        unreachable!("the engine tests run one nats-server")
    };
    server.stop();
    let stalled = Instant::now();
    // Its last renewal landed before the stall: it expires within a TTL of it.
    let deadline = stalled + ttl + Duration::from_millis(300);
    while !lease.is_lost() {
        if Instant::now() > deadline {
            server.cont();
            panic!("still held {:?} after NATS stalled", stalled.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.cont();
}

fn holder(name: &str, run: u32) -> Holder {
    Holder {
        name: name.into(),
        run,
    }
}

/// The invocation's message id, as `Engine::start` publishes it.
async fn publish_invocation(js: &jetstream::Context, workflow_id: &str) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, workflow_id);
    js.publish_with_headers(
        slipway_core::subjects::workflow("probe", workflow_id),
        headers,
        bytes::Bytes::new(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invocation_that_arrives_before_its_record_is_not_dropped() {
    // A replica that has not applied the record yet answers as if it did not exist: the
    // worker must look again, not drop the invocation (which a later start would not replace:
    // it is deduplicated).
    let env = env().await;
    publish_invocation(&env.js, "wf_late").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The workers attach their consumer in the background.
        let consumer: Result<jetstream::consumer::PullConsumer, _> = env
            .js
            .get_consumer_from_stream("deploy-orchestrator", provision::WORKFLOWS)
            .await;
        if consumer.is_ok_and(|c| c.cached_info().delivered.consumer_sequence > 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the invocation was never delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.engine
        .start::<Probe>("wf_late", "k", &input(0), None)
        .await
        .unwrap();
    let record = env
        .engine
        .wait("wf_late", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(record.status, Status::Completed);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_invocation_is_delivered_again_by_redeliver_not_by_start() {
    let plane = Plane::builder().start().await;
    let counters = Arc::new(Counters::default());
    let engine = Engine::builder(plane.js.clone(), EngineConfig::new("deploy-orchestrator"))
        .register(Probe(counters.clone()))
        .build()
        .await
        .unwrap();
    engine
        .start::<Probe>("wf_lost", "k", &input(0), None)
        .await
        .unwrap();
    // The invocation is lost before any worker ran it.
    let mut stream = plane.js.get_stream(provision::WORKFLOWS).await.unwrap();
    stream.purge().await.unwrap();
    // Starting again falls in the duplicate window: nothing is published.
    engine
        .start::<Probe>("wf_lost", "k", &input(0), None)
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
    engine.redeliver::<Probe>("wf_lost").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);

    tokio::spawn(engine.clone().run_workers());
    let record = engine
        .wait("wf_lost", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(record.status, Status::Completed);
    assert_eq!(counters.runs.load(Ordering::SeqCst), 1);
}

type Waits = futures::stream::FuturesUnordered<
    tokio::task::JoinHandle<
        Result<slipway_workflow::WorkflowRecord, slipway_workflow::EngineError>,
    >,
>;

/// Starts `n` workflows `<prefix>_<i>` held at their gate and a wait (with `timeout`) for each;
/// checks that, while they are held, every wait is in flight and none returns (a wait that
/// could not watch would fail here).
async fn held_waits(env: &Env, prefix: &str, n: usize, timeout: Duration) -> Waits {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}_{i}")).collect();
    let mut gated = input(0);
    gated.gated = true;
    for id in &ids {
        env.engine
            .start::<Probe>(id, id, &gated, None)
            .await
            .unwrap();
    }
    let mut waits: Waits = ids
        .iter()
        .map(|id| {
            let engine = env.engine.clone();
            let id = id.clone();
            tokio::spawn(async move { engine.wait(&id, timeout).await })
        })
        .collect();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), waits.next())
            .await
            .is_err(),
        "a wait returned while its workflow was held"
    );
    waits
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_concurrent_waits_on_one_engine_all_see_their_workflow_finish() {
    let env = env().await;
    const WAITS: usize = 1_000;
    let mut waits = held_waits(&env, "wf_many", WAITS, Duration::from_secs(120)).await;
    env.counters.gate.send_replace(true);
    let mut completed = 0;
    while let Some(wait) = waits.next().await {
        let record = wait.unwrap().unwrap();
        assert_eq!(record.status, Status::Completed, "{record:?}");
        completed += 1;
    }
    assert_eq!(completed, WAITS);
    // A wait that times out returns the record as it is.
    let record = env
        .engine
        .wait("wf_many_0", Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(record.status, Status::Completed);
}

/// The one watch that serves every wait breaks (its consumer is deleted on the server) while
/// waits are in flight, and their workflows finish before it is back: every wait still
/// returns its finished workflow, none times out.
#[tokio::test(flavor = "multi_thread")]
async fn waits_in_flight_see_their_workflow_finish_while_the_watch_is_broken() {
    let env = env().await;
    const WAITS: usize = 20;
    let mut waits = held_waits(&env, "wf_broken", WAITS, Duration::from_secs(90)).await;

    let stream = env.js.get_stream("KV_slipway_workflows").await.unwrap();
    let watches: Vec<String> = stream
        .consumers()
        .filter_map(|info| async move {
            info.ok()
                .filter(|i| i.config.description.as_deref() == Some("finished workflows"))
                .map(|i| i.name)
        })
        .collect()
        .await;
    assert_eq!(watches.len(), 1, "one watch per engine: {watches:?}");
    assert!(stream.delete_consumer(&watches[0]).await.unwrap().success);
    env.counters.gate.send_replace(true);

    // Told once the watch is back (its heartbeats go missing first: ~10 s), long before the
    // waits' own timeout, which would return the record as it is too.
    let completed = tokio::time::timeout(Duration::from_secs(40), async {
        let mut completed = 0;
        while let Some(wait) = waits.next().await {
            let record = wait.unwrap().unwrap();
            assert_eq!(record.status, Status::Completed, "{record:?}");
            completed += 1;
        }
        completed
    })
    .await
    .expect("the waits were not told their workflows finished");
    assert_eq!(completed, WAITS);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_workflow_has_every_step_event_stored_in_step_order() {
    let env = env().await;
    for run in 0..20 {
        let id = format!("wf_events_{run}");
        let scope = slipway_workflow::EventScope {
            workspace_id: "ws_1".into(),
            project_id: "proj_1".into(),
            deployment_id: format!("dep_{run}"),
            environment_slug: "production".into(),
        };
        env.engine
            .start::<Probe>(&id, "k", &input(0), Some(scope))
            .await
            .unwrap();
        let record = env.engine.wait(&id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(record.status, Status::Completed);
        let events = slipway_testkit::stream_messages(
            &env.js,
            provision::EVENTS,
            &format!("slipway.events.proj_1.dep_{run}.step"),
        )
        .await;
        let steps: Vec<&str> = events.iter().filter_map(|e| e["step"].as_str()).collect();
        assert_eq!(steps, ["first", "flaky"], "{events:?}");
    }
}

/// A record is read across a nats-server that does not answer for longer than a JetStream
/// request's timeout (to a client, a leader election on a cluster looks the same): the read
/// is tried again until the server answers, rather than failing the caller's `get` or `wait`.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_rides_out_a_server_that_does_not_answer_for_a_while() {
    let env = env().await;
    run(&env, "wf_stalled", input(0)).await;
    let client = async_nats::connect(env._plane.nats.url()).await.unwrap();
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_millis(300));
    let reader = Engine::builder(js, EngineConfig::new("deploy-orchestrator"))
        .build()
        .await
        .unwrap();

    let Nats::Server(server) = &env._plane.nats else {
        unreachable!("one nats-server")
    };
    server.stop();
    let read = tokio::spawn(async move { reader.get("wf_stalled").await });
    // The stall: three request timeouts long.
    tokio::time::sleep(Duration::from_millis(900)).await;
    server.cont();
    let record = read.await.unwrap().unwrap().expect("the record");
    assert_eq!(record.status, Status::Completed);
}
