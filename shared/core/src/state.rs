//! Deployment states (BEHAVIOUR.md "Records"), and the wire-string enums they are made with.

use crate::ApiError;

/// The environment whose deployments take the project's live domain and pointer.
pub const PRODUCTION_ENVIRONMENT: &str = "production";
/// The environment whose idle deployments are spun down (BEHAVIOUR.md "Idle previews").
pub const PREVIEW_ENVIRONMENT: &str = "preview";

/// A value that is not one of an enum's wire strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not one of {}", expected.join(", "))]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static [&'static str],
}

impl From<UnknownValue> for ApiError {
    fn from(e: UnknownValue) -> Self {
        ApiError::invalid_argument(e.to_string())
    }
}

/// An enum whose values travel as fixed lower-case strings (SQL columns, JSON, KV, subjects):
/// the one place each string is spelled. `as_str`, `Display`, `FromStr` and serde all use it.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident as $what:literal {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::state::UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err($crate::state::UnknownValue {
                        what: $what,
                        value: other.to_string(),
                        expected: &[$($text,)+],
                    }),
                }
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(::serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use wire_enum;

wire_enum! {
    /// What a deployment should be doing. `standby` and `archived` stop its instances.
    pub enum DesiredState as "state" {
        Running = "running",
        Standby = "standby",
        Archived = "archived",
    }
}

impl DesiredState {
    /// The topology status the region agents act on.
    pub fn topology_status(self) -> TopologyStatus {
        match self {
            Self::Running => TopologyStatus::Started,
            Self::Standby | Self::Archived => TopologyStatus::Stopped,
        }
    }
}

wire_enum! {
    /// Desired status of one (deployment, region) topology row.
    pub enum TopologyStatus as "topology status" {
        Started = "started",
        Stopped = "stopped",
    }
}

wire_enum! {
    /// Where a deployment is in its deploy (API.md `deployment.status`).
    pub enum DeploymentStatus as "deployment status" {
        Pending = "pending",
        Building = "building",
        Deploying = "deploying",
        Ready = "ready",
        Failed = "failed",
    }
}

wire_enum! {
    /// How a ready deployment's instances are doing, from its agents' latest reports (API.md
    /// `deployment.health`).
    pub enum Health as "health" {
        /// Every region runs its replicas.
        Healthy = "healthy",
        /// Some region runs fewer than its replicas (an instance restarting, say).
        Degraded = "degraded",
        /// An instance keeps exiting, even if it answers between exits.
        CrashLooping = "crash_looping",
        /// Nothing should run: the deployment is in standby or archived.
        Inactive = "inactive",
    }
}

/// What one region of a deployment runs, for [`Health::of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionRuns {
    pub wanted: u32,
    pub running: u32,
    pub crash_looping: bool,
}

impl Health {
    /// The health of a deployment in `status` and `desired` whose regions run `regions`;
    /// None until it is ready (its deploy tells how that goes).
    pub fn of(
        status: DeploymentStatus,
        desired: DesiredState,
        regions: impl IntoIterator<Item = RegionRuns>,
    ) -> Option<Health> {
        if status != DeploymentStatus::Ready {
            return None;
        }
        if desired != DesiredState::Running {
            return Some(Health::Inactive);
        }
        let mut health = Health::Healthy;
        for r in regions {
            if r.crash_looping {
                return Some(Health::CrashLooping);
            }
            if r.running < r.wanted {
                health = Health::Degraded;
            }
        }
        Some(health)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_the_three_states() {
        assert_eq!("standby".parse::<DesiredState>(), Ok(DesiredState::Standby));
        let err = ApiError::from("Standby".parse::<DesiredState>().unwrap_err());
        assert_eq!(err.status(), 400);
        assert!(err.message.contains("Standby"));
        assert!(err.message.contains("running, standby, archived"));
    }

    #[test]
    fn health_is_the_worst_region() {
        let runs = |wanted, running, crash_looping| RegionRuns {
            wanted,
            running,
            crash_looping,
        };
        let ready = DeploymentStatus::Ready;
        let running = DesiredState::Running;
        assert_eq!(Health::of(DeploymentStatus::Deploying, running, []), None);
        assert_eq!(
            Health::of(ready, DesiredState::Standby, [runs(2, 2, false)]),
            Some(Health::Inactive)
        );
        assert_eq!(
            Health::of(ready, running, [runs(2, 2, false), runs(1, 1, false)]),
            Some(Health::Healthy)
        );
        assert_eq!(
            Health::of(ready, running, [runs(2, 1, false), runs(1, 1, false)]),
            Some(Health::Degraded)
        );
        assert_eq!(
            Health::of(ready, running, [runs(2, 1, false), runs(1, 1, true)]),
            Some(Health::CrashLooping),
            "a crash loop is worse than a missing replica"
        );
    }

    #[test]
    fn every_wire_string_round_trips() {
        fn check<T>(all: &[T])
        where
            T: Copy + PartialEq + std::fmt::Debug + std::fmt::Display + std::str::FromStr,
            T: serde::Serialize + serde::de::DeserializeOwned,
            <T as std::str::FromStr>::Err: std::fmt::Debug,
        {
            for &v in all {
                let text = v.to_string();
                assert_eq!(text.parse::<T>().unwrap(), v);
                let json = serde_json::to_string(&v).unwrap();
                assert_eq!(json, format!("{text:?}"));
                assert_eq!(serde_json::from_str::<T>(&json).unwrap(), v);
            }
        }
        check(DesiredState::ALL);
        check(TopologyStatus::ALL);
        check(DeploymentStatus::ALL);
        check(Health::ALL);
        check(crate::domains::Sticky::ALL);
        check(crate::krane::InstanceStatus::ALL);
        check(crate::krane::Desired::ALL);
        assert!(serde_json::from_str::<DeploymentStatus>("\"Ready\"").is_err());
    }
}
