//! Deploys from git sources over real processes: a git repository the test makes, the
//! orchestrator building its commits through a real podman service (Docker Engine API), and
//! the region agent running the built images as containers on the same engine.

use std::{path::Path, process::Command};

use serde_json::{json, Value};
use slipway_testkit::{
    podman::{write_www_context, Options, Registry},
    Plane, Podman,
};

/// Runs git in `repo`; its stdout.
fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(args)
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Commits `app/` as a busybox web server serving `index`; the commit's sha.
fn commit_app(repo: &Path, index: &str) -> String {
    write_www_context(&repo.join("app"), &[("index.html", index)]);
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", index.trim()]);
    git(repo, &["rev-parse", "HEAD"])
}

/// Commits a build step of `app/` that sleeps `seconds`; the commit's sha.
fn commit_slow_build(repo: &Path, seconds: u32) -> String {
    let dockerfile = repo.join("app/Dockerfile");
    let slow = std::fs::read_to_string(&dockerfile).unwrap().replace(
        "COPY www /www\n",
        &format!("COPY www /www\nRUN [\"/bin/busybox\", \"sleep\", \"{seconds}\"]\n"),
    );
    std::fs::write(&dockerfile, slow).unwrap();
    git(repo, &["commit", "-q", "-am", "slow"]);
    git(repo, &["rev-parse", "HEAD"])
}

async fn deploy_source(plane: &Plane, project: &str, repo: &Path, sha: &str) -> (String, String) {
    let reply = plane
        .ok(
            "slipway.deploy.v1.create_deployment",
            json!({
                "project_id": project,
                "environment_slug": "production",
                "git_source": {
                    "repository": format!("file://{}", repo.display()),
                    "commit_sha": sha,
                    "context_path": "app",
                    "dockerfile_path": "Dockerfile",
                },
            }),
        )
        .await;
    (
        reply["deployment_id"].as_str().unwrap().to_string(),
        reply["workflow_id"].as_str().unwrap().to_string(),
    )
}

/// What an instance of deployment `d` answers on `/`.
async fn served(d: &Value) -> String {
    let address = d["instances"][0]["address"].as_str().unwrap();
    reqwest::get(format!("http://{address}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `slipway logs <dep>` once its output satisfies `ok` (the agent publishes an instance's
/// lines as they reach its log file, within moments).
async fn logs_where(plane: &Plane, dep: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = Command::new(slipway_testkit::plane::bin("slipway"))
            .args(["logs", dep])
            .env("SLIPWAY_NATS_URL", plane.nats.url())
            .output()
            .expect("running slipway logs");
        let logs = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "slipway logs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if ok(&logs) {
            return logs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slipway logs {dep} never showed what was expected: {logs}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_git_source_is_built_at_its_commit_and_deployed_and_a_broken_build_fails_with_its_output()
{
    let Some(podman) = Podman::start() else {
        return;
    };
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    let first = commit_app(repo.path(), "built from the first commit\n");
    let second = commit_app(repo.path(), "built from the second commit\n");

    let mut plane = Plane::builder()
        .docker_host(podman.host())
        .services()
        .orchestrators(1)
        .edge()
        .start()
        .await;
    let project = plane.project().await;
    podman.remove_when_done(&format!("localhost/slipway/{project}"));

    // The first commit, though the second is newer: exactly that commit is built.
    let started = std::time::Instant::now();
    let (dep, wf) = deploy_source(&plane, &project, repo.path(), &first).await;
    let record = plane.workflow_done(&wf).await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
    eprintln!("git source → ready in {:?}", started.elapsed());
    let d = plane.deployment(&dep).await;
    assert_eq!(d["status"], "ready");
    assert_eq!(
        d["image"].as_str().unwrap(),
        format!("localhost/slipway/{project}:{dep}")
    );
    assert_eq!(served(&d).await, "built from the first commit\n");
    // Through the edge too, at the project's live domain.
    let live = plane.serving_domain(&project, "live", "").await;
    let (status, deployment, body) = plane.through_edge(&live, "/").await;
    assert_eq!(
        (status, deployment.as_str(), body.as_str()),
        (200, dep.as_str(), "built from the first commit\n")
    );
    // It went through building.
    let statuses: Vec<String> = plane
        .events(&project, &dep)
        .await
        .iter()
        .filter(|e| e["type"] == "status")
        .map(|e| e["status"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(statuses, ["building", "deploying", "ready"], "{statuses:?}");
    // `slipway logs` shows what the build printed and what its instance prints.
    let instance = d["instances"][0]["id"].as_str().unwrap().to_string();
    let logs = logs_where(&plane, &dep, |logs| {
        logs.contains(&format!("{instance} | serving on 8080"))
    })
    .await;
    assert!(
        logs.lines()
            .any(|l| l.starts_with("build | ") && l.contains("COPY")),
        "{logs}"
    );

    let (dep2, wf2) = deploy_source(&plane, &project, repo.path(), &second).await;
    let record = plane.workflow_done(&wf2).await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
    assert_eq!(
        served(&plane.deployment(&dep2).await).await,
        "built from the second commit\n"
    );

    // A Dockerfile that cannot build fails the deployment with the build's own words.
    std::fs::write(
        repo.path().join("app/Dockerfile"),
        "FROM scratch\nCOPY no-such-file /nothing\n",
    )
    .unwrap();
    git(repo.path(), &["commit", "-q", "-am", "broken"]);
    let broken = git(repo.path(), &["rev-parse", "HEAD"]);
    let (dep3, wf3) = deploy_source(&plane, &project, repo.path(), &broken).await;
    let record = plane.workflow_done(&wf3).await;
    assert_eq!(record.status.as_str(), "failed");
    let d = plane.deployment(&dep3).await;
    let reason = d["failure_reason"].as_str().unwrap();
    assert!(
        reason.contains("the build failed") && reason.contains("no-such-file"),
        "{reason}"
    );

    // A commit the repository does not have fails saying so.
    let (dep4, wf4) = deploy_source(
        &plane,
        &project,
        repo.path(),
        "0123456789abcdef0123456789abcdef01234567",
    )
    .await;
    assert_eq!(plane.workflow_done(&wf4).await.status.as_str(), "failed");
    let d = plane.deployment(&dep4).await;
    let reason = d["failure_reason"].as_str().unwrap();
    assert!(reason.contains("cannot fetch"), "{reason}");

    // The live deployment is still the second one, and everything agrees.
    assert_eq!(
        plane.get_project(&project).await["project"]["live_deployment_id"],
        dep2
    );
    plane.invariants().assert(&[project]).await;
}

/// The orchestrator SIGKILLed while it builds: another one resumes the deploy, builds again
/// (or takes what the first build finished), and the deployment runs one image.
#[tokio::test(flavor = "multi_thread")]
async fn an_orchestrator_killed_mid_build_resumes_and_deploys_one_image() {
    let Some(podman) = Podman::start() else {
        return;
    };
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    commit_app(repo.path(), "slow build\n");
    // A build step that takes a while, so the kill lands inside it.
    let sha = commit_slow_build(repo.path(), 3);

    let mut plane = Plane::builder()
        .docker_host(podman.host())
        .services()
        .orchestrators(1)
        .start()
        .await;
    let project = plane.project().await;
    podman.remove_when_done(&format!("localhost/slipway/{project}"));
    let (dep, wf) = deploy_source(&plane, &project, repo.path(), &sha).await;
    plane
        .wait_event_where(&project, &dep, "status", |e| e["status"] == "building")
        .await;
    plane.orchestrators[0].kill();
    plane.spawn_orchestrator(&[]);

    let record = plane.workflow_done(&wf).await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
    let d = plane.deployment(&dep).await;
    assert_eq!(served(&d).await, "slow build\n");
    let tag = format!("localhost/slipway/{project}:{dep}");
    assert_eq!(d["image"].as_str().unwrap(), tag);
    let images = podman.images(&format!("localhost/slipway/{project}"));
    assert_eq!(images.len(), 1, "{images:?}");
    plane.invariants().assert(&[project]).await;
}

/// With a registry configured, a built image is pushed, and an agent whose engine does not
/// have it (its own image storage: another host, as far as images go) pulls and runs it; a
/// later build starts from that image, pulled from the registry. The registry wants a login,
/// which both have from `SLIPWAY_REGISTRY_AUTH` alone (the engines have none of their own;
/// without it, the push is refused: "unauthorized").
#[tokio::test(flavor = "multi_thread")]
async fn a_built_image_is_pushed_and_an_agent_on_another_engine_pulls_it() {
    let Some(registry) = Registry::start_with_login() else {
        return;
    };
    let credentials = tempfile::tempdir().unwrap();
    let auth_file = registry.auth_file(credentials.path());
    let options = Options {
        own_storage: false,
        insecure_registry: Some(registry.address.clone()),
    };
    let Some(builder) = Podman::start_with(options.clone()) else {
        return;
    };
    let Some(runner) = Podman::start_with(Options {
        own_storage: true,
        ..options
    }) else {
        return;
    };
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    let sha = commit_app(repo.path(), "pulled from the registry\n");

    let prefix = format!("{}/slipway", registry.address);
    let mut plane = Plane::builder()
        .docker_host(runner.host())
        .orchestrator_env("SLIPWAY_BUILDER_DOCKER_HOST", builder.host())
        .orchestrator_env("SLIPWAY_BUILD_IMAGE_PREFIX", prefix.clone())
        .orchestrator_env("SLIPWAY_BUILD_PUSH", "true")
        .service_env("SLIPWAY_REGISTRY_AUTH", auth_file.display().to_string())
        .services()
        .orchestrators(1)
        .start()
        .await;
    let project = plane.project().await;
    builder.remove_when_done(&format!("{prefix}/{project}"));
    runner.remove_when_done(&format!("{prefix}/{project}"));

    let (dep, wf) = deploy_source(&plane, &project, repo.path(), &sha).await;
    let record = plane.workflow_done(&wf).await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
    let d = plane.deployment(&dep).await;
    assert_eq!(
        d["image"].as_str().unwrap(),
        format!("{prefix}/{project}:{dep}")
    );
    assert_eq!(served(&d).await, "pulled from the registry\n");
    assert_eq!(
        registry.tags(&format!("slipway/{project}")),
        vec![dep.clone()]
    );
    // The agent's engine has it only because it pulled it.
    let pulled = runner.images(&format!("{prefix}/{project}"));
    assert_eq!(pulled.len(), 1, "{pulled:?}");

    // A build whose base image is that one, in the registry only: the builder's engine pulls
    // it with the credentials the build request carries (it has no login of its own).
    let base = format!("{prefix}/{project}:{dep}");
    builder.run(&["rmi", "-f", &base]);
    let app = repo.path().join("app");
    std::fs::write(app.join("www/index.html"), "built on a private base\n").unwrap();
    std::fs::write(
        app.join("Dockerfile"),
        format!("FROM {base}\nCOPY www /www\n"),
    )
    .unwrap();
    git(repo.path(), &["commit", "-q", "-am", "on a private base"]);
    let sha = git(repo.path(), &["rev-parse", "HEAD"]);
    let (dep, wf) = deploy_source(&plane, &project, repo.path(), &sha).await;
    let record = plane.workflow_done(&wf).await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
    let d = plane.deployment(&dep).await;
    assert_eq!(served(&d).await, "built on a private base\n");
    plane.invariants().assert(&[project]).await;
}

/// `slipway deploy --git` builds and deploys, printing the build's lines while it builds; a
/// build past `SLIPWAY_BUILD_TIMEOUT` fails the deployment saying so.
#[tokio::test(flavor = "multi_thread")]
async fn slipway_deploy_shows_the_build_and_a_build_past_its_timeout_fails() {
    let Some(podman) = Podman::start() else {
        return;
    };
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    let quick = commit_app(repo.path(), "deployed by the CLI\n");
    let slow = commit_slow_build(repo.path(), 30);

    let mut plane = Plane::builder()
        .docker_host(podman.host())
        .orchestrator_env("SLIPWAY_BUILD_TIMEOUT", "4s")
        .services()
        .orchestrators(1)
        .start()
        .await;
    let project = plane.project().await;
    podman.remove_when_done(&format!("localhost/slipway/{project}"));

    let deploy = |sha: &str| {
        Command::new(slipway_testkit::plane::bin("slipway"))
            .args(["deploy", "--project", &project, "--git"])
            .arg(repo.path())
            .args(["--commit", sha, "--context", "app", "--timeout", "60s"])
            .env("SLIPWAY_NATS_URL", plane.nats.url())
            .output()
            .expect("running slipway deploy")
    };
    let out = deploy(&quick);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("is ready"), "{stdout}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("build | ") && l.contains("COPY")),
        "{stderr}"
    );

    let out = deploy(&slow);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("the build took longer than 4s"), "{stderr}");
    plane.invariants().assert(&[project]).await;
}

/// An orchestrator or a region agent given registry credentials it cannot use does not start,
/// and says which file and why, rather than failing its first push or pull much later.
#[test]
fn services_with_unusable_registry_credentials_do_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("config.json");
    std::fs::write(&garbage, "auths: none").unwrap();
    let absent = dir.path().join("absent.json");
    for service in ["deploy-orchestrator", "krane-agent"] {
        for (file, why) in [
            (&absent, "cannot read the registry credentials"),
            (&garbage, "the registry credentials"),
        ] {
            let out = Command::new(slipway_testkit::plane::bin(service))
                .env("SLIPWAY_REGISTRY_AUTH", file)
                // Never reached: the file is checked first.
                .env("SLIPWAY_NATS_URL", "nats://127.0.0.1:1")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{service} started: {stderr}");
            let said = format!("SLIPWAY_REGISTRY_AUTH: {why}");
            assert!(stderr.contains(&said), "{service}: {stderr}");
            assert!(
                stderr.contains(&file.display().to_string()),
                "{service}: {stderr}"
            );
        }
    }
}
