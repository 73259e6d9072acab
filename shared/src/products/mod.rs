//! The catalogue: products with a unique name, a price and a percent discount.

pub(crate) mod api;

use crate::db::Db;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::{
    bus::Command,
    db::Tx,
    error::{AppError, violated_constraint},
    pagination::{Page, SortOrder},
    pricing::{Discount, Money},
    validate,
};

pub(crate) const NAME_MAX: usize = 200;
pub(crate) const DESCRIPTION_MAX: usize = 2000;

/// A product's name: not blank, at most [`NAME_MAX`] characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProductName(String);

impl ProductName {
    pub(crate) fn parse(field: &'static str, name: &str) -> Result<Self, AppError> {
        validate::text(field, name, NAME_MAX).map(ProductName)
    }

    /// A new name given by a rename, which must start with a capital letter.
    pub(crate) fn parse_rename(field: &'static str, name: &str) -> Result<Self, AppError> {
        let name = Self::parse(field, name)?;
        if !name.0.chars().next().is_some_and(char::is_uppercase) {
            return Err(AppError::invalid(field, "Product name must be start with capital letter"));
        }
        Ok(name)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

pub(crate) const NAME_TAKEN: &str = "Product with this name already exists;";
pub(crate) const ID_TAKEN: &str = "Product with this id already exists;";
pub(crate) const NOT_FOUND_BY_ID: &str = "Product with this id not exist;";
pub(crate) const NOT_FOUND_BY_NAME: &str = "Product with this name not exist;";

/// Creates a product, with `quantity = 1` and `availability = true`.
#[derive(Debug, Clone)]
pub(crate) struct CreateProduct {
    pub id: Uuid,
    pub name: ProductName,
    pub description: String,
    pub price: Money,
    pub discount: Discount,
}

impl Command for CreateProduct {
    type Output = ();

    async fn execute(self, tx: &mut Tx<'_>) -> Result<(), AppError> {
        sqlx::query!(
            "INSERT INTO products (id, name, description, price, discount) VALUES ($1, $2, $3, $4, $5)",
            self.id,
            self.name.as_str(),
            self.description,
            self.price.amount(),
            i32::from(self.discount.percent()),
        )
        .execute(&mut **tx)
        .await
        .map_err(|e| match violated_constraint(&e) {
            Some("products_pkey") => AppError::conflict(ID_TAKEN, self.id),
            Some("products_name_key") => AppError::conflict(NAME_TAKEN, self.name.as_str()),
            _ => e.into(),
        })?;
        Ok(())
    }
}

/// Renames a product.
#[derive(Debug, Clone)]
pub(crate) struct RenameProduct {
    pub id: Uuid,
    pub name: ProductName,
}

impl Command for RenameProduct {
    type Output = ();

    async fn execute(self, tx: &mut Tx<'_>) -> Result<(), AppError> {
        let renamed = sqlx::query!("UPDATE products SET name = $2 WHERE id = $1", self.id, self.name.as_str())
            .execute(&mut **tx)
            .await
            .map_err(|e| match violated_constraint(&e) {
                Some("products_name_key") => AppError::conflict(NAME_TAKEN, self.name.as_str()),
                _ => e.into(),
            })?;
        if renamed.rows_affected() == 0 {
            return Err(AppError::not_found(NOT_FOUND_BY_ID, self.id));
        }
        Ok(())
    }
}

/// A product as the API shows it.
#[derive(Debug, Clone)]
pub(crate) struct ProductView {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub price: Decimal,
    pub discount: i32,
    pub quantity: i32,
    pub availability: bool,
    pub created_at: DateTime<Utc>,
}

/// One product by its name.
pub(crate) struct ProductByName(pub String);

impl ProductByName {
    pub(crate) async fn fetch(self, db: &Db) -> Result<ProductView, AppError> {
        let name = &self.0;
        db.read(|c| {
            Box::pin(
                sqlx::query_as!(
                    ProductView,
                    "SELECT id, name, description, price, discount, quantity, availability, created_at
                   FROM products WHERE name = $1",
                    name
                )
                .fetch_optional(c),
            )
        })
        .await?
        .ok_or_else(|| AppError::not_found(NOT_FOUND_BY_NAME, self.0))
    }
}

/// A page of products, by price then id.
pub(crate) struct ListProducts(pub Page);

impl ListProducts {
    pub(crate) async fn fetch(self, db: &Db) -> Result<Vec<ProductView>, AppError> {
        let Page { limit, offset, order } = self.0;
        // Two statements rather than a dynamic ORDER BY, so both walk the (price, id) index.
        let products = db
            .read(|c| {
                Box::pin(async move {
                    Ok(match order {
                        SortOrder::Asc => {
                            sqlx::query_as!(
                                ProductView,
                                "SELECT id, name, description, price, discount, quantity, availability, created_at
                       FROM products ORDER BY price, id LIMIT $1 OFFSET $2",
                                limit,
                                offset
                            )
                            .fetch_all(&mut *c)
                            .await?
                        }
                        SortOrder::Desc => {
                            sqlx::query_as!(
                                ProductView,
                                "SELECT id, name, description, price, discount, quantity, availability, created_at
                       FROM products ORDER BY price DESC, id DESC LIMIT $1 OFFSET $2",
                                limit,
                                offset
                            )
                            .fetch_all(&mut *c)
                            .await?
                        }
                    })
                })
            })
            .await?;
        Ok(products)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_not_blank() {
        assert!(ProductName::parse("name", " ").is_err());
        assert_eq!(ProductName::parse("name", " phone ").unwrap().as_str(), "phone");
    }

    #[test]
    fn a_new_name_starts_with_a_capital_letter() {
        assert!(ProductName::parse_rename("productName", "phone").is_err());
        assert!(ProductName::parse_rename("productName", "1phone").is_err());
        assert!(ProductName::parse_rename("productName", "Phone").is_ok());
        assert!(ProductName::parse_rename("productName", "Éclair").is_ok());
        let error = ProductName::parse_rename("productName", "phone").unwrap_err().to_string();
        assert_eq!(error, "productName: Product name must be start with capital letter");
    }
}
