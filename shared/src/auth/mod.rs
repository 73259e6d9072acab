//! Who may do what. With `AUTH_ISSUER` or `AUTH_JWKS_URL` set, every `/api/` request
//! carries a bearer token (a JWT) that [`Verifier`] checks against the identity
//! provider's keys ([`keys`]); [`authenticate`] turns it into the [`Caller`] each
//! operation asks. Unset, the api is open, as the original was: the caller is
//! [`Caller::Anyone`].
//!
//! The rules, one place: the user is the token's `sub` (a UUID; a token whose subject is
//! not one, such as a service's, acts for no user); scopes (the `scope` claim,
//! space-separated, or `scp`, a list or a string) grant [`Scope::CatalogWrite`] (products,
//! addresses, users) and [`Scope::OrdersReadAll`] (the whole order list, any user's
//! orders). A user places orders only for itself (403 otherwise), and reads and deletes
//! only its own (another's answer as a missing one, 404, so existence does not leak).

mod claims;
pub mod keys;
mod middleware;
mod verify;

use uuid::Uuid;

pub use self::{
    claims::{Scope, Scopes},
    keys::KeySource,
    middleware::authenticate,
    verify::{Rejection, Verifier, VerifierSettings},
};
use crate::error::AppError;

/// Who is calling, as each operation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off: anyone may do anything.
    Anyone,
    /// The holder of a verified token: the user it acts for (its `sub`, when that is a
    /// UUID) and its scopes.
    Token { user: Option<Uuid>, scopes: Scopes },
}

impl Caller {
    /// 403 unless the caller holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), AppError> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::Token { scopes, .. } if scopes.has(scope) => Ok(()),
            Caller::Token { .. } => Err(AppError::forbidden(scope.missing(), scope.name())),
        }
    }

    /// 403 unless the caller is `user`: a user places orders for itself only.
    pub fn acts_for(&self, user: Uuid) -> Result<(), AppError> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::Token { user: Some(me), .. } if *me == user => Ok(()),
            Caller::Token { .. } => Err(AppError::forbidden("a token acts for its own user only (its sub)", user)),
        }
    }

    /// Whether the caller may read `owner`'s orders: its own, or any with
    /// [`Scope::OrdersReadAll`].
    pub fn reads_orders_of(&self, owner: Uuid) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::Token { user, scopes } => *user == Some(owner) || scopes.has(Scope::OrdersReadAll),
        }
    }

    /// Whose orders the caller may delete: `None` for anyone's (open mode), otherwise its
    /// own only (the nil UUID, which owns nothing, for a token acting for no user).
    pub fn deletes_orders_of(&self) -> Option<Uuid> {
        match self {
            Caller::Anyone => None,
            Caller::Token { user, .. } => Some(user.unwrap_or(Uuid::nil())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(user: Option<Uuid>, scope: &str) -> Caller {
        Caller::Token { user, scopes: Scopes::parse_space_separated(scope) }
    }

    #[test]
    fn open_mode_allows_everything() {
        let anyone = Caller::Anyone;
        assert!(anyone.require(Scope::CatalogWrite).is_ok());
        assert!(anyone.acts_for(Uuid::new_v4()).is_ok());
        assert!(anyone.reads_orders_of(Uuid::new_v4()));
        assert_eq!(anyone.deletes_orders_of(), None);
    }

    #[test]
    fn a_user_acts_for_itself_and_reads_its_own_orders() {
        let (me, other) = (Uuid::new_v4(), Uuid::new_v4());
        let caller = token(Some(me), "");
        assert!(caller.acts_for(me).is_ok());
        assert!(matches!(caller.acts_for(other), Err(AppError::Forbidden { .. })));
        assert!(caller.reads_orders_of(me) && !caller.reads_orders_of(other));
        assert_eq!(caller.deletes_orders_of(), Some(me));
        assert!(matches!(caller.require(Scope::CatalogWrite), Err(AppError::Forbidden { .. })));
    }

    #[test]
    fn scopes_grant_the_catalogue_and_every_order_but_not_acting_for_another() {
        let (me, other) = (Uuid::new_v4(), Uuid::new_v4());
        let admin = token(Some(me), "openid catalog:write orders:read-all");
        assert!(admin.require(Scope::CatalogWrite).is_ok() && admin.require(Scope::OrdersReadAll).is_ok());
        assert!(admin.reads_orders_of(other));
        assert!(admin.acts_for(other).is_err());
        assert_eq!(admin.deletes_orders_of(), Some(me), "reading all is not deleting all");
        let service = token(None, "catalog:write");
        assert!(service.require(Scope::CatalogWrite).is_ok());
        assert!(service.acts_for(me).is_err() && !service.reads_orders_of(me));
        assert_eq!(service.deletes_orders_of(), Some(Uuid::nil()));
    }
}
