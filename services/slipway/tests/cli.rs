//! The CLI against a running control plane (`slipway dev`): create records, deploy with
//! progress to ready, status, ls, routes, timers, rollback, promote; `--json` parses; a
//! failing deploy and a server error exit non-zero with the server's message. Then Ctrl-C
//! stops everything `slipway dev` started: no process is left.

use std::process::{Command, Stdio};

mod common;

use common::{host_and_port, http_get, Cli, Dev, SLIPWAY};

/// Every process below `pid` (by parent links in /proc).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|v| v.parse().ok()) {
            parents.push((p, ppid));
        }
    }
    let mut out = vec![];
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (p, pp) in &parents {
            if *pp == parent {
                out.push(*p);
                frontier.push(*p);
            }
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_drives_a_running_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Dev::start(dir.path(), &[]).await;
    let url = dev.nats_url();
    // The banner's curl works as printed: the demo app answers through the edge.
    let curl = dev
        .line("curl ")
        .expect("slipway dev printed no curl command");
    let (host, port) = host_and_port(&curl);
    assert_eq!(http_get(&host, port, "/").await, "hello", "{curl}");
    let cli = Cli::at(url);

    tokio::task::block_in_place(|| {
        let ws = cli.json(&["workspace", "create", "acme"]);
        let ws = ws["workspace"]["id"].as_str().unwrap().to_string();
        let p = cli.json(&["project", "create", "shop", "--workspace", &ws]);
        let project = p["project"]["id"].as_str().unwrap().to_string();
        let env = cli.json(&[
            "env",
            "create",
            "production",
            "--project",
            &project,
            "--region",
            "local=1",
        ]);
        assert_eq!(env["environment"]["regions"]["local"], 1);

        // A deploy with progress on stderr, URLs on stdout.
        let out = cli.run(&[
            "deploy",
            "--project",
            &project,
            "--image",
            "exec:slipway demo-app --message one",
            "--commit",
            "0123456789abcdef",
        ]);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("✓ wait_instances") && stderr.contains("✓ assign_routes"),
            "{stderr}"
        );
        // The URLs are through the edge, and answer.
        let live = format!("http://shop--acme.slipway.localhost:{port}/");
        assert!(
            stdout.contains("is ready") && stdout.contains(&live),
            "{stdout}"
        );
        let body = tokio::runtime::Handle::current().block_on(http_get(
            "shop--acme.slipway.localhost",
            port,
            "/",
        ));
        assert_eq!(body, "one");
        let first = stdout.split_whitespace().next().unwrap().to_string();

        let second = cli.json(&[
            "deploy",
            "--project",
            &project,
            "--image",
            "exec:slipway demo-app --message two",
        ]);
        assert_eq!(second["status"], "ready");
        let second = second["id"].as_str().unwrap().to_string();

        let status = cli.json(&["status", &second]);
        assert_eq!(
            (
                status["status"].as_str(),
                status["instances"].as_array().unwrap().len()
            ),
            (Some("ready"), 1)
        );
        assert!(status["pending_transition"].is_null());
        let status = cli.json(&["status", &first]);
        assert_eq!(status["pending_transition"]["state"], "standby");

        let ls = cli.json(&["ls", "--project", &project]);
        let listed: Vec<(&str, bool)> = ls["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["id"].as_str().unwrap(), d["live"].as_bool().unwrap()))
            .collect();
        assert_eq!(
            listed,
            vec![(second.as_str(), true), (first.as_str(), false)]
        );
        let human =
            String::from_utf8_lossy(&cli.run(&["ls", "--project", &project]).stdout).to_string();
        let mut lines = human.lines();
        let header = lines.next().unwrap();
        assert!(
            header.contains("DEPLOYMENT") && header.contains("COMMIT") && header.contains("IMAGE"),
            "{human}"
        );
        let newest = lines.next().unwrap();
        assert!(newest.starts_with(&format!("* {second}")), "{human}");
        assert!(
            newest.contains("s ago") && newest.contains("exec:slipway demo-app"),
            "{human}"
        );

        let routes = cli.json(&["routes", "--project", &project]);
        assert!(routes["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["fqdn"] == "shop--acme.slipway.localhost"
                && r["deployment_id"] == second.as_str()));
        let timers = cli.json(&["timers"]);
        assert!(
            timers["timers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["deployment_id"] == first.as_str() && t["state"] == "standby"),
            "{timers}"
        );

        let rolled = cli.json(&["rollback", &second, &first]);
        assert_eq!(rolled["status"], "completed");
        let ls = cli.json(&["ls", "--project", &project]);
        assert_eq!(
            (
                ls["live_deployment_id"].as_str(),
                ls["is_rolled_back"].as_bool()
            ),
            (Some(first.as_str()), Some(true))
        );
        // A deploy to the pinned project is ready, not live, and says so.
        let out = cli.run(&[
            "deploy",
            "--project",
            &project,
            "--image",
            "exec:slipway demo-app --message pinned",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert!(
            stdout.contains(&format!(
                "not live: the project is rolled back (pinned) to {first}"
            )),
            "{stdout}"
        );
        let promoted = cli.json(&["promote", &second]);
        assert_eq!(promoted["status"], "completed");
        let ls = cli.json(&["ls", "--project", &project]);
        assert_eq!(
            (
                ls["live_deployment_id"].as_str(),
                ls["is_rolled_back"].as_bool()
            ),
            (Some(second.as_str()), Some(false))
        );

        // Failures exit non-zero with the reason or the server's message.
        let out = cli.run(&[
            "deploy",
            "--project",
            &project,
            "--image",
            "exec:slipway demo-app --exit-after 0s",
        ]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("failed") && stderr.contains("exited with"),
            "{stderr}"
        );
        let out = cli.run(&["status", "dep_nope"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("deployment dep_nope not found"));
        let out = cli.run(&["rollback", &second, &second]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("same deployment"));
        assert!(!out.status.success());
    });

    // Ctrl-C: everything it started goes, demo apps included.
    let started = descendants(dev.child.id());
    assert!(
        started.len() >= 6,
        "services, agent, nats-server and apps: {started:?}"
    );
    let interrupted = Command::new("kill")
        .args(["-INT", &dev.child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = tokio::task::block_in_place(|| dev.child.wait().unwrap());
    assert!(status.success(), "slipway dev exited with {status}");
    let left: Vec<u32> = started.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

/// Where the CLI looks for NATS, and what it says when nothing answers there: once, with the
/// URL and where it came from; `--nats-url` also after the subcommand; `NATS_URL` (the nats
/// CLI's variable) when `SLIPWAY_NATS_URL` is not set.
#[test]
fn connection_errors_say_once_where_the_url_came_from() {
    let port = slipway_testkit::ports::free_port().unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(SLIPWAY);
        command
            .args(args)
            .env_remove("SLIPWAY_NATS_URL")
            .env_remove("NATS_URL")
            .stdin(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let cases = [
        (
            run(&["ls", "--project", "proj_x"], &[("NATS_URL", &url)]),
            "from NATS_URL",
        ),
        (
            run(&["ls", "--project", "proj_x", "--nats-url", &url], &[]),
            "from --nats-url",
        ),
        (run(&["--nats-url", &url, "timers"], &[]), "from --nats-url"),
        (
            run(
                &["ls", "--project", "proj_x"],
                &[
                    ("SLIPWAY_NATS_URL", &url),
                    ("NATS_URL", "nats://elsewhere:1"),
                ],
            ),
            "from SLIPWAY_NATS_URL",
        ),
    ];
    for (stderr, origin) in cases {
        assert_eq!(stderr.matches("cannot connect").count(), 1, "{stderr}");
        assert_eq!(stderr.matches(&url).count(), 1, "{stderr}");
        assert!(stderr.contains(origin), "{stderr}");
    }
    let default = run(&["timers"], &[]);
    assert!(
        default.contains("the default: set SLIPWAY_NATS_URL"),
        "{default}"
    );
}
