//! `routing` is built in issue 3; until then this binary says so instead of pretending to run.

fn main() -> std::process::ExitCode {
    eprintln!("routing: not implemented yet (see issue 3); only deployment-actor runs today");
    std::process::ExitCode::from(2)
}
