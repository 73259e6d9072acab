//! Addresses: where a client lives and where an order is delivered.

pub(crate) mod api;

use uuid::Uuid;

use crate::{
    bus::Command,
    db::Tx,
    error::{AppError, violated_constraint},
};

pub(crate) const PART_MAX: usize = 200;
pub(crate) const NOT_FOUND: &str = "Address with this id not exist;";

/// Creates an address. Its parts are validated at the edge (`api.rs`).
#[derive(Debug, Clone)]
pub(crate) struct CreateAddress {
    pub id: Uuid,
    pub building_number: i32,
    pub street_name: String,
    pub city: String,
    pub country: String,
}

impl Command for CreateAddress {
    type Output = ();

    async fn execute(self, tx: &mut Tx<'_>) -> Result<(), AppError> {
        sqlx::query!(
            "INSERT INTO addresses (id, building_number, street_name, city, country) VALUES ($1, $2, $3, $4, $5)",
            self.id,
            self.building_number,
            self.street_name,
            self.city,
            self.country,
        )
        .execute(&mut **tx)
        .await
        .map_err(|e| match violated_constraint(&e) {
            Some("addresses_pkey") => AppError::conflict("Address with this id already exists;", self.id),
            _ => e.into(),
        })?;
        Ok(())
    }
}
