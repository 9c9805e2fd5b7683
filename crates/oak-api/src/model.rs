//! JSON shapes of the user REST API, shared by the root (which serves them) and the client.
//!
//! Field names follow the original where clients read them (`applicationID`, `microserviceID`,
//! `instance_list`, `status`, `status_detail`, `userId`). Unknown fields in stored descriptors
//! are returned verbatim through the flattened `spec`/`extra` maps.

use crate::ids::{ApplicationId, ClusterId, OrganizationId, ServiceId, UserId};
use crate::sla::MicroserviceSpec;
use crate::status::Status;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The four roles of the original. Only `Admin` gates endpoints.
pub const ROLES: [&str; 4] = ["Admin", "Organization_Admin", "Application_Provider", "Infrastructure_Provider"];
/// The role that may manage users, organizations and clusters.
pub const ADMIN_ROLE: &str = "Admin";
/// The organization every deployment has.
pub const ROOT_ORGANIZATION: &str = "root";

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
    /// Organization to log into; `root` when absent.
    #[serde(default, alias = "organization", skip_serializing_if = "Option::is_none")]
    pub organization_name: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoginResponse {
    /// Access token (JWT), sent as `Authorization: Bearer <token>`.
    pub token: String,
    /// Refresh token (JWT), exchanged at `/api/auth/refresh` for a new access token.
    pub refresh_token: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefreshResponse {
    pub token: String,
}

/// A simple acknowledgement, as the original returns (`{"message": "ok"}`).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Message {
    pub message: String,
}

impl Message {
    pub fn new(m: impl Into<String>) -> Self {
        Self { message: m.into() }
    }
}

/// A user account. The password hash is never part of it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct User {
    #[serde(rename = "_id")]
    pub id: UserId,
    pub name: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub created_at: String,
    /// Roles in the organization of the caller's token.
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegisterRequest {
    pub name: String,
    pub password: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub created_at: Option<String>,
    /// Roles in the caller's organization; defaults to `Application_Provider`.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
}

/// Admin update of a user: every field is optional.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserUpdate {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Replaces the user's roles in the caller's organization.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[allow(non_snake_case)]
pub struct PasswordChange {
    pub oldPassword: String,
    pub newPassword: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Permissions {
    pub roles: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Member {
    pub user_id: UserId,
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Organization {
    #[serde(rename = "_id")]
    pub id: OrganizationId,
    pub name: String,
    #[serde(default)]
    pub member: Vec<Member>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrganizationRequest {
    pub name: String,
    #[serde(default)]
    pub member: Vec<Member>,
}

/// An application as the API returns it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Application {
    #[serde(rename = "applicationID")]
    pub id: ApplicationId,
    pub application_name: String,
    pub application_namespace: String,
    #[serde(default)]
    pub application_desc: String,
    /// Owner: the user's name, as in the original.
    #[serde(rename = "userId")]
    pub owner: String,
    /// Ids of its services.
    pub microservices: Vec<ServiceId>,
    /// Fields of the descriptor this server does not interpret.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: Map<String, Value>,
}

/// `PUT /api/application/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApplicationUpdate {
    pub application_name: String,
    pub application_namespace: String,
    #[serde(default)]
    pub application_desc: Option<String>,
    /// Accepted when it lists exactly the application's services (clients send the whole
    /// document back); services are added and removed through the service endpoints.
    #[serde(default)]
    pub microservices: Option<Vec<ServiceId>>,
}

/// One instance of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Instance {
    pub instance_number: u32,
    pub status: Status,
    #[serde(default)]
    pub status_detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<ClusterId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_name: Option<String>,
    /// The instance's semantic address: it always reaches this instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publicip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
    /// Unix seconds of the last change.
    #[serde(default)]
    pub last_modified_timestamp: f64,
}

/// A service ("job") as the API returns it: the descriptor's fields plus what the system adds.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Service {
    #[serde(rename = "microserviceID")]
    pub id: ServiceId,
    #[serde(rename = "applicationID")]
    pub application_id: ApplicationId,
    /// `<app>.<app ns>.<service>.<service ns>`.
    pub job_name: String,
    pub app_name: String,
    pub app_ns: String,
    pub service_name: String,
    pub service_ns: String,
    /// The image, copied from `code`.
    pub image: String,
    #[serde(rename = "RR_ip", default, skip_serializing_if = "Option::is_none")]
    pub rr_ip: Option<String>,
    #[serde(rename = "RR_ip_v6", default, skip_serializing_if = "Option::is_none")]
    pub rr_ip_v6: Option<String>,
    /// Service IP with the "closest instance" policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closest_ip: Option<String>,
    /// Absent until an instance is requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_detail: Option<String>,
    pub instance_list: Vec<Instance>,
    pub next_instance_progressive_number: u32,
    #[serde(rename = "userId")]
    pub owner: String,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub spec: MicroserviceSpec,
}

/// Response of `POST /api/service`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceCreated {
    /// Id of the last service created, as in the original.
    pub job_id: ServiceId,
    pub deployed_services: Vec<ServiceOutcome>,
    /// Always empty: a request creates all its services or none.
    pub failed_services: Vec<ServiceOutcome>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceOutcome {
    pub service_name: String,
    #[serde(rename = "microserviceID", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ServiceId>,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Response of `POST /api/service/{id}/instance`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceRequested {
    pub message: String,
    pub instance_number: u32,
    pub status: Status,
    pub status_detail: String,
}

/// A cluster as `GET /api/clusters` returns it (with the original's compatibility names).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Cluster {
    #[serde(rename = "_id")]
    pub id: ClusterId,
    pub cluster_name: String,
    #[serde(default)]
    pub cluster_location: String,
    pub active: bool,
    #[serde(default)]
    pub active_nodes: u32,
    #[serde(default)]
    pub virtualization: Vec<String>,
    #[serde(default)]
    pub aggregated_cpu_percent: f64,
    #[serde(default)]
    pub memory_in_mb: u64,
    #[serde(default)]
    pub total_cpu_cores: f64,
    #[serde(default)]
    pub total_gpu_cores: u64,
    /// Unix seconds of the last report.
    #[serde(default)]
    pub last_modified_timestamp: f64,
    /// Registered workers (active or not).
    #[serde(default)]
    pub workers: u32,
    /// Memory not reserved by instances, over active workers.
    #[serde(default)]
    pub memory_free_mb: u64,
    /// Where its active workers are: discs on the map and balls in the network coordinate
    /// space (ms), as the root's scheduler sees them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub area: Vec<crate::ldp::GeoCircle>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub space: Vec<crate::ldp::CoordCircle>,
    /// Addons some active worker offers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addons: Vec<String>,
}

/// A user's limits (or usage, in the same units): services, instances, and the CPU and memory
/// their instances reserve.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuotaLimits {
    pub services: u64,
    pub instances: u64,
    pub vcpus: f64,
    pub memory_mb: u64,
}

/// `GET /api/user/{username}/quota`: the limits (`null`: none, the bootstrap Admin) and usage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuotaStatus {
    pub user: String,
    pub limits: Option<QuotaLimits>,
    pub used: QuotaLimits,
}

/// `PUT /api/user/{username}/quota` (Admin): the limits to change; the others stay.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaUpdate {
    #[serde(default)]
    pub services: Option<u64>,
    #[serde(default)]
    pub instances: Option<u64>,
    #[serde(default)]
    pub vcpus: Option<f64>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
}
