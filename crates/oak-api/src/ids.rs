//! Generated identifiers. Names are labels; these are the keys.
//!
//! Ids are strings on the wire (the original uses Mongo ObjectIds, we use UUIDs). A path
//! segment that is not a known id is simply "not found", so parsing never fails.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// A fresh random id.
            pub fn generate() -> Self {
                Self(uuid::Uuid::new_v4().to_string())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
    };
}

id_type!(
    /// An application (`applicationID`).
    ApplicationId
);
id_type!(
    /// A service, also called microservice or job (`microserviceID`).
    ServiceId
);
id_type!(
    /// A user account.
    UserId
);
id_type!(
    /// An organization.
    OrganizationId
);
id_type!(
    /// A cluster orchestrator registered with the root.
    ClusterId
);
