//! Deployment states (BEHAVIOUR.md "Records").

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::ApiError;

/// What a deployment should be doing. `standby` and `archived` stop its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    Running,
    Standby,
    Archived,
}

impl DesiredState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Standby => "standby",
            Self::Archived => "archived",
        }
    }

    /// The topology status the region agents act on.
    pub fn topology_status(self) -> TopologyStatus {
        match self {
            Self::Running => TopologyStatus::Started,
            Self::Standby | Self::Archived => TopologyStatus::Stopped,
        }
    }
}

impl fmt::Display for DesiredState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DesiredState {
    type Err = ApiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "running" => Ok(Self::Running),
            "standby" => Ok(Self::Standby),
            "archived" => Ok(Self::Archived),
            other => Err(ApiError::invalid_argument(format!(
                "state {other:?} is not one of running, standby, archived"
            ))),
        }
    }
}

/// Desired status of one (deployment, region) topology row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologyStatus {
    Started,
    Stopped,
}

impl TopologyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Stopped => "stopped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_the_three_states() {
        assert_eq!("standby".parse::<DesiredState>(), Ok(DesiredState::Standby));
        let err = "Standby".parse::<DesiredState>().unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.message.contains("Standby"));
    }
}
