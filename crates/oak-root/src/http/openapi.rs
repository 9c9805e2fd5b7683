//! The OpenAPI document, generated from the handlers, and Swagger UI (served offline).

use super::{AppState, apps, services, users};
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Oakestra root API (oak)", description = "The user API of the root orchestrator, compatible with the original Oakestra paths and shapes."),
    paths(
        users::login, users::refresh, users::register, users::permissions, users::get_user, users::update_user,
        users::get_quota, users::set_quota,
        users::delete_user, users::change_password, users::reset_password, users::list_users, users::list_org_users,
        users::list_orgs, users::create_org, users::update_org, users::delete_org,
        users::create_token, users::list_tokens, users::revoke_token,
        apps::create, apps::list, apps::list_of_user, apps::get_one, apps::update, apps::delete,
        services::create, services::get_one, services::update, services::remove, services::list_all,
        services::list_of_app, services::deploy_instance, services::undeploy_instance, services::instance_logs, services::scale,
        services::clusters, services::active_clusters,
    ),
    components(schemas(oak_api::ErrorBody, oak_api::ErrorCode, oak_api::Status, oak_api::sla::Violation)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

pub(super) fn routes() -> Router<AppState> {
    Router::new().merge(SwaggerUi::new("/api/docs").url("/docs/openapi.json", ApiDoc::openapi()))
}
