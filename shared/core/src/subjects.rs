//! Every NATS subject Slipway serves, requests or publishes on (API.md "Subjects"), spelled
//! once: services, the CLI and the tests take them from here.

/// A request/reply endpoint whose subject ends in the key it acts on (a deployment or a
/// project id): served on [`Keyed::all`], requested on [`Keyed::of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keyed(&'static str);

impl Keyed {
    pub fn of(self, key: &str) -> String {
        format!("{}.{key}", self.0)
    }

    /// The subject a service subscribes to: every key.
    pub fn all(self) -> String {
        format!("{}.*", self.0)
    }
}

/// `slipway-deploy`, project endpoints.
pub mod project {
    pub const CREATE_WORKSPACE: &str = "slipway.project.v1.create_workspace";
    pub const CREATE_PROJECT: &str = "slipway.project.v1.create_project";
    pub const CREATE_ENVIRONMENT: &str = "slipway.project.v1.create_environment";
    pub const GET_PROJECT: &str = "slipway.project.v1.get_project";
    pub const LIST_WORKSPACES: &str = "slipway.project.v1.list_workspaces";
    pub const LIST_PROJECTS: &str = "slipway.project.v1.list_projects";
    pub const SCALE_ENVIRONMENT: &str = "slipway.project.v1.scale_environment";
    pub const SET_VARIABLES: &str = "slipway.project.v1.set_environment_variables";
    pub const UNSET_VARIABLES: &str = "slipway.project.v1.unset_environment_variables";
    pub const LIST_VARIABLES: &str = "slipway.project.v1.list_environment_variables";
}

/// `slipway-deploy`, deployment and workflow endpoints.
pub mod deploy {
    pub const CREATE_DEPLOYMENT: &str = "slipway.deploy.v1.create_deployment";
    pub const GET_DEPLOYMENT: &str = "slipway.deploy.v1.get_deployment";
    pub const LIST_DEPLOYMENTS: &str = "slipway.deploy.v1.list_deployments";
    pub const ROLLBACK: &str = "slipway.deploy.v1.rollback";
    pub const PROMOTE: &str = "slipway.deploy.v1.promote";
    pub const SCALE_DOWN_IDLE_PREVIEWS: &str = "slipway.deploy.v1.scale_down_idle_previews";
    pub const GET_WORKFLOW: &str = "slipway.deploy.v1.get_workflow";
    pub const WAKE_DEPLOYMENT: &str = "slipway.deploy.v1.wake_deployment";
    pub const ARCHIVE_DEPLOYMENT: &str = "slipway.deploy.v1.archive_deployment";
}

/// `slipway-deployment` (the deployment actor), keyed by deployment id.
pub mod deployment {
    use super::Keyed;

    pub const SCHEDULE: Keyed = Keyed("slipway.deployment.v1.schedule_desired_state_change");
    pub const CLEAR: Keyed = Keyed("slipway.deployment.v1.clear_scheduled_state_changes");
    pub const GET_STATE: Keyed = Keyed("slipway.deployment.v1.get_state");
}

/// `slipway-routing`, keyed by project id.
pub mod routing {
    use super::Keyed;

    pub const ASSIGN: Keyed = Keyed("slipway.routing.v1.assign_frontline_routes");
    pub const LIST: Keyed = Keyed("slipway.routing.v1.list_routes");
    pub const ENSURE: Keyed = Keyed("slipway.routing.v1.ensure_routes");
    pub const REMOVE: Keyed = Keyed("slipway.routing.v1.remove_routes");
}

/// The micro-service name a region's agent announces itself as: `slipway-krane-<region>`.
pub fn agent_service(region: &str) -> String {
    format!("slipway-krane-{region}")
}

/// `slipway-edge`: one endpoint per edge, keyed by its micro-service id.
pub mod edge {
    use super::Keyed;

    pub const STATS: Keyed = Keyed("slipway.edge.v1.stats");
}

/// Lifecycle events on `SLIPWAY_EVENTS`: `slipway.events.<project>.<deployment>.<type>`.
pub mod events {
    pub fn event(project_id: &str, deployment_id: &str, kind: &str) -> String {
        format!("slipway.events.{project_id}.{deployment_id}.{kind}")
    }

    /// Every event of one deployment.
    pub fn of_deployment(project_id: &str, deployment_id: &str) -> String {
        format!("slipway.events.{project_id}.{deployment_id}.>")
    }

    /// Every event of one project.
    pub fn of_project(project_id: &str) -> String {
        format!("slipway.events.{project_id}.>")
    }
}

/// Output lines on `SLIPWAY_LOGS`: a deployment's build, and each of its instances.
pub mod logs {
    /// What a build of `deployment_id` printed.
    pub const BUILD: &str = "build";

    /// Lines of `source` ([`BUILD`] or an instance id) of `deployment_id`.
    pub fn of(deployment_id: &str, source: &str) -> String {
        format!("slipway.logs.{deployment_id}.{source}")
    }

    /// Every line of one deployment.
    pub fn of_deployment(deployment_id: &str) -> String {
        format!("slipway.logs.{deployment_id}.>")
    }
}

/// Message schedules and what they fire into, on `SLIPWAY_TIMERS`.
pub mod timers {
    /// The prefix of every deployment's standby/archive schedule.
    pub const DEPLOYMENT_SCHEDULE_PREFIX: &str = "slipway.timers.schedule.deployment.";
    pub const SCALE_DOWN_SCHEDULE: &str = "slipway.timers.schedule.cron.scale_down_idle_previews";
    pub const SCALE_DOWN_FIRED: &str = "slipway.timers.fired.cron.scale_down_idle_previews";

    pub fn deployment_schedule(deployment_id: &str) -> String {
        format!("{DEPLOYMENT_SCHEDULE_PREFIX}{deployment_id}")
    }

    pub fn deployment_fired(deployment_id: &str) -> String {
        format!("slipway.timers.fired.deployment.{deployment_id}")
    }
}

/// A deployment's traffic reports on `SLIPWAY_TRAFFIC`.
pub fn traffic(deployment_id: &str) -> String {
    format!("slipway.traffic.{deployment_id}")
}

/// An edge's heartbeat on `SLIPWAY_TRAFFIC` (no deployment id is `edge`).
pub fn edge_heartbeat(edge_id: &str) -> String {
    format!("{EDGE_HEARTBEATS_PREFIX}{edge_id}")
}

/// Where every edge's heartbeat goes.
pub const EDGE_HEARTBEATS_PREFIX: &str = "slipway.traffic.edge.";

/// A workflow's invocation on `SLIPWAY_WORKFLOWS`.
pub fn workflow(kind: &str, workflow_id: &str) -> String {
    format!("slipway.workflows.{kind}.{workflow_id}")
}
