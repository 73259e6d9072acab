//! HTTP operations of addresses.

use crate::db::Db;
use poem::web::Data;
use poem_openapi::{Object, OpenApi, payload::Json, types::Example};
use uuid::Uuid;

use super::{CreateAddress, PART_MAX};
use crate::{
    auth::{Caller, Scope},
    bus,
    error::AppError,
    http::{ApiTags, case_insensitive::CaseInsensitive, errors::CommandError, responses::NoContent},
    validate,
};

pub struct AddressesApi {
    pub db: Db,
}

/// A new address.
#[derive(Debug, Object)]
#[oai(example)]
pub(crate) struct CreateAddressRequest {
    #[oai(rename = "addressID")]
    pub address_id: Uuid,
    /// Greater than 0.
    #[oai(rename = "buildingNumber", validator(minimum(value = "1"), maximum(value = "2147483647")))]
    pub building_number: i64,
    /// Not blank, at most 200 characters (likewise `city` and `country`).
    #[oai(rename = "streetName")]
    pub street_name: String,
    pub city: String,
    pub country: String,
}

impl Example for CreateAddressRequest {
    fn example() -> Self {
        CreateAddressRequest {
            address_id: Uuid::from_u128(0x7b2b575e_65e7_427c_bb1b_1fe609fc1f6b),
            building_number: 44,
            street_name: "Pushkina".into(),
            city: "Moscow".into(),
            country: "Russia".into(),
        }
    }
}

impl TryFrom<CreateAddressRequest> for CreateAddress {
    type Error = AppError;

    fn try_from(req: CreateAddressRequest) -> Result<Self, AppError> {
        Ok(CreateAddress {
            id: req.address_id,
            building_number: i32::try_from(req.building_number)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| AppError::invalid("buildingNumber", "must be greater than 0"))?,
            street_name: validate::text("streetName", &req.street_name, PART_MAX)?,
            city: validate::text("city", &req.city, PART_MAX)?,
            country: validate::text("country", &req.country, PART_MAX)?,
        })
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Addresses")]
impl AddressesApi {
    /// Create an address
    #[oai(path = "/address", method = "post")]
    async fn create(
        &self,
        body: Json<CaseInsensitive<CreateAddressRequest>>,
        caller: Data<&Caller>,
    ) -> Result<NoContent, CommandError> {
        caller.require(Scope::CatalogWrite)?;
        let command = CreateAddress::try_from(body.0.0)?;
        bus::dispatch(&self.db, command).await?;
        Ok(NoContent::Done)
    }
}
