//! HTTP operations of users.

use crate::db::Db;
use poem::web::Data;
use poem_openapi::{Object, OpenApi, payload::Json, types::Example};
use uuid::Uuid;

use super::{CreateUser, USERNAME_MAX};
use crate::{
    auth::{Caller, Scope},
    bus,
    http::{ApiTags, case_insensitive::CaseInsensitive, errors::CommandError, responses::NoContent},
    validate,
};

pub struct UsersApi {
    pub db: Db,
}

/// A new user (a client).
#[derive(Debug, Object)]
#[oai(example)]
pub(crate) struct CreateUserRequest {
    #[oai(rename = "userID")]
    pub user_id: Uuid,
    /// Not blank, at most 100 characters.
    pub username: String,
    /// An existing address (404 otherwise).
    #[oai(rename = "addressID")]
    pub address_id: Uuid,
}

impl Example for CreateUserRequest {
    fn example() -> Self {
        CreateUserRequest {
            user_id: Uuid::from_u128(0x4b2b575e_65e7_427c_bb1b_1fe609fc1f6b),
            username: "test".into(),
            address_id: Uuid::from_u128(0x7b2b575e_65e7_427c_bb1b_1fe609fc1f6b),
        }
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Users")]
impl UsersApi {
    /// Create a user with an address
    #[oai(path = "/users", method = "post")]
    async fn create(
        &self,
        body: Json<CaseInsensitive<CreateUserRequest>>,
        caller: Data<&Caller>,
    ) -> Result<NoContent, CommandError> {
        caller.require(Scope::CatalogWrite)?;
        let req = body.0.0;
        let command = CreateUser {
            id: req.user_id,
            username: validate::text("username", &req.username, USERNAME_MAX)?,
            address_id: req.address_id,
        };
        bus::dispatch(&self.db, command).await?;
        Ok(NoContent::Done)
    }
}
