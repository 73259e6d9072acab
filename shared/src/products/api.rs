//! HTTP operations of the catalogue.

use crate::db::Db;
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
    types::Example,
};
use uuid::Uuid;

use super::{CreateProduct, ListProducts, ProductByName, ProductName, ProductView, RenameProduct};
use crate::{
    auth::{Caller, Scope},
    bus,
    error::AppError,
    http::{
        ApiTags,
        case_insensitive::CaseInsensitive,
        errors::{CommandError, QueryError},
        formats::JsonDecimal,
        responses::NoContent,
    },
    pagination::{Page, PageInfo, SortOrder},
    pricing::{Discount, Money},
    validate,
};

pub struct ProductsApi {
    pub db: Db,
}

/// A new product.
#[derive(Debug, Object)]
#[oai(example)]
pub(crate) struct CreateProductRequest {
    #[oai(rename = "productID")]
    pub product_id: Uuid,
    /// Price before discount: a number ≥ 0 with at most 2 decimals, at most 99999999.99.
    pub price: JsonDecimal,
    /// Percent discount, 0 to 99.
    #[oai(validator(minimum(value = "0"), maximum(value = "99")))]
    pub discount: i64,
    /// Free text, at most 2000 characters.
    #[oai(default)]
    pub description: String,
    /// Unique, not blank, at most 200 characters.
    pub name: String,
}

impl Example for CreateProductRequest {
    fn example() -> Self {
        CreateProductRequest {
            product_id: Uuid::from_u128(0xec14f9be_44e3_4ec0_97d3_47fdac6c55c9),
            price: JsonDecimal(100.into()),
            discount: 10,
            description: "A phone with a good camera".into(),
            name: "Phone".into(),
        }
    }
}

impl TryFrom<CreateProductRequest> for CreateProduct {
    type Error = AppError;

    fn try_from(req: CreateProductRequest) -> Result<Self, AppError> {
        Ok(CreateProduct {
            id: req.product_id,
            name: ProductName::parse("name", &req.name)?,
            description: validate::optional_text("description", req.description.trim(), super::DESCRIPTION_MAX)?,
            price: Money::price(req.price.0).map_err(|e| AppError::invalid("price", e))?,
            discount: Discount::try_from(req.discount).map_err(|e| AppError::invalid("discount", e))?,
        })
    }
}

/// A new name for a product.
#[derive(Debug, Object)]
pub(crate) struct RenameProductRequest {
    /// Must start with a capital letter; unique.
    #[oai(rename = "productName")]
    pub product_name: String,
}

#[derive(Debug, Object)]
pub(crate) struct Product {
    #[oai(rename = "productID")]
    pub product_id: Uuid,
    pub name: String,
    pub price: JsonDecimal,
    pub discount: i32,
    pub description: String,
    pub quantity: i32,
    pub availability: bool,
    #[oai(rename = "createdAt")]
    pub created_at: DateTime<Utc>,
}

impl From<ProductView> for Product {
    fn from(p: ProductView) -> Self {
        Product {
            product_id: p.id,
            name: p.name,
            price: JsonDecimal(Money::from_db(p.price).amount()),
            discount: p.discount,
            description: p.description,
            quantity: p.quantity,
            availability: p.availability,
            created_at: p.created_at,
        }
    }
}

#[derive(Debug, Object)]
pub(crate) struct ProductList {
    pub products: Vec<Product>,
    #[oai(flatten)]
    pub page: PageInfo,
}

#[derive(Debug, ApiResponse)]
pub(crate) enum ProductResponse {
    #[oai(status = 200)]
    Ok(Json<Product>),
}

#[derive(Debug, ApiResponse)]
pub(crate) enum ProductListResponse {
    #[oai(status = 200)]
    Ok(Json<ProductList>),
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Products")]
impl ProductsApi {
    /// Create a product
    ///
    /// Created with quantity 1 and available. 409 if the id or the name is taken.
    #[oai(path = "/products", method = "post")]
    async fn create(
        &self,
        body: Json<CaseInsensitive<CreateProductRequest>>,
        caller: Data<&Caller>,
    ) -> Result<NoContent, CommandError> {
        caller.require(Scope::CatalogWrite)?;
        let command = CreateProduct::try_from(body.0.0)?;
        bus::dispatch(&self.db, command).await?;
        Ok(NoContent::Done)
    }

    /// List products
    ///
    /// Sorted by price, then id.
    #[oai(path = "/products", method = "get")]
    async fn list(
        &self,
        /// Page size, 1 to 1000 (default 1000).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip, 0 to 10000 (default 0).
        #[oai(validator(minimum(value = "0"), maximum(value = "10000")))]
        offset: Query<Option<i64>>,
        /// `asc` (default) or `desc`.
        order: Query<Option<SortOrder>>,
    ) -> Result<ProductListResponse, QueryError> {
        let page = Page::new(limit.0, offset.0, order.0);
        let products: Vec<Product> = ListProducts(page).fetch(&self.db).await?.into_iter().map(Product::from).collect();
        let page = PageInfo { count: products.len() as i64, limit: page.limit, offset: page.offset, order: page.order };
        Ok(ProductListResponse::Ok(Json(ProductList { products, page })))
    }

    /// Get a product by its name
    #[oai(path = "/products/:productName", method = "get")]
    async fn by_name(
        &self,
        #[oai(name = "productName")] product_name: Path<String>,
    ) -> Result<ProductResponse, QueryError> {
        // PostgreSQL refuses a NUL in text (a 500 before this); no product has one.
        if product_name.0.contains('\0') {
            return Err(AppError::invalid("productName", "must not contain NUL characters").into());
        }
        let product = ProductByName(product_name.0).fetch(&self.db).await?;
        Ok(ProductResponse::Ok(Json(product.into())))
    }

    /// Rename a product
    ///
    /// The new name must start with a capital letter and be unique.
    #[oai(path = "/products/:productID/productName", method = "put")]
    async fn rename(
        &self,
        /// The product's id, a UUID.
        #[oai(name = "productID")]
        product_id: Path<String>,
        body: Json<CaseInsensitive<RenameProductRequest>>,
        caller: Data<&Caller>,
    ) -> Result<NoContent, CommandError> {
        caller.require(Scope::CatalogWrite)?;
        let id = validate::id("productID", &product_id.0)?;
        let name = ProductName::parse_rename("productName", &body.0.0.product_name)?;
        bus::dispatch(&self.db, RenameProduct { id, name }).await?;
        Ok(NoContent::Done)
    }
}
