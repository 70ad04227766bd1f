//! The first hour of a platform engineer, replayed through the CLI as the README tells it:
//! `slipway dev` on PostgreSQL (`--database-url`), the CLI found on the `PATH` its banner
//! prints, records created and listed, variables (a secret among them) visible to the app
//! and restored by a rollback, archive (refused for the live deployment), scale, and the
//! failures that must come fast and say why: an image the agent cannot run, a region no agent
//! serves, an app whose health check fails.

mod common;

use std::time::{Duration, Instant};

use common::{http, http_get, Cli, Dev};
use serde_json::Value;

const LIVE: &str = "shop--acme.slipway.localhost";

#[tokio::test(flavor = "multi_thread")]
async fn the_first_hour_through_the_cli() {
    let db = slipway_testkit::TestDb::postgres().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), &["--database-url", &db.url]).await;
    assert!(
        dev.banner.contains(&format!("database  {}", db.url)),
        "{}",
        dev.banner
    );
    // The CLI as the banner says to find it: `export PATH="<dir>:$PATH"`.
    let bin_dir = dev
        .line("export PATH=")
        .map(|p| p.trim_matches('"').trim_end_matches(":$PATH").to_string())
        .unwrap_or_else(|| panic!("no PATH line in the banner:\n{}", dev.banner));
    let cli = Cli {
        url: dev.nats_url(),
        program: "slipway".into(),
        path: Some(format!(
            "{bin_dir}:{}",
            std::env::var("PATH").unwrap_or_default()
        )),
    };
    let edge = dev.edge_port();
    let app_env = |host: &'static str| async move { http_get(host, edge, "/env").await };

    tokio::task::block_in_place(|| {
        let ws = cli.json(&["workspace", "create", "acme"])["workspace"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(cli.ok(&["workspace", "ls"]).contains("acme"));
        let project = cli.json(&["project", "create", "shop", "--workspace", &ws])["project"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(cli
            .ok(&["project", "ls", "--workspace", &ws])
            .contains(&project));
        cli.ok(&["env", "create", "production", "--project", &project]);

        // Variables; the secret's value comes on stdin, out of the shell's history.
        let p = project.as_str();
        cli.ok(&[
            "env",
            "set",
            "production",
            "--project",
            p,
            "DEMO_GREETING=one",
        ]);
        let out = cli.run_with_input(
            &[
                "env",
                "set",
                "production",
                "--project",
                p,
                "--secret",
                "DEMO_TOKEN",
            ],
            "s3cret\n",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let vars = cli.ok(&["env", "vars", "production", "--project", p]);
        assert_eq!(vars, "DEMO_GREETING=one\nDEMO_TOKEN=<secret>\n");

        let deploy = |message: &str, commit: &str| -> String {
            let image = format!("exec:slipway demo-app --message {message}");
            let d = cli.json(&[
                "deploy",
                "--project",
                p,
                "--image",
                &image,
                "--commit",
                commit,
            ]);
            assert_eq!(d["status"], "ready", "{d}");
            d["id"].as_str().unwrap().to_string()
        };
        let handle = tokio::runtime::Handle::current();
        let v1 = deploy("one", "1111111");
        assert_eq!(
            handle.block_on(app_env(LIVE)),
            "DEMO_GREETING=one\nDEMO_TOKEN=s3cret\n"
        );
        cli.ok(&[
            "env",
            "set",
            "production",
            "--project",
            p,
            "DEMO_GREETING=two",
        ]);
        cli.ok(&["env", "unset", "production", "--project", p, "DEMO_TOKEN"]);
        let v2 = deploy("two", "2222222");
        assert_eq!(handle.block_on(app_env(LIVE)), "DEMO_GREETING=two\n");

        // A rollback runs the old build with its old variables.
        assert_eq!(cli.json(&["rollback", &v2, &v1])["status"], "completed");
        assert_eq!(
            handle.block_on(app_env(LIVE)),
            "DEMO_GREETING=one\nDEMO_TOKEN=s3cret\n"
        );

        // Archive: refused for the live deployment, then done once it is not.
        let refused = cli.fails(&["archive", &v1]);
        assert!(refused.contains("serves traffic"), "{refused}");
        assert_eq!(cli.json(&["promote", &v2])["status"], "completed");
        let domains = |id: &str| -> Vec<String> {
            cli.json(&["status", id])["domains"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap().to_string())
                .collect()
        };
        let own: Vec<String> = {
            let shared = domains(&v2);
            domains(&v1)
                .into_iter()
                .filter(|d| !shared.contains(d))
                .collect()
        };
        assert!(!own.is_empty(), "v1 has domains of its own");
        assert!(cli.ok(&["archive", &v1]).contains("archived"));
        for domain in &own {
            let (status, body) = handle.block_on(http(domain, edge, "/"));
            assert_eq!(status, 404, "{domain}: {body}");
        }
        assert_eq!(handle.block_on(http_get(LIVE, edge, "/")), "two");

        // Scale: the running deployment gets its instances through the agent.
        cli.ok(&[
            "env",
            "scale",
            "production",
            "--project",
            p,
            "--region",
            "local=2",
        ]);
        let running = |d: &Value| {
            d["instances"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["status"] == "running")
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while running(&cli.json(&["status", &v2])) != 2 {
            assert!(Instant::now() < deadline, "v2 never ran 2 instances");
            std::thread::sleep(Duration::from_millis(100));
        }

        // What cannot work fails at once (deploys get 60 s to be healthy here), saying why.
        let started = Instant::now();
        let failed = cli.fails(&["deploy", "--project", p, "--image", "nginx:latest"]);
        assert!(failed.contains("no container engine"), "{failed}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "failed after {:?}, not at once",
            started.elapsed()
        );
        cli.ok(&[
            "env",
            "create",
            "mars",
            "--project",
            p,
            "--region",
            "mars=1",
        ]);
        let failed = cli.fails(&[
            "deploy",
            "--project",
            p,
            "--env",
            "mars",
            "--image",
            "exec:slipway demo-app",
        ]);
        assert!(failed.contains("no agent serves region mars"), "{failed}");
        // While it waits, `slipway deploy` shows what each instance's health check sees.
        let waiting = cli.fails(&[
            "deploy",
            "--project",
            p,
            "--image",
            "exec:slipway demo-app --unhealthy",
            "--timeout",
            "4s",
        ]);
        assert!(
            waiting.contains("pending (GET /healthz answered 503 Service Unavailable)"),
            "{waiting}"
        );
    });
}
