//! BEHAVIOUR.md's rollback and promote validations, in its order, on what the store holds:
//! pure, so the endpoints (a 4xx before anything is written) and the workflows (again, under
//! the project lease) decide alike.

use slipway_core::{
    state::{DeploymentStatus, DesiredState},
    ApiError,
};
use slipway_store::{Deployment, Project};

/// What a valid promote does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum PromotePlan {
    /// The target is live on a rolled-back project: clear the pin, move nothing.
    ConfirmRollback,
    Move {
        route_ids: Vec<String>,
    },
    /// Its commit was applied before its run died (a resumed run): only the follow-ups
    /// remain; the commit, repeated, answers what it did.
    Repeat,
}

/// Rolling `project`'s live deployment `s` back to `t`, moving `route_ids` (the project's
/// live routes and the environment routes of `t`'s environment).
pub(crate) fn rollback(
    s: &Deployment,
    t: &Deployment,
    project: &Project,
    route_ids: &[String],
) -> Result<(), ApiError> {
    if s.project_id != t.project_id || s.environment_id != t.environment_id {
        return Err(ApiError::invalid_argument(format!(
            "{} and {} are not in the same project and environment",
            s.id, t.id
        )));
    }
    if project.live_deployment_id.as_deref() != Some(s.id.as_str()) {
        return Err(ApiError::invalid_argument(format!(
            "{} is not the live deployment of project {} (live: {})",
            s.id,
            project.id,
            project.live_deployment_id.as_deref().unwrap_or("none")
        )));
    }
    target_can_serve(t)?;
    if route_ids.is_empty() {
        return Err(ApiError::invalid_argument(format!(
            "project {} has no live or environment routes to move",
            project.id
        )));
    }
    Ok(())
}

/// Promoting `t` in `project`, whose live deployment is `live`, moving `route_ids`: a move,
/// or, for the live deployment of a rolled-back project, confirming the rollback. The target
/// must be of the live deployment's environment, whose routes a promote moves (a preview
/// build never goes live).
pub(crate) fn promote(
    t: &Deployment,
    project: &Project,
    live: Option<&Deployment>,
    route_ids: Vec<String>,
) -> Result<PromotePlan, ApiError> {
    target_can_serve(t)?;
    let Some(live) = live else {
        return Err(ApiError::invalid_argument(format!(
            "project {} has no live deployment",
            project.id
        )));
    };
    if live.environment_id != t.environment_id {
        return Err(ApiError::invalid_argument(format!(
            "{} is a deployment of environment {}; promote moves the routes of {}, the live deployment's",
            t.id, t.environment_slug, live.environment_slug
        )));
    }
    if live.id == t.id {
        if project.is_rolled_back {
            return Ok(PromotePlan::ConfirmRollback);
        }
        return Err(ApiError::invalid_argument(format!(
            "{} is already the live deployment of project {}",
            t.id, project.id
        )));
    }
    Ok(PromotePlan::Move { route_ids })
}

/// A target must be ready and not archived.
fn target_can_serve(t: &Deployment) -> Result<(), ApiError> {
    if t.status != DeploymentStatus::Ready {
        return Err(ApiError::invalid_argument(format!(
            "{} is {}, not ready",
            t.id, t.status
        )));
    }
    if t.desired_state == DesiredState::Archived {
        return Err(ApiError::invalid_argument(format!("{} is archived", t.id)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(id: &str, environment: &str, status: DeploymentStatus) -> Deployment {
        Deployment {
            id: id.into(),
            workspace_id: "ws".into(),
            project_id: "p".into(),
            environment_id: environment.into(),
            environment_slug: "production".into(),
            status,
            desired_state: DesiredState::Running,
            desired_state_nonce: None,
            image: "exec:true".into(),
            git_branch: String::new(),
            git_commit_sha: String::new(),
            git_commit_message: String::new(),
            git_commit_author_handle: String::new(),
            git_commit_author_avatar_url: String::new(),
            git_commit_timestamp_ms: None,
            key_auth_id: String::new(),
            command: vec![],
            env: Default::default(),
            secret_env: Default::default(),
            git_source: None,
            limits: Default::default(),
            port: 8080,
            sentinel_config: String::new(),
            openapi_spec: None,
            failure_reason: None,
            workflow_id: None,
            domains: vec![],
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn project(live: Option<&str>, rolled_back: bool) -> Project {
        Project {
            id: "p".into(),
            workspace_id: "ws".into(),
            slug: "shop".into(),
            name: "Shop".into(),
            default_branch: "main".into(),
            live_deployment_id: live.map(str::to_string),
            is_rolled_back: rolled_back,
            domain_scheme: Default::default(),
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn refused(result: Result<impl std::fmt::Debug, ApiError>) -> String {
        let e = result.expect_err("refused");
        assert_eq!(e.status(), 400, "{e:?}");
        e.message
    }

    #[test]
    fn rollback_checks_in_order() {
        let s = deployment("dep_s", "env", DeploymentStatus::Ready);
        let t = deployment("dep_t", "env", DeploymentStatus::Ready);
        let routes = ["r_live".to_string()];
        let live_s = project(Some("dep_s"), false);
        assert!(rollback(&s, &t, &live_s, &routes).is_ok());

        let other_env = deployment("dep_t", "env_2", DeploymentStatus::Ready);
        assert!(refused(rollback(&s, &other_env, &live_s, &routes)).contains("same project"));
        let live_t = project(Some("dep_t"), false);
        assert!(refused(rollback(&s, &t, &live_t, &routes)).contains("not the live deployment"));
        let pending = deployment("dep_t", "env", DeploymentStatus::Pending);
        assert!(refused(rollback(&s, &pending, &live_s, &routes)).contains("pending, not ready"));
        let mut archived = t.clone();
        archived.desired_state = DesiredState::Archived;
        assert!(refused(rollback(&s, &archived, &live_s, &routes)).contains("archived"));
        assert!(refused(rollback(&s, &t, &live_s, &[])).contains("no live or environment routes"));
        // The first rule that fails is the one reported.
        assert!(refused(rollback(&s, &pending, &live_t, &[])).contains("not the live deployment"));
    }

    #[test]
    fn promote_moves_confirms_or_refuses() {
        let t = deployment("dep_t", "env", DeploymentStatus::Ready);
        let s = deployment("dep_s", "env", DeploymentStatus::Ready);
        let routes = vec!["r_live".to_string()];
        let live_s = project(Some("dep_s"), false);
        assert_eq!(
            promote(&t, &live_s, Some(&s), routes.clone()).unwrap(),
            PromotePlan::Move {
                route_ids: routes.clone()
            }
        );
        let pinned_t = project(Some("dep_t"), true);
        assert_eq!(
            promote(&t, &pinned_t, Some(&t), routes.clone()).unwrap(),
            PromotePlan::ConfirmRollback
        );
        let live_t = project(Some("dep_t"), false);
        let already = refused(promote(&t, &live_t, Some(&t), routes.clone()));
        assert!(already.contains("already the live deployment"));
        let no_live = project(None, false);
        assert!(refused(promote(&t, &no_live, None, routes.clone())).contains("no live"));
        let failed = deployment("dep_t", "env", DeploymentStatus::Failed);
        let not_ready = refused(promote(&failed, &live_s, Some(&s), routes.clone()));
        assert!(not_ready.contains("failed, not ready"));
        // A preview build never goes live.
        let mut preview = deployment("dep_p", "env_preview", DeploymentStatus::Ready);
        preview.environment_slug = "preview".into();
        let other_env = refused(promote(&preview, &live_s, Some(&s), routes));
        assert!(other_env.contains("environment preview"), "{other_env}");
    }
}
