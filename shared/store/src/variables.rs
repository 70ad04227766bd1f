//! Environment variables: set per environment, snapshotted into each deployment when it is
//! created (so a rollback or a wake runs the old build with its old variables), secret values
//! sealed at rest ([`crate::secrets`]) and opened only into the agents' desired documents.

use std::collections::BTreeMap;

use slipway_core::krane::DesiredDeployment;
use sqlx::Row;

use crate::{Deployment, Store, StoreError, Topology};

/// A value to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableValue {
    pub value: String,
    pub secret: bool,
}

/// A variable as listed: a secret's value is never returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    pub secret: bool,
    pub value: Option<String>,
}

/// An environment's variables as a deployment snapshots them: plain, and sealed secrets.
pub(crate) struct Snapshot {
    pub plain: BTreeMap<String, String>,
    pub sealed: BTreeMap<String, String>,
}

impl Store {
    /// Sets `variables` of the environment (replacing values of the same names) in one
    /// transaction; returns their names. Secrets are sealed first: without a key, nothing is
    /// written.
    pub async fn set_variables(
        &self,
        environment_id: &str,
        variables: &BTreeMap<String, VariableValue>,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut rows = Vec::with_capacity(variables.len());
        for (name, v) in variables {
            let stored = if v.secret {
                self.secrets()?.seal(name, &v.value)?
            } else {
                v.value.clone()
            };
            rows.push((name, stored, v.secret));
        }
        self.environment(environment_id).await?;
        let mut tx = self.begin().await?;
        for (name, value, secret) in &rows {
            sqlx::query(
                "INSERT INTO environment_variables (environment_id, name, value, secret, created_at_ms, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $5) \
                 ON CONFLICT (environment_id, name) DO UPDATE SET value = excluded.value, \
                 secret = excluded.secret, updated_at_ms = excluded.updated_at_ms",
            )
            .bind(environment_id)
            .bind(*name)
            .bind(value)
            .bind(i64::from(*secret))
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(variables.keys().cloned().collect())
    }

    /// Removes `names` from the environment; returns those it had.
    pub async fn unset_variables(
        &self,
        environment_id: &str,
        names: &[String],
    ) -> Result<Vec<String>, StoreError> {
        self.environment(environment_id).await?;
        let mut tx = self.begin().await?;
        let mut removed = Vec::new();
        for name in names {
            let done = sqlx::query(
                "DELETE FROM environment_variables WHERE environment_id = $1 AND name = $2",
            )
            .bind(environment_id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() > 0 {
                removed.push(name.clone());
            }
        }
        tx.commit().await?;
        Ok(removed)
    }

    /// The environment's variables by name; secrets without their values.
    pub async fn variables(&self, environment_id: &str) -> Result<Vec<Variable>, StoreError> {
        self.environment(environment_id).await?;
        let rows = sqlx::query(
            "SELECT name, value, secret FROM environment_variables WHERE environment_id = $1 ORDER BY name",
        )
        .bind(environment_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let secret = row.try_get::<i64, _>("secret")? != 0;
                Ok(Variable {
                    name: row.try_get("name")?,
                    secret,
                    value: if secret {
                        None
                    } else {
                        Some(row.try_get("value")?)
                    },
                })
            })
            .collect()
    }

    /// What a deployment created now copies, read inside its creating transaction.
    pub(crate) async fn snapshot(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        environment_id: &str,
    ) -> Result<Snapshot, StoreError> {
        let rows = sqlx::query(
            "SELECT name, value, secret FROM environment_variables WHERE environment_id = $1",
        )
        .bind(environment_id)
        .fetch_all(&mut **tx)
        .await?;
        let mut snapshot = Snapshot {
            plain: BTreeMap::new(),
            sealed: BTreeMap::new(),
        };
        for row in &rows {
            let (name, value): (String, String) = (row.try_get("name")?, row.try_get("value")?);
            if row.try_get::<i64, _>("secret")? != 0 {
                snapshot.sealed.insert(name, value);
            } else {
                snapshot.plain.insert(name, value);
            }
        }
        Ok(snapshot)
    }

    /// What a region agent should run for `deployment`, per its topology row: its plain
    /// variables and its secrets opened (the agents' desired documents are where they are
    /// used; only agents may read them).
    pub fn desired_for(
        &self,
        deployment: &Deployment,
        row: &Topology,
    ) -> Result<DesiredDeployment, StoreError> {
        let mut doc = deployment.desired_without_secrets(row);
        for (name, sealed) in &deployment.secret_env {
            let value = self.secrets()?.open(name, sealed)?;
            doc.env.insert(name.clone(), value);
        }
        Ok(doc)
    }
}
