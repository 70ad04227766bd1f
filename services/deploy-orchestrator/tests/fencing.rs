//! Crashes and stalls at the wrong moment (fenced leases, commit points): each case is one
//! that left the live pointer and the live routes disagreeing, or live traffic on stopped
//! instances, before project leases had epochs and the workflows a commit point. Every test
//! ends with the invariant checker.

mod common;

use std::time::{Duration, Instant};

use common::{Plane, TIMEOUT};
use futures::StreamExt;
use serde_json::json;
use slipway_workflow::WorkflowRecord;

fn step_names(record: &WorkflowRecord) -> Vec<&str> {
    record.steps.iter().map(|s| s.name.as_str()).collect()
}

/// `live` is the live pointer and behind the live and production routes, each of
/// `superseded` waits for standby, and the invariants hold.
async fn assert_settled(plane: &Plane, project: &str, live: &str, superseded: &[&String]) {
    let p = plane.get_project(project).await;
    assert_eq!(p["project"]["live_deployment_id"], live);
    assert_eq!(
        plane.live_and_production_routes(project).await,
        (live.to_string(), live.to_string())
    );
    for d in superseded {
        let pending = plane.pending(d).await;
        let pending = pending.unwrap_or_else(|| panic!("superseded {d} has no pending change"));
        assert_eq!(pending["state"], "standby", "{d}");
    }
    plane.invariants().assert(&[project.to_string()]).await;
}

/// The project is pinned to `live` by a rollback, the production route is on `production`,
/// `superseded` waits for standby, and the invariants hold.
async fn assert_pinned(
    plane: &Plane,
    project: &str,
    live: &str,
    production: &str,
    superseded: &str,
) {
    let p = plane.get_project(project).await;
    assert_eq!(p["project"]["live_deployment_id"], live);
    assert_eq!(p["project"]["is_rolled_back"], true);
    assert_eq!(
        plane.live_and_production_routes(project).await,
        (live.to_string(), production.to_string())
    );
    assert_eq!(plane.pending(superseded).await.unwrap()["state"], "standby");
    plane.invariants().assert(&[project.to_string()]).await;
}

/// A project with v1 and v2 deployed (v2 live) and a lease TTL (2 s) well below the ack
/// wait (6 s), so that after a crash whatever runs next takes the project's lease before the
/// crashed workflow is redelivered; the only orchestrator left running aborts at `point`.
/// Returns (plane, project, v1, v2, the faulty orchestrator).
async fn two_deployed_then_faulty(point: &str) -> (Plane, String, String, String, usize) {
    let env = vec![("SLIPWAY_WORKFLOW_ACK_WAIT", "6s".into())];
    let (mut plane, project, v1, v2) = Plane::two_deployed(env).await;
    let faulty = plane.spawn_orchestrator(&[("SLIPWAY_FAULT_POINT", point.into())]);
    (plane, project, v1, v2, faulty)
}

/// Waits for orchestrator `faulty` to abort at `point`, and starts a healthy one.
fn crashed_at(plane: &mut Plane, faulty: usize, point: &str) {
    plane.orchestrator_logged(faulty, &format!("fault point {point} reached"));
    plane.orchestrators[faulty].kill();
    plane.spawn_orchestrator(&[]);
}

/// The deploy of v3 crashed at `point` (under the project lease), and a healthy
/// orchestrator runs. Returns (plane, project, v1, v2, v3, v3's workflow).
async fn v3_crashed_at(point: &str) -> (Plane, String, String, String, String, String) {
    let (mut plane, project, v1, v2, faulty) = two_deployed_then_faulty(point).await;
    let (v3, wf3) = plane.deploy(&project, "production", "v3").await;
    crashed_at(&mut plane, faulty, point);
    (plane, project, v1, v2, v3, wf3)
}

/// A rollback of v2 to v1 (`verb` "rollback") or a promote of v1 ("promote") whose
/// orchestrator dies at `point`, then a deploy of v3 that takes the project's lease before
/// the workflow is resumed. Returns (plane, project, v1, v2, v3, the workflow's record once it
/// has finished).
async fn crashed_then_v3(
    verb: &str,
    point: &str,
) -> (Plane, String, String, String, String, WorkflowRecord) {
    let (mut plane, project, v1, v2, faulty) = two_deployed_then_faulty(point).await;
    let body = match verb {
        "rollback" => json!({"source_deployment_id": v2, "target_deployment_id": v1, "wait_ms": 0}),
        _ => json!({"target_deployment_id": v1, "wait_ms": 0}),
    };
    let reply = plane.ok(&format!("slipway.deploy.v1.{verb}"), body).await;
    crashed_at(&mut plane, faulty, point);
    let v3 = plane.deployed(&project, "production", "v3").await;
    let record = plane
        .workflow_done(reply["workflow_id"].as_str().unwrap())
        .await;
    (plane, project, v1, v2, v3, record)
}

/// Reproduction 1: a rollback takes the lease of the crashed deploy and pins the project;
/// the deploy, resumed, decides its routes again (pinned: the environment route only) instead
/// of replaying a plan that moved the live route.
#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_resumed_after_a_rollback_took_its_lease_decides_again() {
    let (plane, project, v1, v2, v3, wf3) = v3_crashed_at("deploy.routes.after_journal").await;
    let rollback = plane
        .ok(
            "slipway.deploy.v1.rollback",
            json!({"source_deployment_id": v2, "target_deployment_id": v1}),
        )
        .await;
    assert_eq!(rollback["status"], "completed", "{rollback}");

    let record = plane.workflow_done(&wf3).await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
    assert!(record.runs >= 2, "it resumed");
    assert!(
        !step_names(&record).contains(&"live"),
        "a pinned deploy does not take live: {:?}",
        step_names(&record)
    );
    let p = plane.get_project(&project).await;
    assert_eq!(p["project"]["live_deployment_id"], v1.as_str());
    assert_eq!(p["project"]["is_rolled_back"], true);
    let (live, production) = plane.live_and_production_routes(&project).await;
    assert_eq!((live, production), (v1, v3));
    plane.invariants().assert(&[project]).await;
}

/// Reproduction 1, with a second deploy instead of the rollback: v4 goes live while v3 is
/// down; v3, resumed, decides again and goes live after it (one serial order: v4, then v3),
/// scheduling v4 to standby, instead of ending as the live pointer while its replayed plan
/// left the routes on v4.
#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_resumed_after_another_deploy_took_its_lease_goes_live_after_it() {
    let (plane, project, _v1, v2, v3, wf3) = v3_crashed_at("deploy.routes.after_journal").await;
    let v4 = plane.deployed(&project, "production", "v4").await;
    let record = plane.workflow_done(&wf3).await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);

    let live_step = record
        .steps
        .iter()
        .find(|s| s.name == "assign_routes")
        .unwrap();
    let replaced = common::replaced_by_commit(live_step);
    assert_eq!(replaced.as_deref(), Some(v4.as_str()), "v3 replaced v4");
    assert_settled(&plane, &project, &v3, &[&v2, &v4]).await;
}

/// Rollback's journaled validation is decided again as well: a rollback that crashed after
/// clearing its target's pending standby, while a deploy took the lease and went live, fails
/// its validation when it resumes (its source is no longer live), moves nothing, and puts its
/// target back on the way to standby.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_resumed_after_a_deploy_took_its_lease_validates_again() {
    let (plane, project, v1, _v2, v3, record) =
        crashed_then_v3("rollback", "rollback.clear_target.after_journal").await;
    assert_eq!(record.status.as_str(), "failed");
    let error = record.error.unwrap_or_default();
    assert!(error.contains("is not the live deployment"), "{error}");
    let p = plane.get_project(&project).await;
    assert_eq!(p["project"]["is_rolled_back"], false);
    assert_settled(&plane, &project, &v3, &[&v1]).await;
}

/// Found by the chaos test: a rollback that died right after its commit (routes and live on
/// the target, project pinned, never journaled), while a deploy took the lease. Resumed, the
/// rollback does not validate again what its own commit changed (its source is no longer
/// live because of it): it completes, and the source its commit superseded goes to standby.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_that_died_right_after_its_commit_leaves_no_deployment_behind() {
    let (plane, project, v1, v2, v3, record) =
        crashed_then_v3("rollback", "rollback.assign_routes.before_journal").await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
    assert!(record.runs >= 2, "it resumed");
    // Its commit stands: pinned to v1, so v3 took the environment route only.
    assert_pinned(&plane, &project, &v1, &v3, &v2).await;
}

/// Found by the chaos test: a deploy whose commit made it live went through and its
/// orchestrator died before journaling it; a rollback to v1 pinned the project before the
/// deploy was resumed. Resumed, the deploy's commit is not applied again (it would take the
/// production route back from the rollback); the deploy ends without a live event, and v2,
/// which its commit replaced, still goes to standby.
#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_that_died_right_after_its_commit_and_was_pinned_out_leaves_nothing_behind() {
    let (plane, project, v1, v2, v3, wf3) =
        v3_crashed_at("deploy.assign_routes.before_journal").await;
    let body = json!({"source_deployment_id": v3, "target_deployment_id": v1, "wait_ms": 0});
    let rollback = plane.workflow("slipway.deploy.v1.rollback", body).await;
    assert_eq!(
        rollback.status.as_str(),
        "completed",
        "{:?}",
        rollback.error
    );

    let record = plane.workflow_done(&wf3).await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
    let steps = step_names(&record);
    assert!(steps.contains(&"schedule_standby"), "{steps:?}");
    assert!(!steps.contains(&"live"), "no late live event: {steps:?}");
    // The rollback came after v3's commit: its routes stay on v1, and v3 goes to standby.
    assert_pinned(&plane, &project, &v1, &v1, &v3).await;
    assert_eq!(plane.pending(&v2).await.unwrap()["state"], "standby");
}

/// Found by the chaos test: a promote that died right after its commit (v1 live, v2
/// replaced, never journaled), while a deploy took the lease and went live. Resumed, the
/// promote completes without applying its commit again: the deploy stays live, and v2, which
/// the promote's commit replaced, goes to standby, as does v1, which the deploy replaced.
#[tokio::test(flavor = "multi_thread")]
async fn a_promote_that_died_right_after_its_commit_leaves_no_deployment_behind() {
    let (plane, project, v1, v2, v3, record) =
        crashed_then_v3("promote", "promote.assign_routes.before_journal").await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
    assert!(record.runs >= 2, "it resumed");
    assert_settled(&plane, &project, &v3, &[&v1, &v2]).await;
    // v1's live events: its deploy's only; none late from the promote, after v3's.
    let live = plane.events(&project, &v1).await;
    let live = live.iter().filter(|e| e["type"] == "live").count();
    assert_eq!(live, 1, "a late live event for v1");
}

/// Found by the chaos test: a promote of v1 whose commit went through (v1 live, v2 replaced)
/// died before journaling it; before it was resumed, v3 went live and a second promote made
/// v1 live again. Resumed, the first promote completes without validating again (v1 is live
/// because of its own commit, and the second's); v2, which its commit replaced, still goes to
/// standby although a later commit made v1 live since.
#[tokio::test(flavor = "multi_thread")]
async fn a_promote_that_died_after_its_commit_and_was_overtaken_leaves_nothing_behind() {
    let point = "promote.assign_routes.before_journal";
    let (mut plane, project, v1, v2, faulty) = two_deployed_then_faulty(point).await;
    let promote = json!({"target_deployment_id": v1, "wait_ms": 0});
    let first = plane.ok("slipway.deploy.v1.promote", promote.clone()).await;
    crashed_at(&mut plane, faulty, point);
    let v3 = plane.deployed(&project, "production", "v3").await;
    let second = plane.workflow("slipway.deploy.v1.promote", promote).await;
    assert_eq!(second.status.as_str(), "completed", "{:?}", second.error);

    let first = plane
        .workflow_done(first["workflow_id"].as_str().unwrap())
        .await;
    assert_eq!(first.status.as_str(), "completed", "{:?}", first.error);
    assert!(first.runs >= 2, "resumed after the second");
    assert_settled(&plane, &project, &v1, &[&v2, &v3]).await;
}

/// A promote of the live deployment of a rolled-back project (it confirms the rollback: the
/// pin goes) died right after its commit, before journaling it; a second rollback, to v2,
/// pinned the project again before the promote was resumed. Resumed, the promote does not
/// confirm again, nor promote v1 (which is no longer live): either would undo the later
/// rollback. Its commit is recorded, like every other commit point.
#[tokio::test(flavor = "multi_thread")]
async fn a_promote_that_died_after_confirming_a_rollback_does_not_undo_a_later_one() {
    let point = "promote.confirm_rollback.before_journal";
    let (mut plane, project, v1, v2, faulty) = two_deployed_then_faulty(point).await;
    let to_v1 = json!({"source_deployment_id": v2, "target_deployment_id": v1, "wait_ms": 0});
    let first = plane.workflow("slipway.deploy.v1.rollback", to_v1).await;
    assert_eq!(first.status.as_str(), "completed", "{:?}", first.error);
    let confirm = json!({"target_deployment_id": v1, "wait_ms": 0});
    let promote = plane.ok("slipway.deploy.v1.promote", confirm).await;
    crashed_at(&mut plane, faulty, point);
    assert!(
        !plane.get_project(&project).await["project"]["is_rolled_back"]
            .as_bool()
            .unwrap()
    );

    let to_v2 = json!({"source_deployment_id": v1, "target_deployment_id": v2, "wait_ms": 0});
    let second = plane.workflow("slipway.deploy.v1.rollback", to_v2).await;
    assert_eq!(second.status.as_str(), "completed", "{:?}", second.error);
    let promote = plane
        .workflow_done(promote["workflow_id"].as_str().unwrap())
        .await;
    assert_eq!(promote.status.as_str(), "completed", "{:?}", promote.error);
    assert!(promote.runs >= 2, "resumed after the second rollback");
    assert_pinned(&plane, &project, &v2, &v2, &v1).await;
}

/// Reproduction 2: an orchestrator stalled (SIGSTOP) inside its commit step, past the lease
/// TTL and the ack wait. Another orchestrator resumes the deploy (a new lease epoch) and a
/// later deploy v4 goes live; the stalled one, continued, is refused by the store (its
/// fencing token is older) instead of pointing live back at v3.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_holder_cannot_commit_after_its_lease_was_taken_over() {
    let mut plane = Plane::without_orchestrator().await;
    plane.orchestrator_env = vec![("SLIPWAY_STANDBY_DELAY", "1h".into())];
    let normal = plane.spawn_orchestrator(&[]);
    let project = plane.project().await;
    plane.deployed(&project, "production", "v1").await;
    plane.orchestrators[normal].kill();

    let point = "commit.before_request";
    let stalled = plane.spawn_orchestrator(&[("SLIPWAY_FAULT_STOP", point.into())]);
    let (v3, wf3) = plane.deploy(&project, "production", "v3").await;
    plane.orchestrator_logged(stalled, &format!("fault point {point} reached: stopping"));
    plane.request_timeout = Duration::from_secs(1); // the stopped one takes requests too
    plane.spawn_orchestrator(&[]);
    let record = plane.workflow_done(&wf3).await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
    let v4 = plane.deployed(&project, "production", "v4").await;

    plane.orchestrators[stalled].cont();
    plane.orchestrator_logged(stalled, "stale fencing token");
    assert_settled(&plane, &project, &v4, &[&v3]).await;
}

/// Found by the chaos test: an orchestrator stalled (SIGSTOP) inside a rollback's
/// `clear_target` step, just before its call to the actor, past the lease TTL and the ack
/// wait. Another orchestrator completes the rollback, and a promote of v2 supersedes v1 again
/// (v1's standby scheduled under a newer lease epoch). The stalled one, continued, sends its
/// clear: the actor refuses it (older fencing token) instead of cancelling v1's standby and
/// leaving v1 running for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_holder_cannot_clear_what_a_later_holder_scheduled() {
    let (mut plane, project, v1, v2) = Plane::two_deployed(vec![]).await;

    let point = "clear.before_request";
    let stalled = plane.spawn_orchestrator(&[("SLIPWAY_FAULT_STOP", point.into())]);
    let body = json!({"source_deployment_id": v2, "target_deployment_id": v1, "wait_ms": 0});
    let reply = plane.ok("slipway.deploy.v1.rollback", body).await;
    plane.orchestrator_logged(stalled, &format!("fault point {point} reached: stopping"));
    plane.request_timeout = Duration::from_secs(1); // the stopped one takes requests too
    plane.spawn_orchestrator(&[]);
    let record = plane
        .workflow_done(reply["workflow_id"].as_str().unwrap())
        .await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
    let promote = json!({"target_deployment_id": v2, "wait_ms": 0});
    let record = plane.workflow("slipway.deploy.v1.promote", promote).await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
    assert_eq!(plane.pending(&v1).await.unwrap()["state"], "standby");

    plane.orchestrators[stalled].cont();
    plane.orchestrator_logged(stalled, "workflow run aborted");
    assert_settled(&plane, &project, &v2, &[&v1]).await;
    plane.orchestrator_logged(stalled, "stale fencing token");
}

/// The narrowest window, found by the cluster test: a deploy's commit went through (v3 live,
/// v2 replaced) and its orchestrator died before journaling it; v4 went live meanwhile and
/// v3's standby was applied. Resumed, v3's deploy repeats its commit, which writes nothing:
/// v4 stays live, v3 stays in standby, and v2 goes to standby (its standby was owed by a step
/// that never ran). When a repeated commit was applied again, v3 took live back while in
/// standby, with nothing running to serve it.
#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_that_died_right_after_its_commit_does_not_take_live_back() {
    let point = "deploy.assign_routes.before_journal";
    // An ack wait long enough for v4's deploy and v3's standby to happen before v3's deploy
    // is redelivered (checked below, not assumed).
    let env = vec![("SLIPWAY_WORKFLOW_ACK_WAIT", "15s".into())];
    let (mut plane, project, _v1, v2) = Plane::two_deployed(env).await;
    let faulty = plane.spawn_orchestrator(&[("SLIPWAY_FAULT_POINT", point.into())]);
    let (v3, wf3) = plane.deploy(&project, "production", "v3").await;
    plane.orchestrator_logged(faulty, &format!("fault point {point} reached"));
    plane.orchestrators[faulty].kill();
    let live = plane.store.project(&project).await.unwrap();
    assert_eq!(
        live.live_deployment_id.as_deref(),
        Some(v3.as_str()),
        "the commit went through"
    );

    plane.spawn_orchestrator(&[("SLIPWAY_STANDBY_DELAY", "1s".into())]);
    let v4 = plane.deployed(&project, "production", "v4").await;
    let changed = plane.wait_event(&project, &v3, "desired_state").await;
    assert_eq!(changed["desired_state"], "standby");
    let entry = plane.workflows.get(format!("wf.{wf3}")).await.unwrap();
    let before: WorkflowRecord = rmp_serde::from_slice(&entry.unwrap()).unwrap();
    assert_eq!(
        before.runs, 1,
        "v3's deploy resumes only after v3 went to standby"
    );

    let record = plane.workflow_done(&wf3).await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
    assert!(record.runs >= 2, "it resumed");
    assert!(
        !step_names(&record).contains(&"live"),
        "{:?}",
        step_names(&record)
    );
    let p = plane.get_project(&project).await;
    assert_eq!(p["project"]["live_deployment_id"], v4.as_str());
    assert_eq!(
        plane.live_and_production_routes(&project).await,
        (v4.clone(), v4.clone())
    );
    assert_eq!(plane.deployment(&v3).await["desired_state"], "standby");
    // v2's standby (1 s) may have been applied already.
    let v2_standby = plane.deployment(&v2).await["desired_state"] == "standby"
        || plane
            .pending(&v2)
            .await
            .is_some_and(|p| p["state"] == "standby");
    assert!(v2_standby, "v2 goes to standby");
    plane.invariants().assert(&[project]).await;
}

/// Reproduction 3: the deployment actor is down when a production deploy has committed
/// (routes and live pointer moved). Its standby step retries past the retry budget of a
/// step before the commit point, until the actor is back; the deployment is never marked
/// failed nor stopped while it serves live traffic.
#[tokio::test(flavor = "multi_thread")]
async fn a_failure_after_the_commit_point_never_stops_live_traffic() {
    let mut plane = Plane::without_orchestrator().await;
    plane.orchestrator_env = vec![
        ("SLIPWAY_STANDBY_DELAY", "1h".into()),
        ("SLIPWAY_STEP_RETRIES", "2".into()),
    ];
    let orch = plane.spawn_orchestrator(&[]);
    let project = plane.project().await;
    let v1 = plane.deployed(&project, "production", "v1").await;
    plane.kill_service(1); // deployment-actor
    let (v2, wf) = plane.deploy(&project, "production", "v2").await;
    plane.wait_event(&project, &v2, "live").await;
    // More failed attempts than a step before the commit point may make.
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + TIMEOUT;
        while plane.orchestrators[orch].count_log("step failed; retrying") < 5 {
            assert!(
                Instant::now() < deadline,
                "schedule_standby is not being retried"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let d = plane.deployment(&v2).await;
    assert_eq!(d["status"], "ready");
    assert_eq!(d["desired_state"], "running");
    assert!(d["failure_reason"].is_null(), "{d}");

    plane.respawn_service("deployment-actor");
    let record = plane.workflow_done(&wf).await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
    assert_eq!(plane.pending(&v1).await.unwrap()["state"], "standby");
    plane.invariants().assert(&[project]).await;
}

/// Reproduction 4: a deploy resumed after its ready deadline has passed reads what the
/// agents report now before judging the deadline: its instances are healthy, it completes.
#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_resumed_after_its_deadline_judges_the_current_reports() {
    let mut plane = Plane::without_orchestrator().await;
    plane.orchestrator_env = vec![("SLIPWAY_READY_TIMEOUT", "2s".into())];
    let point = "deploy.wait_instances.before_journal";
    let faulty = plane.spawn_orchestrator(&[("SLIPWAY_FAULT_POINT", point.into())]);
    let project = plane.project().await;
    let (dep, wf) = plane.deploy(&project, "production", "v1").await;
    plane.orchestrator_logged(faulty, &format!("fault point {point} reached"));
    plane.orchestrators[faulty].kill();
    // The deadline is journaled: let it pass while no orchestrator runs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    plane.spawn_orchestrator(&[]);
    let record = plane.workflow_done(&wf).await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
    assert_eq!(plane.deployment(&dep).await["status"], "ready");
    plane.invariants().assert(&[project]).await;
}

/// Reproduction 5: with the default ack wait, a crashed orchestrator's in-flight workflow is
/// resumed within 5 s, by another running orchestrator or by the crashed one restarted.
#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_orchestrators_workflows_resume_within_five_seconds() {
    let mut plane = Plane::without_orchestrator().await;
    // The defaults, not the test plane's shorter ones.
    plane.orchestrator_env = vec![
        ("SLIPWAY_WORKFLOW_ACK_WAIT", "3s".into()),
        ("SLIPWAY_LEASE_TTL", "15s".into()),
    ];
    // Before the project lease: a resumed run always replays that step (one after the lease
    // point is decided again when another holder came in between, reaching the point again).
    let point = "deploy.openapi.after_journal";
    for restart_the_crashed_one in [false, true] {
        // Either every orchestrator running crashes at the point the first time it gets
        // there, and one other keeps running; or the only one crashes and is restarted.
        let running = if restart_the_crashed_one { 1 } else { 2 };
        let first = plane.orchestrators.len();
        for _ in 0..running {
            plane.spawn_orchestrator(&[("SLIPWAY_FAULT_POINT", point.into())]);
        }
        let project = plane.project().await;
        let (_, wf) = plane.deploy(&project, "production", "v1").await;
        let needle = format!("fault point {point} reached");
        let crashed_at = tokio::task::block_in_place(|| {
            let deadline = Instant::now() + TIMEOUT;
            loop {
                if plane.orchestrators[first..]
                    .iter()
                    .any(|o| o.count_log(&needle) > 0)
                {
                    return Instant::now();
                }
                assert!(Instant::now() < deadline, "no orchestrator reached {point}");
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        if restart_the_crashed_one {
            plane.orchestrators[first].kill();
            plane.spawn_orchestrator(&[]);
        }
        let mut watch = plane
            .workflows
            .watch_with_history(format!("wf.{wf}"))
            .await
            .unwrap();
        tokio::time::timeout(
            Duration::from_secs(5).saturating_sub(crashed_at.elapsed()),
            async {
                while let Some(Ok(entry)) = watch.next().await {
                    let record: WorkflowRecord = rmp_serde::from_slice(&entry.value).unwrap();
                    if record.runs >= 2 {
                        return;
                    }
                }
            },
        )
        .await
        .unwrap_or_else(|_| {
            panic!("not resumed within 5 s of the crash (restarted: {restart_the_crashed_one})")
        });
        eprintln!(
            "resumed {:?} after the crash (restarted: {restart_the_crashed_one})",
            crashed_at.elapsed()
        );
        let record = plane.workflow_done(&wf).await;
        assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
        plane.invariants().assert(&[project]).await;
        for o in &mut plane.orchestrators[first..] {
            o.kill();
        }
    }
}
