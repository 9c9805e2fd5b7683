//! The wire contract of the system: the SLA descriptor and its validation, ids, statuses, the
//! JSON shapes of the user API, and (later) every message between tiers.
//!
//! This crate does no I/O and does not depend on tokio: every tier, the client and the
//! simulator share it, so a type here means the same thing everywhere. Evolve it by adding
//! fields and messages, never by changing what an existing one means.

pub mod backoff;
pub mod error;
pub mod ids;
pub mod json;
pub mod ldp;
pub mod link;
pub mod model;
pub mod net;
pub mod node;
pub mod sla;
pub mod status;

pub use error::{ErrorBody, ErrorCode};
pub use ids::{ApplicationId, ClusterId, OrganizationId, ServiceId, UserId};
pub use status::Status;
