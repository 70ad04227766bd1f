//! The call to routing that is the commit point of deploy, rollback and promote: route moves
//! and the live pointer in one transaction.

use slipway_nats::client::request as request_reply;
use slipway_proto::v1::{
    AssignFrontlineRoutesReply, AssignFrontlineRoutesRequest, RemoveRoutesReply,
    RemoveRoutesRequest,
};
use slipway_workflow::StepError;

use crate::clients::CALL_TIMEOUT;

/// What a commit did to the live pointer (journaled as the commit step's result).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Committed {
    /// The deployment that was live before.
    pub previous: Option<String>,
    /// What earlier runs of this commit replaced as live, but `previous`: their follow-up
    /// may never have run, so they are settled too.
    #[serde(default, deserialize_with = "one_or_many")]
    pub replaced_earlier: Vec<String>,
    /// The fencing token the commit carried; the follow-up schedules carry it too.
    #[serde(default)]
    pub fencing_token: u64,
    /// The commit had been applied before (its run died before journaling it): nothing was
    /// written, and `previous` and `took_live` tell what the first application did.
    #[serde(default)]
    pub repeated: bool,
    /// Whether the commit moved the live pointer (read only when `repeated`: journals from
    /// before it was recorded lack it).
    #[serde(default)]
    pub took_live: bool,
    /// The project's live deployment after the commit.
    #[serde(default)]
    pub live_now: Option<String>,
}

/// `replaced_earlier` as journaled before it became a list (one or none).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<String>),
        One(Option<String>),
    }
    Ok(match serde::Deserialize::deserialize(d)? {
        OneOrMany::Many(many) => many,
        OneOrMany::One(one) => one.into_iter().collect(),
    })
}

/// Routing's client, for the commit.
#[derive(Clone)]
pub(crate) struct Routing {
    nats: async_nats::Client,
}

impl Routing {
    pub(crate) fn new(nats: async_nats::Client) -> Self {
        Self { nats }
    }

    /// The commit point of deploy, rollback and promote: routing creates `create` where
    /// missing, moves `route_ids` and applies `live`, in one transaction fenced by
    /// `fencing_token`; the reply tells the deployment that was live before.
    pub(crate) async fn commit(
        &self,
        project_id: &str,
        request: AssignFrontlineRoutesRequest,
    ) -> Result<Committed, StepError> {
        slipway_core::fault::point("commit.before_request");
        let fencing_token = request.fencing_token;
        let reply: AssignFrontlineRoutesReply = request_reply(
            &self.nats,
            slipway_core::subjects::routing::ASSIGN.of(project_id),
            &request,
            CALL_TIMEOUT,
        )
        .await?;
        Ok(Committed {
            previous: reply.previous_live_deployment_id,
            replaced_earlier: reply.replaced_earlier_deployment_ids,
            fencing_token,
            repeated: reply.repeated,
            took_live: reply.took_live,
            live_now: reply.live_deployment_id,
        })
    }

    /// Rollback's and promote's commit: `route_ids` move to `target` and the live pointer
    /// follows (`live`: "pin" or "take"), in one transaction fenced by `fencing_token`, as
    /// the commit of workflow `commit_id`.
    pub(crate) async fn move_traffic(
        &self,
        project_id: &str,
        target: &str,
        route_ids: &[String],
        fencing_token: u64,
        commit_id: &str,
        live: &str,
    ) -> Result<Committed, StepError> {
        let request = AssignFrontlineRoutesRequest {
            deployment_id: target.into(),
            route_ids: route_ids.to_vec(),
            fencing_token,
            commit_id: commit_id.into(),
            live: live.into(),
            ..Default::default()
        };
        self.commit(project_id, request).await
    }

    /// Removes the routes of `deployment_id` (in standby, about to be archived).
    pub(crate) async fn remove_routes(
        &self,
        project_id: &str,
        deployment_id: &str,
    ) -> Result<usize, StepError> {
        let reply: RemoveRoutesReply = request_reply(
            &self.nats,
            slipway_core::subjects::routing::REMOVE.of(project_id),
            &RemoveRoutesRequest {
                deployment_id: deployment_id.into(),
            },
            CALL_TIMEOUT,
        )
        .await?;
        Ok(reply.routes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Journals written before `replaced_earlier` became a list still replay.
    #[test]
    fn an_older_journaled_commit_still_decodes() {
        #[derive(serde::Serialize)]
        struct Before {
            previous: Option<String>,
            replaced_earlier: Option<String>,
        }
        for (old, want) in [(Some("dep_1"), vec!["dep_1".to_string()]), (None, vec![])] {
            let bytes = rmp_serde::to_vec_named(&Before {
                previous: Some("dep_0".into()),
                replaced_earlier: old.map(str::to_string),
            })
            .unwrap();
            let c: Committed = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(c.previous.as_deref(), Some("dep_0"));
            assert_eq!(c.replaced_earlier, want);
            assert_eq!(c.fencing_token, 0);
        }
    }
}
