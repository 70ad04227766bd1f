//! `slipway.project.v1.{set,unset,list}_environment_variables`: an environment's variables,
//! which each deployment snapshots when it is created. Secret values are sealed by the store
//! and never returned.

use std::collections::BTreeMap;

use slipway_core::{ids, time::now_ms, ApiError};
use slipway_nats::Call;
use slipway_proto::v1::{
    EnvironmentVariable, ListEnvironmentVariablesReply, ListEnvironmentVariablesRequest,
    SetEnvironmentVariablesReply, SetEnvironmentVariablesRequest, UnsetEnvironmentVariablesReply,
    UnsetEnvironmentVariablesRequest,
};
use slipway_store::{Environment, VariableValue};

use crate::api::Api;

pub const MAX_NAME: usize = 256;
pub const MAX_VALUE: usize = 32 * 1024;
pub const MAX_PER_CALL: usize = 200;
/// Set by the agent for every instance: the port it must listen on.
const RESERVED: &[&str] = &["PORT"];

/// A POSIX-style variable name: a letter or `_`, then letters, digits or `_`.
fn validate_name(name: &str) -> Result<(), ApiError> {
    let mut bytes = name.bytes();
    let valid = name.len() <= MAX_NAME
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(ApiError::invalid_argument(format!(
            "variable name {name:?} must be a letter or _ followed by letters, digits or _ (at most {MAX_NAME})"
        )));
    }
    if RESERVED.contains(&name) {
        return Err(ApiError::invalid_argument(format!(
            "{name} is set by the region agent (the environment's port); it cannot be set"
        )));
    }
    Ok(())
}

fn validate_count(n: usize) -> Result<(), ApiError> {
    if n == 0 || n > MAX_PER_CALL {
        return Err(ApiError::invalid_argument(format!(
            "name 1 to {MAX_PER_CALL} variables"
        )));
    }
    Ok(())
}

impl Api {
    async fn environment_of(&self, project_id: &str, slug: &str) -> Result<Environment, ApiError> {
        ids::validate(ids::PROJECT, "project_id", project_id)?;
        if slug.is_empty() {
            return Err(ApiError::invalid_argument("environment_slug is required"));
        }
        Ok(self.store.environment_by_slug(project_id, slug).await?)
    }

    pub(crate) async fn set_variables(
        &self,
        call: Call<SetEnvironmentVariablesRequest>,
    ) -> Result<SetEnvironmentVariablesReply, ApiError> {
        let req = call.request;
        validate_count(req.variables.len())?;
        let mut variables = BTreeMap::new();
        for (name, v) in req.variables {
            validate_name(&name)?;
            if v.value.len() > MAX_VALUE || v.value.contains('\0') {
                return Err(ApiError::invalid_argument(format!(
                    "the value of {name} must be at most {MAX_VALUE} bytes, without NUL"
                )));
            }
            variables.insert(
                name,
                VariableValue {
                    value: v.value,
                    secret: v.secret,
                },
            );
        }
        let env = self
            .environment_of(&req.project_id, &req.environment_slug)
            .await?;
        let names = self
            .store
            .set_variables(&env.id, &variables, now_ms())
            .await?;
        tracing::info!(environment_id = %env.id, ?names, "variables set");
        Ok(SetEnvironmentVariablesReply { names })
    }

    pub(crate) async fn unset_variables(
        &self,
        call: Call<UnsetEnvironmentVariablesRequest>,
    ) -> Result<UnsetEnvironmentVariablesReply, ApiError> {
        let req = call.request;
        validate_count(req.names.len())?;
        for name in &req.names {
            validate_name(name)?;
        }
        let env = self
            .environment_of(&req.project_id, &req.environment_slug)
            .await?;
        let names = self.store.unset_variables(&env.id, &req.names).await?;
        tracing::info!(environment_id = %env.id, ?names, "variables unset");
        Ok(UnsetEnvironmentVariablesReply { names })
    }

    pub(crate) async fn list_variables(
        &self,
        call: Call<ListEnvironmentVariablesRequest>,
    ) -> Result<ListEnvironmentVariablesReply, ApiError> {
        let req = call.request;
        let env = self
            .environment_of(&req.project_id, &req.environment_slug)
            .await?;
        let variables = self
            .store
            .variables(&env.id)
            .await?
            .into_iter()
            .map(|v| EnvironmentVariable {
                name: v.name,
                secret: v.secret,
                value: v.value,
            })
            .collect();
        Ok(ListEnvironmentVariablesReply { variables })
    }
}
