//! The status vocabulary, exactly as the original spells it (oakestra-core.md §2.4).

use serde::{Deserialize, Serialize};

/// Status of a service or of one of its instances.
///
/// ```text
/// REQUESTED ─▶ CLUSTER_SCHEDULED ─▶ NODE_SCHEDULED ─▶ CREATING ─▶ RUNNING ─▶ COMPLETED | DEAD | FAILED
///     │                │                  │
///     └────────────────┴──────────────────┴─▶ negative scheduling statuses (retried when capacity appears)
/// any ─▶ UNDEPLOYED
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Status {
    #[serde(rename = "REQUESTED")]
    Requested,
    #[serde(rename = "CLUSTER_SCHEDULED")]
    ClusterScheduled,
    #[serde(rename = "NODE_SCHEDULED")]
    NodeScheduled,
    #[serde(rename = "CREATING")]
    Creating,
    #[serde(rename = "CREATED")]
    Created,
    #[serde(rename = "RUNNING")]
    Running,
    #[serde(rename = "FAILED")]
    Failed,
    #[serde(rename = "DEAD")]
    Dead,
    #[serde(rename = "COMPLETED")]
    Completed,
    #[serde(rename = "UNDEPLOYED")]
    Undeployed,
    #[serde(rename = "TargetClusterNotFound")]
    TargetClusterNotFound,
    #[serde(rename = "TargetClusterNotActive")]
    TargetClusterNotActive,
    #[serde(rename = "TargetClusterNoCapacity")]
    TargetClusterNoCapacity,
    #[serde(rename = "NoActiveClusterWithCapacity")]
    NoActiveClusterWithCapacity,
    #[serde(rename = "NO_WORKER_CAPACITY")]
    NoWorkerCapacity,
    #[serde(rename = "NO_QUALIFIED_WORKER_FOUND")]
    NoQualifiedWorkerFound,
    #[serde(rename = "NO_NODE_FOUND")]
    NoNodeFound,
}

impl Status {
    /// The scheduler could not place the instance (yet). These are states, not errors: the
    /// request stays and is tried again when capacity appears.
    pub fn is_negative_scheduling(self) -> bool {
        matches!(
            self,
            Status::TargetClusterNotFound
                | Status::TargetClusterNotActive
                | Status::TargetClusterNoCapacity
                | Status::NoActiveClusterWithCapacity
                | Status::NoWorkerCapacity
                | Status::NoQualifiedWorkerFound
                | Status::NoNodeFound
        )
    }

    /// The exact wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Requested => "REQUESTED",
            Status::ClusterScheduled => "CLUSTER_SCHEDULED",
            Status::NodeScheduled => "NODE_SCHEDULED",
            Status::Creating => "CREATING",
            Status::Created => "CREATED",
            Status::Running => "RUNNING",
            Status::Failed => "FAILED",
            Status::Dead => "DEAD",
            Status::Completed => "COMPLETED",
            Status::Undeployed => "UNDEPLOYED",
            Status::TargetClusterNotFound => "TargetClusterNotFound",
            Status::TargetClusterNotActive => "TargetClusterNotActive",
            Status::TargetClusterNoCapacity => "TargetClusterNoCapacity",
            Status::NoActiveClusterWithCapacity => "NoActiveClusterWithCapacity",
            Status::NoWorkerCapacity => "NO_WORKER_CAPACITY",
            Status::NoQualifiedWorkerFound => "NO_QUALIFIED_WORKER_FOUND",
            Status::NoNodeFound => "NO_NODE_FOUND",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_spelling_round_trips() {
        for s in [
            Status::Requested,
            Status::NodeScheduled,
            Status::Running,
            Status::NoActiveClusterWithCapacity,
            Status::NoWorkerCapacity,
        ] {
            let json = serde_json::to_string(&s).map_err(|e| e.to_string());
            assert_eq!(json, Ok(format!("\"{}\"", s.as_str())));
            let back = json.and_then(|j| serde_json::from_str::<Status>(&j).map_err(|e| e.to_string()));
            assert_eq!(back, Ok(s));
        }
        assert!(Status::NoWorkerCapacity.is_negative_scheduling());
        assert!(!Status::Running.is_negative_scheduling());
    }
}
