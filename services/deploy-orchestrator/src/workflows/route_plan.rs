//! Step 9's decision, without I/O: which of a deploy's generated routes to create and which
//! existing routes it takes over (BEHAVIOUR.md "Deploy", "Domains").

use slipway_core::{
    domains::{Domain, Sticky},
    state::PRODUCTION_ENVIRONMENT,
};
use slipway_store::Route;

/// Whether a deploy takes the project's live domain and pointer: production, and the project
/// is not pinned by a rollback.
pub(crate) fn takes_live(environment_slug: &str, project_rolled_back: bool) -> bool {
    environment_slug == PRODUCTION_ENVIRONMENT && !project_rolled_back
}

/// What the plan is made of.
pub(crate) struct Inputs<'a> {
    pub project_id: &'a str,
    pub take_live: bool,
    /// The deployment's generated domains.
    pub generated: &'a [Domain],
    /// The stored routes whose FQDN is one of `generated` (of any project).
    pub existing: &'a [Route],
    /// The stored routes of the deployment's environment.
    pub environment_routes: &'a [Route],
}

/// The decision: routes to create, as (fqdn, sticky), ids of routes to move here, and the
/// per-commit or per-branch domains left out because another project holds them.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Decision {
    pub create: Vec<(String, Sticky)>,
    pub to_move: Vec<String>,
    pub taken: Vec<String>,
}

/// The per-branch route (wherever it was created), every environment-sticky route of the
/// environment (custom ones included), and the live routes only when the deploy takes live.
/// A per-commit or per-branch FQDN another project holds (only possible for projects with
/// joined domains, or a cut long name's hash) is left out: the deploy goes on without it. An
/// environment or live FQDN another project holds is "created" anyway: the commit refuses it
/// with a conflict, which fails the deploy with that reason (environment creation claims
/// those names, so this only happens to joined domains claimed before claims existed).
pub(crate) fn decide(i: &Inputs<'_>) -> Decision {
    let wanted = |sticky: Sticky, generated_here: bool| match sticky {
        Sticky::Branch => generated_here,
        Sticky::Environment => true,
        Sticky::Live => i.take_live,
        Sticky::None => false,
    };
    let mut out = Decision::default();
    for d in i.generated {
        match i.existing.iter().find(|r| r.fqdn == d.fqdn) {
            Some(r) if r.project_id != i.project_id => match d.sticky {
                Sticky::None | Sticky::Branch => out.taken.push(d.fqdn.clone()),
                Sticky::Environment | Sticky::Live => out.create.push((d.fqdn.clone(), d.sticky)),
            },
            Some(r) if wanted(r.sticky, true) => out.to_move.push(r.id.clone()),
            Some(_) => {}
            None if d.sticky != Sticky::Live || i.take_live => {
                out.create.push((d.fqdn.clone(), d.sticky))
            }
            None => {}
        }
    }
    for r in i.environment_routes {
        if wanted(r.sticky, false) && !out.to_move.contains(&r.id) {
            out.to_move.push(r.id.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(fqdn: &str, sticky: Sticky) -> Domain {
        Domain {
            fqdn: fqdn.into(),
            sticky,
        }
    }

    fn route(id: &str, fqdn: &str, sticky: Sticky, project: &str) -> Route {
        Route {
            id: id.into(),
            fqdn: fqdn.into(),
            sticky,
            project_id: project.into(),
            environment_id: "env".into(),
            deployment_id: "dep_old".into(),
            version: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn generated() -> Vec<Domain> {
        vec![
            domain("c.apex", Sticky::None),
            domain("b.apex", Sticky::Branch),
            domain("e.apex", Sticky::Environment),
            domain("l.apex", Sticky::Live),
        ]
    }

    #[test]
    fn a_first_production_deploy_creates_every_route() {
        let generated = generated();
        let d = decide(&Inputs {
            project_id: "p",
            take_live: true,
            generated: &generated,
            existing: &[],
            environment_routes: &[],
        });
        let fqdns: Vec<&str> = d.create.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fqdns, ["c.apex", "b.apex", "e.apex", "l.apex"]);
        assert!(d.to_move.is_empty());
    }

    #[test]
    fn a_pinned_project_keeps_its_live_routes_where_they_are() {
        let generated = generated();
        let existing = [
            route("r_b", "b.apex", Sticky::Branch, "p"),
            route("r_e", "e.apex", Sticky::Environment, "p"),
            route("r_l", "l.apex", Sticky::Live, "p"),
        ];
        let d = decide(&Inputs {
            project_id: "p",
            take_live: takes_live("production", true),
            generated: &generated,
            existing: &existing,
            environment_routes: &existing,
        });
        assert_eq!(d.create, [("c.apex".to_string(), Sticky::None)]);
        assert_eq!(d.to_move, ["r_b", "r_e"]);
        // Not pinned: the live route moves too; an absent live domain is created.
        let d = decide(&Inputs {
            project_id: "p",
            take_live: takes_live("production", false),
            generated: &generated,
            existing: &existing[..2],
            environment_routes: &existing[..2],
        });
        assert!(d.create.contains(&("l.apex".to_string(), Sticky::Live)));
        assert_eq!(d.to_move, ["r_b", "r_e"]);
    }

    #[test]
    fn only_this_branch_and_every_environment_route_move() {
        let generated = generated();
        let stored = [
            route("r_other_branch", "x.apex", Sticky::Branch, "p"),
            route("r_custom", "shop.example", Sticky::Environment, "p"),
            route("r_commit", "old-commit.apex", Sticky::None, "p"),
        ];
        let d = decide(&Inputs {
            project_id: "p",
            take_live: false,
            generated: &generated,
            existing: &[],
            environment_routes: &stored,
        });
        assert_eq!(d.to_move, ["r_custom"]);
        assert!(!d.create.iter().any(|(_, s)| *s == Sticky::Live));
    }

    #[test]
    fn another_projects_domain_is_left_to_the_commit_to_refuse() {
        let generated = generated();
        let existing = [route("r_x", "e.apex", Sticky::Environment, "other")];
        let d = decide(&Inputs {
            project_id: "p",
            take_live: false,
            generated: &generated,
            existing: &existing,
            environment_routes: &[],
        });
        assert!(d
            .create
            .contains(&("e.apex".to_string(), Sticky::Environment)));
        assert!(d.to_move.is_empty());
    }

    #[test]
    fn another_projects_commit_or_branch_domain_is_left_out() {
        let generated = generated();
        let existing = [
            route("r_c", "c.apex", Sticky::Live, "other"),
            route("r_b", "b.apex", Sticky::Environment, "other"),
        ];
        let d = decide(&Inputs {
            project_id: "p",
            take_live: true,
            generated: &generated,
            existing: &existing,
            environment_routes: &[],
        });
        assert_eq!(d.taken, ["c.apex", "b.apex"]);
        let created: Vec<&str> = d.create.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(created, ["e.apex", "l.apex"]);
    }

    #[test]
    fn only_production_takes_live() {
        assert!(takes_live("production", false));
        assert!(!takes_live("production", true));
        assert!(!takes_live("preview", false));
        assert!(!takes_live("staging", false));
    }
}
