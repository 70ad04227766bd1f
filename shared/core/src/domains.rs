//! Generated domains (BEHAVIOUR.md "Domains"): pure functions, no I/O.
//!
//! Every generated host is one DNS label under the apex: `<label>.<apex>`, the label
//! lower-case `[a-z0-9-]`, at most 63 characters (longer ones are cut and end in `-` plus 6 hex
//! characters of the SHA-256 of the full label, so distinct long names stay distinct).
//!
//! A project keeps the [`Scheme`] it was created with, so its domains never change. Projects
//! created since domain schemes exist are [`Scheme::Separated`]: the parts of a label are joined
//! by `--`, which no part contains (slugs may not, branch slugs and commit parts cannot), and
//! each kind has its own number of parts (live 2, environment and branch 3 — a branch part starts
//! with `git-`, which no environment slug may — per-commit 4), so two different
//! (workspace, project, environment, branch, commit) never spell the same label.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
pub const DEFAULT_APEX: &str = "slipway.localhost";
pub const MAX_LABEL: usize = 63;

crate::state::wire_enum! {
    /// Which routes follow a deployment (the route's `sticky`).
    pub enum Sticky as "sticky" {
        /// Per commit: belongs to one deployment for ever.
        None = "none",
        /// Per branch: moves to the newest deployment of the branch.
        Branch = "branch",
        /// Per environment: moves to the newest deployment of the environment.
        Environment = "environment",
        /// The project's live domain (production only).
        Live = "live",
    }
}

/// How a project's generated domains are spelled (stored with the project).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Scheme {
    /// Parts joined by single dashes (`shop-production-acme`), as projects created before
    /// domain schemes had it. Two projects can spell the same label (project `shop-production`'s
    /// live domain is project `shop`'s production domain): such a collision is refused when the
    /// environment that would generate it is created.
    #[default]
    Joined,
    /// Parts joined by `--`: `shop--acme` (live), `shop--staging--acme` (environment),
    /// `shop--git-main--acme` (branch), `shop--git-8f3a2b1--ab12--acme` (commit).
    Separated,
}

impl Scheme {
    /// The scheme of every project created now.
    pub const CURRENT: Scheme = Scheme::Separated;

    /// As stored: 1, 2.
    pub fn to_db(self) -> i64 {
        match self {
            Scheme::Joined => 1,
            Scheme::Separated => 2,
        }
    }

    pub fn from_db(value: i64) -> Option<Scheme> {
        match value {
            1 => Some(Scheme::Joined),
            2 => Some(Scheme::Separated),
            _ => None,
        }
    }
}

/// Why `slug` cannot name a workspace, project or environment under [`Scheme::CURRENT`]
/// (beyond being a DNS label), if it cannot.
pub fn reserved_slug(kind: SlugKind, slug: &str) -> Option<String> {
    if slug.contains("--") {
        return Some(format!(
            "{slug:?} contains \"--\", which separates the parts of generated domains"
        ));
    }
    match kind {
        SlugKind::Environment if slug.starts_with("git-") => Some(format!(
            "environment {slug:?} starts with \"git-\", which marks branch domains"
        )),
        // `xn--` starts a punycode label: `xn--acme` would not be a valid host to browsers.
        SlugKind::Project if slug == "xn" => {
            Some("project \"xn\" would start domains with \"xn--\" (punycode)".to_string())
        }
        _ => None,
    }
}

/// What a slug names, for [`reserved_slug`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlugKind {
    Workspace,
    Project,
    Environment,
}

/// What a deployment's domains are made of.
#[derive(Debug, Clone, Default)]
pub struct DomainInput<'a> {
    pub scheme: Scheme,
    pub apex: &'a str,
    pub workspace_slug: &'a str,
    pub project_slug: &'a str,
    pub environment_slug: &'a str,
    pub deployment_id: &'a str,
    pub branch: &'a str,
    pub commit_sha: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub fqdn: String,
    pub sticky: Sticky,
}

/// The domains of a deployment, in the order per-commit, per-branch, per-environment, live.
pub fn generate(input: &DomainInput<'_>) -> Vec<Domain> {
    let DomainInput {
        apex,
        workspace_slug: ws,
        project_slug: project,
        environment_slug: env,
        ..
    } = *input;
    let apex = apex.trim().trim_matches('.').to_ascii_lowercase();
    let label = |parts: &[&str]| match input.scheme {
        Scheme::Joined => fit_label(&parts.join("-")),
        Scheme::Separated => {
            let parts: Vec<String> = parts.iter().map(|p| clean(p)).collect();
            cut(parts.join("--"))
        }
    };
    let mut out = Vec::with_capacity(4);
    let mut push = |label: String, sticky| {
        out.push(Domain {
            fqdn: format!("{label}.{apex}"),
            sticky,
        })
    };

    let sha = input.commit_sha.trim().to_ascii_lowercase();
    if !sha.is_empty() {
        let sha7: String = sha.chars().take(7).collect();
        let suffix = deployment_suffix(input.deployment_id);
        let commit = match input.scheme {
            Scheme::Joined => label(&[project, "git", &sha7, &suffix, ws]),
            Scheme::Separated => label(&[project, &format!("git-{sha7}"), &suffix, ws]),
        };
        push(commit, Sticky::None);
    }
    let branch = branch_slug(input.branch);
    if !branch.is_empty() {
        push(
            label(&[project, &format!("git-{branch}"), ws]),
            Sticky::Branch,
        );
    }
    push(label(&[project, env, ws]), Sticky::Environment);
    if env == crate::state::PRODUCTION_ENVIRONMENT {
        push(label(&[project, ws]), Sticky::Live);
    }
    out
}

/// The domains an environment will generate for all its deployments (its environment domain,
/// and for production the live one): what its creation claims.
pub fn environment_domains(input: &DomainInput<'_>) -> Vec<Domain> {
    let input = DomainInput {
        branch: "",
        commit_sha: "",
        ..input.clone()
    };
    generate(&input)
}

/// The last 4 characters of the deployment id: deterministic, so a replay generates the same.
pub fn deployment_suffix(deployment_id: &str) -> String {
    let chars: Vec<char> = deployment_id.chars().collect();
    chars[chars.len().saturating_sub(4)..]
        .iter()
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Trim; every character that is neither `[a-zA-Z0-9]` nor whitespace becomes a space;
/// collapse whitespace; spaces become `-`; lower-case. Empty when nothing is left.
pub fn branch_slug(branch: &str) -> String {
    branch
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join("-")
        .to_ascii_lowercase()
}

/// Makes a DNS label of `label`: lower-case, anything outside `[a-z0-9-]` becomes `-`, runs
/// of `-` collapse, none at either end; past 63 characters it is cut to end in `-` + 6 hex of
/// the hash of the whole label.
pub fn fit_label(label: &str) -> String {
    cut(clean(label))
}

/// Lower-case; anything outside `[a-z0-9-]` becomes `-`; runs of `-` collapse, none at either
/// end.
fn clean(part: &str) -> String {
    let mapped: String = part
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    mapped
        .split('-')
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// Past 63 characters, cut to end in `-` + 6 hex of the hash of the whole label.
fn cut(label: String) -> String {
    if label.len() <= MAX_LABEL {
        return label;
    }
    let digest = Sha256::digest(label.as_bytes());
    let hash: String = digest.iter().take(3).map(|b| format!("{b:02x}")).collect();
    // Labels are ASCII here, so byte and character positions agree.
    let keep = label[..MAX_LABEL - 7].trim_end_matches('-');
    format!("{keep}-{hash}")
}

/// Whether a host is local (no sentinel config): `localhost`, `127.0.0.1`, `*.local`,
/// `*.test`; the apex itself and its subdomains always count as non-local.
pub fn is_local_host(host: &str, apex: &str) -> bool {
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let apex = apex.trim().trim_matches('.').to_ascii_lowercase();
    if !apex.is_empty() && (host == apex || host.ends_with(&format!(".{apex}"))) {
        return false;
    }
    host == "localhost"
        || host == "127.0.0.1"
        || host.ends_with(".local")
        || host.ends_with(".test")
}

/// Checks a host name a caller sent: lower-case labels of `[a-z0-9-]`, none starting or
/// ending in `-`, each at most 63 characters, 253 in all. Such a name is also a KV key.
pub fn validate_fqdn(fqdn: &str) -> Result<(), String> {
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= MAX_LABEL
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if fqdn.is_empty() || fqdn.len() > 253 || !fqdn.split('.').all(ok_label) {
        return Err(format!(
            "{fqdn:?} is not a valid host name: lower-case labels of a-z, 0-9 and '-', at most 63 characters each"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(env: &'a str, branch: &'a str, sha: &'a str) -> DomainInput<'a> {
        DomainInput {
            scheme: Scheme::Joined,
            apex: DEFAULT_APEX,
            workspace_slug: "acme",
            project_slug: "shop",
            environment_slug: env,
            deployment_id: "dep_0193c6a1f0b27c3e9d1a2b3c4d5eAB12",
            branch,
            commit_sha: sha,
        }
    }

    fn fqdns(domains: &[Domain]) -> Vec<(&str, Sticky)> {
        domains
            .iter()
            .map(|d| (d.fqdn.as_str(), d.sticky))
            .collect()
    }

    #[test]
    fn every_kind_for_production() {
        let d = generate(&input("production", "main", "8F3A2b19c0ffee"));
        assert_eq!(
            fqdns(&d),
            vec![
                ("shop-git-8f3a2b1-ab12-acme.slipway.localhost", Sticky::None),
                ("shop-git-main-acme.slipway.localhost", Sticky::Branch),
                (
                    "shop-production-acme.slipway.localhost",
                    Sticky::Environment
                ),
                ("shop-acme.slipway.localhost", Sticky::Live),
            ]
        );
    }

    #[test]
    fn preview_has_no_live_domain_and_no_sha_means_no_commit_domain() {
        let d = generate(&input("preview", "feature/login", ""));
        assert_eq!(
            fqdns(&d),
            vec![
                (
                    "shop-git-feature-login-acme.slipway.localhost",
                    Sticky::Branch
                ),
                ("shop-preview-acme.slipway.localhost", Sticky::Environment),
            ]
        );
    }

    #[test]
    fn a_sha_shorter_than_7_is_used_whole() {
        let d = generate(&input("preview", "", "abc"));
        assert_eq!(d[0].fqdn, "shop-git-abc-ab12-acme.slipway.localhost");
    }

    #[test]
    fn branch_slugs() {
        let cases = [
            ("main", "main"),
            ("  Feature/Login-Page  ", "feature-login-page"),
            ("fix__double--dash", "fix-double-dash"),
            ("UPPER case\tTabs", "upper-case-tabs"),
            ("héllo wörld", "h-llo-w-rld"),
            ("日本語", ""),
            ("!!!///---", ""),
            ("", ""),
            ("-leading-and-trailing-", "leading-and-trailing"),
            ("release/v1.2.3", "release-v1-2-3"),
        ];
        for (branch, slug) in cases {
            assert_eq!(branch_slug(branch), slug, "{branch:?}");
        }
    }

    #[test]
    fn an_empty_branch_slug_gets_no_branch_domain() {
        for branch in ["", "   ", "日本語", "???"] {
            let d = generate(&input("preview", branch, ""));
            assert!(d.iter().all(|d| d.sticky != Sticky::Branch), "{branch:?}");
        }
    }

    #[test]
    fn long_labels_are_cut_to_63_with_a_hash() {
        let long = "a-very-long-branch-name-that-keeps-going-and-going-past-any-sane-limit";
        let d = generate(&input("preview", long, ""));
        let label = d[0].fqdn.split('.').next().unwrap();
        assert_eq!(label.len(), 63, "{label}");
        let full = format!("shop-git-{long}-acme");
        let hash: String = Sha256::digest(full.as_bytes())
            .iter()
            .take(3)
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(label.ends_with(&format!("-{hash}")), "{label}");
        assert!(label.starts_with("shop-git-a-very-long"));
        // Two long names differing only past the cut stay distinct.
        let other = generate(&input("preview", &format!("{long}-2"), ""));
        assert_ne!(d[0].fqdn, other[0].fqdn);
        // A cut that lands on '-' does not leave "--".
        assert!(!fit_label(&format!("{}-{}", "x".repeat(55), "y".repeat(20))).contains("--"));
        // Exactly 63 is kept as is.
        assert_eq!(fit_label(&"b".repeat(63)), "b".repeat(63));
    }

    #[test]
    fn labels_are_always_valid_dns_labels() {
        let mut odd = input("production", "main", "abcdef1");
        odd.deployment_id = "dep_1";
        odd.project_slug = "My_Shop";
        for d in generate(&odd) {
            validate_fqdn(&d.fqdn).unwrap();
        }
        assert_eq!(
            generate(&odd)[0].fqdn,
            "my-shop-git-abcdef1-ep-1-acme.slipway.localhost"
        );
        assert_eq!(fit_label("--a__b--"), "a-b");
    }

    #[test]
    fn the_deployment_suffix_is_deterministic() {
        assert_eq!(deployment_suffix("dep_XYZ9"), "xyz9");
        assert_eq!(deployment_suffix("ab"), "ab");
        let a = generate(&input("preview", "", "abcdef1"));
        let b = generate(&input("preview", "", "abcdef1"));
        assert_eq!(a, b);
    }

    #[test]
    fn local_hosts() {
        let apex = "slipway.localhost";
        for host in [
            "localhost",
            "127.0.0.1",
            "shop.local",
            "a.b.test",
            "LOCALHOST.",
        ] {
            assert!(is_local_host(host, apex), "{host}");
        }
        for host in [
            "shop-acme.slipway.localhost",
            "slipway.localhost",
            "example.com",
            "localhost.example.com",
        ] {
            assert!(!is_local_host(host, apex), "{host}");
        }
        // The apex counts as non-local even when it would match a local rule.
        assert!(!is_local_host("shop-acme.dev.test", "dev.test"));
        assert!(is_local_host("other.test", "dev.test"));
    }

    #[test]
    fn fqdn_validation() {
        for ok in [
            "a.b",
            "shop-acme.slipway.localhost",
            "x",
            &format!("{}.io", "a".repeat(63)),
        ] {
            assert!(validate_fqdn(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A.b",
            "a..b",
            "-a.b",
            "a-.b",
            "a_b.c",
            "a.b.",
            &format!("{}.io", "a".repeat(64)),
            "a b",
        ] {
            assert!(validate_fqdn(bad).is_err(), "{bad}");
        }
    }

    fn separated<'a>(env: &'a str, branch: &'a str, sha: &'a str) -> DomainInput<'a> {
        DomainInput {
            scheme: Scheme::Separated,
            ..input(env, branch, sha)
        }
    }

    #[test]
    fn separated_spells_every_kind_with_double_dashes() {
        let d = generate(&separated("production", "Feature/Login", "8F3A2b19c0ffee"));
        assert_eq!(
            fqdns(&d),
            vec![
                (
                    "shop--git-8f3a2b1--ab12--acme.slipway.localhost",
                    Sticky::None
                ),
                (
                    "shop--git-feature-login--acme.slipway.localhost",
                    Sticky::Branch
                ),
                (
                    "shop--production--acme.slipway.localhost",
                    Sticky::Environment
                ),
                ("shop--acme.slipway.localhost", Sticky::Live),
            ]
        );
        for d in &d {
            validate_fqdn(&d.fqdn).unwrap();
        }
        assert_eq!(
            fqdns(&environment_domains(&separated(
                "production",
                "main",
                "abc1234"
            ))),
            vec![
                (
                    "shop--production--acme.slipway.localhost",
                    Sticky::Environment
                ),
                ("shop--acme.slipway.localhost", Sticky::Live),
            ]
        );
    }

    /// What one generated domain stands for: two different ones must never share a name.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owner {
        Live(String, String),
        Environment(String, String, String),
        Branch(String, String, String),
        Commit(String, String, String, String),
    }

    /// Every domain of every combination of awkward slugs, with what it stands for; the
    /// names two owners share.
    fn collisions(scheme: Scheme) -> Vec<(String, Owner, Owner)> {
        let workspaces = ["acme", "production-acme", "x-acme", "a"];
        let projects = [
            "shop",
            "shop-production",
            "shop-git",
            "shop-git-main",
            "shop-x",
            "x",
        ];
        let environments = [
            "production",
            "staging",
            "preview",
            "x",
            "production-acme",
            "git",
            "main",
            "git-main",
        ];
        let branches = ["main", "x", "git-main", "production", "feature/a", "acme"];
        let deployments = ["dep_0000ab12", "dep_0000cd34"];
        let mut seen: std::collections::HashMap<String, Owner> = Default::default();
        let mut out = Vec::new();
        for ws in workspaces {
            for project in projects {
                for env in environments {
                    if scheme == Scheme::Separated
                        && reserved_slug(SlugKind::Environment, env).is_some()
                    {
                        continue;
                    }
                    for branch in branches {
                        for dep in deployments {
                            let input = DomainInput {
                                scheme,
                                apex: "apex",
                                workspace_slug: ws,
                                project_slug: project,
                                environment_slug: env,
                                deployment_id: dep,
                                branch,
                                commit_sha: "abcdef1",
                            };
                            let (w, p) = (ws.to_string(), project.to_string());
                            for d in generate(&input) {
                                let owner = match d.sticky {
                                    Sticky::Live => Owner::Live(w.clone(), p.clone()),
                                    Sticky::Environment => {
                                        Owner::Environment(w.clone(), p.clone(), env.into())
                                    }
                                    Sticky::Branch => {
                                        Owner::Branch(w.clone(), p.clone(), branch_slug(branch))
                                    }
                                    Sticky::None => Owner::Commit(
                                        w.clone(),
                                        p.clone(),
                                        "abcdef1".into(),
                                        deployment_suffix(dep),
                                    ),
                                };
                                match seen.get(&d.fqdn) {
                                    Some(first) if *first != owner => {
                                        out.push((d.fqdn.clone(), first.clone(), owner))
                                    }
                                    Some(_) => {}
                                    None => {
                                        seen.insert(d.fqdn, owner);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn separated_domains_never_collide_where_joined_ones_do() {
        let joined = collisions(Scheme::Joined);
        assert!(
            joined
                .iter()
                .any(|(fqdn, ..)| fqdn == "shop-production-acme.apex"),
            "the issue's example: {joined:?}"
        );
        assert_eq!(collisions(Scheme::Separated), vec![]);
    }

    /// Fuzz target of the domain rules (seeded: `SLIPWAY_FUZZ_SEED`, `SLIPWAY_FUZZ_ITERATIONS`):
    /// random slugs, branches, commits and deployment ids always give valid host names, and
    /// with separated domains two different owners never share one.
    #[test]
    fn random_inputs_give_valid_host_names_that_never_collide() {
        let (mut rng, seed) = crate::seeded::Rng::from_env("SLIPWAY_FUZZ_SEED", 19);
        let slug_chars = ["a", "b", "x", "0", "9", "-", "git", "xn", "production"];
        let branch_chars = ["a", "/", "-", "_", " ", "é", "日", "\n", "Z", "9", "."];
        let mut seen: std::collections::HashMap<String, Owner> = Default::default();
        for case in 0..crate::seeded::iterations(20_000) {
            let slug = |rng: &mut crate::seeded::Rng, kind| loop {
                let long = rng.below(10) == 0;
                let len = 1 + rng.below(if long { 70 } else { 12 });
                let s = rng.string(&slug_chars, len);
                let valid = s.len() <= 63 && !s.starts_with('-') && !s.ends_with('-');
                if valid && reserved_slug(kind, &s).is_none() {
                    return s;
                }
            };
            let (ws, project, env) = (
                slug(&mut rng, SlugKind::Workspace),
                slug(&mut rng, SlugKind::Project),
                slug(&mut rng, SlugKind::Environment),
            );
            let long = rng.below(10) == 0;
            let branch_len = rng.below(if long { 200 } else { 10 });
            let branch = rng.string(&branch_chars, branch_len);
            let sha: String = format!("{:016x}", rng.next_u64());
            let dep = format!("dep_{:08x}", rng.next_u64() as u32);
            let input = DomainInput {
                scheme: Scheme::Separated,
                apex: "apex",
                workspace_slug: &ws,
                project_slug: &project,
                environment_slug: &env,
                deployment_id: &dep,
                branch: &branch,
                commit_sha: &sha,
            };
            for d in generate(&input) {
                if let Err(e) = validate_fqdn(&d.fqdn) {
                    panic!("seed {seed}, case {case}: {e} from {input:?}");
                }
                let owner = match d.sticky {
                    Sticky::Live => Owner::Live(ws.clone(), project.clone()),
                    Sticky::Environment => {
                        Owner::Environment(ws.clone(), project.clone(), env.clone())
                    }
                    Sticky::Branch => {
                        Owner::Branch(ws.clone(), project.clone(), branch_slug(&branch))
                    }
                    Sticky::None => Owner::Commit(
                        ws.clone(),
                        project.clone(),
                        sha[..7].to_string(),
                        deployment_suffix(&dep),
                    ),
                };
                match seen.get(&d.fqdn) {
                    Some(first) if *first != owner => {
                        panic!(
                            "seed {seed}, case {case}: {} is {first:?} and {owner:?}",
                            d.fqdn
                        )
                    }
                    _ => {
                        seen.insert(d.fqdn, owner);
                    }
                }
            }
        }
    }

    #[test]
    fn reserved_slugs() {
        assert!(reserved_slug(SlugKind::Workspace, "ac--me").is_some());
        assert!(reserved_slug(SlugKind::Project, "xn").is_some());
        assert!(reserved_slug(SlugKind::Project, "xn-a").is_none());
        assert!(reserved_slug(SlugKind::Environment, "git-main").is_some());
        assert!(reserved_slug(SlugKind::Environment, "git").is_none());
        assert!(reserved_slug(SlugKind::Project, "git-main").is_none());
        assert!(reserved_slug(SlugKind::Environment, "staging").is_none());
    }

    #[test]
    fn schemes_round_trip_through_the_database() {
        for scheme in [Scheme::Joined, Scheme::Separated] {
            assert_eq!(Scheme::from_db(scheme.to_db()), Some(scheme));
        }
        assert_eq!(Scheme::from_db(7), None);
    }

    #[test]
    fn sticky_round_trips() {
        for &s in Sticky::ALL {
            assert_eq!(s.as_str().parse(), Ok(s));
        }
        assert!("sometimes".parse::<Sticky>().is_err());
    }
}
