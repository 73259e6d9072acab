//! Users: the clients who place orders, each with a home address.

pub(crate) mod api;

use uuid::Uuid;

use crate::{
    addresses,
    bus::Command,
    db::Tx,
    error::{AppError, violated_constraint},
};

pub(crate) const USERNAME_MAX: usize = 100;
pub(crate) const NOT_FOUND: &str = "User with this id not exist;";

/// Creates a user living at an existing address.
#[derive(Debug, Clone)]
pub(crate) struct CreateUser {
    pub id: Uuid,
    pub username: String,
    pub address_id: Uuid,
}

impl Command for CreateUser {
    type Output = ();

    async fn execute(self, tx: &mut Tx<'_>) -> Result<(), AppError> {
        sqlx::query!(
            "INSERT INTO users (id, username, address_id) VALUES ($1, $2, $3)",
            self.id,
            self.username,
            self.address_id,
        )
        .execute(&mut **tx)
        .await
        .map_err(|e| match violated_constraint(&e) {
            Some("users_pkey") => AppError::conflict("User with this id already exists;", self.id),
            Some("users_address_id_fkey") => AppError::not_found(addresses::NOT_FOUND, self.address_id),
            _ => e.into(),
        })?;
        Ok(())
    }
}
