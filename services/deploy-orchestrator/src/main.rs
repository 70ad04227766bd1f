//! `deploy-orchestrator` is built in issue 4; until then this binary says so instead of pretending to run.

fn main() -> std::process::ExitCode {
    eprintln!(
        "deploy-orchestrator: not implemented yet (see issue 4); only deployment-actor runs today"
    );
    std::process::ExitCode::from(2)
}
