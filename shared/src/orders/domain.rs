//! The order aggregate: its statuses and the only moves between them.
//!
//! `orderStatus` is the order's life (`New` → `InProcessing` → `Processed` → `Delivered`,
//! or `Canceled` before it is delivered); `sagaStatus` is the customer check
//! (`Pending` → `Approved` | `Rejected`). Every change goes through a method here that
//! refuses an illegal move, so no handler needs ad-hoc checks.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use uuid::Uuid;

// The derives give the OpenAPI schema of these enums, their JSON, and their column type:
// the variant names are the wire and database spelling, stored as `text` (a value the
// code does not know is a decode error, not a silent default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, poem_openapi::Enum, serde::Serialize, sqlx::Type)]
#[sqlx(type_name = "text")]
pub enum OrderStatus {
    New,
    InProcessing,
    Processed,
    Delivered,
    Canceled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, poem_openapi::Enum, serde::Serialize, sqlx::Type)]
#[sqlx(type_name = "text")]
pub enum SagaStatus {
    Pending,
    Approved,
    Rejected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, poem_openapi::Enum, serde::Serialize, sqlx::Type)]
#[sqlx(type_name = "text")]
pub enum PaymentMethod {
    Online,
    Card,
    Cash,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition of {what} from {from} to {to}")]
pub struct InvalidTransition {
    pub what: &'static str,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct UnknownVariant {
    pub what: &'static str,
    pub value: String,
}

impl OrderStatus {
    /// `Delivered` and `Canceled` close an order: nothing moves it again.
    pub fn is_closed(self) -> bool {
        matches!(self, OrderStatus::Delivered | OrderStatus::Canceled)
    }

    pub fn can_become(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, next),
            (New, InProcessing)
                | (InProcessing, Processed)
                | (Processed, Delivered)
                | (New | InProcessing | Processed, Canceled)
        )
    }

    pub fn transition(self, next: OrderStatus) -> Result<OrderStatus, InvalidTransition> {
        if self.can_become(next) {
            Ok(next)
        } else {
            Err(InvalidTransition { what: "orderStatus", from: self.to_string(), to: next.to_string() })
        }
    }
}

impl SagaStatus {
    pub fn can_become(self, next: SagaStatus) -> bool {
        matches!((self, next), (SagaStatus::Pending, SagaStatus::Approved | SagaStatus::Rejected))
    }

    pub fn transition(self, next: SagaStatus) -> Result<SagaStatus, InvalidTransition> {
        if self.can_become(next) {
            Ok(next)
        } else {
            Err(InvalidTransition { what: "sagaStatus", from: self.to_string(), to: next.to_string() })
        }
    }
}

/// The parts of an order whose rules the domain owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: Uuid,
    pub user_id: Uuid,
    pub order_status: OrderStatus,
    pub saga_status: SagaStatus,
    pub deleted_at: Option<DateTime<Utc>>,
}

impl Order {
    /// The customer service approved the order.
    pub fn approve(&mut self) -> Result<(), InvalidTransition> {
        self.saga_status = self.saga_status.transition(SagaStatus::Approved)?;
        Ok(())
    }

    /// The customer service rejected the order: compensate by canceling it. The row
    /// stays, so the client can still read why its order went nowhere.
    pub fn reject(&mut self) -> Result<(), InvalidTransition> {
        let saga_status = self.saga_status.transition(SagaStatus::Rejected)?;
        let order_status = self.order_status.transition(OrderStatus::Canceled)?;
        self.saga_status = saga_status;
        self.order_status = order_status;
        Ok(())
    }

    /// Only an approved order that is not deleted yet can be deleted (softly).
    pub fn is_deletable(&self) -> bool {
        self.saga_status == SagaStatus::Approved && self.deleted_at.is_none()
    }

    pub fn delete(&mut self, now: DateTime<Utc>) -> Result<(), InvalidTransition> {
        if !self.is_deletable() {
            return Err(InvalidTransition {
                what: "order",
                from: format!("{} (deleted: {})", self.saga_status, self.deleted_at.is_some()),
                to: "deleted".into(),
            });
        }
        self.deleted_at = Some(now);
        Ok(())
    }
}

macro_rules! text_enum {
    ($ty:ident, $what:literal, [$($variant:ident),+]) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => stringify!($variant)),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = UnknownVariant;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $(stringify!($variant) => Ok($ty::$variant),)+
                    _ => Err(UnknownVariant { what: $what, value: s.to_owned() }),
                }
            }
        }
    };
}

text_enum!(OrderStatus, "orderStatus", [New, InProcessing, Processed, Delivered, Canceled]);
text_enum!(SagaStatus, "sagaStatus", [Pending, Approved, Rejected]);
text_enum!(PaymentMethod, "paymentMethod", [Online, Card, Cash]);

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_ORDER: [OrderStatus; 5] = [
        OrderStatus::New,
        OrderStatus::InProcessing,
        OrderStatus::Processed,
        OrderStatus::Delivered,
        OrderStatus::Canceled,
    ];
    const ALL_SAGA: [SagaStatus; 3] = [SagaStatus::Pending, SagaStatus::Approved, SagaStatus::Rejected];

    fn pending() -> Order {
        Order {
            id: Uuid::nil(),
            user_id: Uuid::nil(),
            order_status: OrderStatus::New,
            saga_status: SagaStatus::Pending,
            deleted_at: None,
        }
    }

    #[test]
    fn order_status_moves_only_forward_along_legal_edges() {
        use OrderStatus::*;
        let legal = [
            (New, InProcessing),
            (InProcessing, Processed),
            (Processed, Delivered),
            (New, Canceled),
            (InProcessing, Canceled),
            (Processed, Canceled),
        ];
        for from in ALL_ORDER {
            for to in ALL_ORDER {
                let expected = legal.contains(&(from, to));
                assert_eq!(from.transition(to).is_ok(), expected, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn closed_orders_never_move() {
        for closed in [OrderStatus::Delivered, OrderStatus::Canceled] {
            assert!(closed.is_closed());
            assert!(ALL_ORDER.iter().all(|&to| closed.transition(to).is_err()));
        }
        assert!(!OrderStatus::New.is_closed());
    }

    #[test]
    fn saga_status_leaves_pending_once() {
        for from in ALL_SAGA {
            for to in ALL_SAGA {
                let expected = from == SagaStatus::Pending && to != SagaStatus::Pending;
                assert_eq!(from.transition(to).is_ok(), expected, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn approval_and_rejection_happen_once() {
        let mut order = pending();
        order.approve().unwrap();
        assert_eq!(order.saga_status, SagaStatus::Approved);
        assert!(order.approve().is_err());
        assert!(order.reject().is_err());
        assert_eq!(order.order_status, OrderStatus::New);
    }

    #[test]
    fn rejection_cancels_the_order() {
        let mut order = pending();
        order.reject().unwrap();
        assert_eq!(order.saga_status, SagaStatus::Rejected);
        assert_eq!(order.order_status, OrderStatus::Canceled);
    }

    #[test]
    fn a_rejection_that_cannot_cancel_changes_nothing() {
        let mut order = pending();
        order.order_status = OrderStatus::Delivered;
        let before = order.clone();
        assert!(order.reject().is_err());
        assert_eq!(order, before);
    }

    #[test]
    fn only_approved_live_orders_can_be_deleted() {
        let now = Utc::now();
        let mut order = pending();
        assert!(order.delete(now).is_err());
        order.approve().unwrap();
        order.delete(now).unwrap();
        assert_eq!(order.deleted_at, Some(now));
        assert!(order.delete(now).is_err(), "deleted twice");

        let mut rejected = pending();
        rejected.reject().unwrap();
        assert!(rejected.delete(now).is_err());
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for s in ALL_ORDER {
            assert_eq!(s.as_str().parse::<OrderStatus>(), Ok(s));
        }
        for s in ALL_SAGA {
            assert_eq!(s.as_str().parse::<SagaStatus>(), Ok(s));
        }
        assert_eq!("Card".parse::<PaymentMethod>(), Ok(PaymentMethod::Card));
        assert!("card".parse::<PaymentMethod>().is_err());
        assert!("Shipped".parse::<OrderStatus>().is_err());
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// The legal edges, written out once more as data, independently of `can_become`.
        const ORDER_EDGES: [(OrderStatus, OrderStatus); 6] = [
            (OrderStatus::New, OrderStatus::InProcessing),
            (OrderStatus::InProcessing, OrderStatus::Processed),
            (OrderStatus::Processed, OrderStatus::Delivered),
            (OrderStatus::New, OrderStatus::Canceled),
            (OrderStatus::InProcessing, OrderStatus::Canceled),
            (OrderStatus::Processed, OrderStatus::Canceled),
        ];

        #[derive(Debug, Clone, Copy)]
        enum Command {
            Approve,
            Reject,
            Delete,
        }

        proptest! {
            #[test]
            fn order_status_moves_only_along_legal_edges(targets in proptest::collection::vec(0usize..5, 0..20)) {
                let mut status = OrderStatus::New;
                for target in targets {
                    let next = ALL_ORDER[target];
                    match status.transition(next) {
                        Ok(moved) => {
                            prop_assert!(ORDER_EDGES.contains(&(status, next)));
                            prop_assert!(!status.is_closed());
                            status = moved;
                        }
                        Err(_) => prop_assert!(!ORDER_EDGES.contains(&(status, next))),
                    }
                }
            }

            #[test]
            fn the_saga_decides_once_and_deletion_needs_approval(
                commands in proptest::collection::vec(prop_oneof![
                    Just(Command::Approve), Just(Command::Reject), Just(Command::Delete)
                ], 0..12)
            ) {
                let mut order = Order {
                    id: Uuid::nil(), user_id: Uuid::nil(), order_status: OrderStatus::New,
                    saga_status: SagaStatus::Pending, deleted_at: None,
                };
                let mut decided = None;
                for command in commands {
                    let before = order.clone();
                    let result = match command {
                        Command::Approve => order.approve(),
                        Command::Reject => order.reject(),
                        Command::Delete => order.delete(Utc::now()),
                    };
                    if result.is_err() {
                        // A refused move changes nothing.
                        prop_assert_eq!(&order, &before);
                        continue;
                    }
                    match command {
                        Command::Approve | Command::Reject => {
                            prop_assert_eq!(decided, None, "the saga decided twice");
                            decided = Some(order.saga_status);
                        }
                        Command::Delete => {
                            prop_assert_eq!(before.saga_status, SagaStatus::Approved);
                            prop_assert!(before.deleted_at.is_none());
                        }
                    }
                    if order.saga_status == SagaStatus::Rejected {
                        prop_assert_eq!(order.order_status, OrderStatus::Canceled);
                    }
                }
            }
        }
    }
}
