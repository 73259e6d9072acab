//! Money and discounts: exact decimals, never binary floats.
//!
//! `actualPrice = price × (100 − discount) / 100`, rounded half-even to cents, and an
//! order's `totalPrice` is the sum of its actual prices.

use std::fmt;

use rust_decimal::{Decimal, RoundingStrategy, prelude::ToPrimitive};
use serde::{Serialize, Serializer};

/// The most a single price may be (the `numeric(10,2)` column). Keeping amounts to at
/// most 13 significant digits is also what makes [`json_number`] exact.
pub(crate) const MAX_PRICE: Decimal = Decimal::from_parts(0x540B_E3FF, 2, 0, false, 2); // 99999999.99

/// How many products one order may hold, so a total never exceeds `numeric(13,2)`.
pub(crate) const MAX_ORDER_LINES: usize = 1000;

/// A non-negative amount of money with at most two decimal places.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(Decimal);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("Price cannot be negative;")]
    Negative,
    #[error("Price must have at most 2 decimal places;")]
    TooPrecise,
    #[error("Price must be at most 99999999.99;")]
    TooLarge,
}

impl Money {
    pub const ZERO: Money = Money(Decimal::ZERO);

    /// A price as a client may set it.
    pub fn price(amount: Decimal) -> Result<Money, PriceError> {
        let amount = amount.normalize();
        if amount.is_sign_negative() && !amount.is_zero() {
            return Err(PriceError::Negative);
        }
        if amount.scale() > 2 {
            return Err(PriceError::TooPrecise);
        }
        if amount > MAX_PRICE {
            return Err(PriceError::TooLarge);
        }
        // `-0` normalizes to a negative zero; store the plain one.
        Ok(Money(amount.abs()))
    }

    /// An amount read back from a `numeric(_, 2)` column, which already holds the rules.
    pub fn from_db(amount: Decimal) -> Money {
        Money(amount.normalize())
    }

    pub fn amount(self) -> Decimal {
        self.0
    }

    /// The price after a percent discount, rounded half-even (banker's rounding) to cents.
    pub fn discounted(self, discount: Discount) -> Money {
        let factor = Decimal::from(100 - u32::from(discount.0));
        let exact = self.0 * factor / Decimal::ONE_HUNDRED;
        Money(exact.round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven).normalize())
    }

    /// The sum of several amounts, e.g. an order's total.
    pub fn sum(amounts: impl IntoIterator<Item = Money>) -> Money {
        Money(amounts.into_iter().map(|m| m.0).sum::<Decimal>().normalize())
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// JSON renders amounts as numbers: `90`, `90.5`.
impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        json_number(self.0).serialize(serializer)
    }
}

/// A decimal as a JSON number, exactly as written in decimal.
///
/// Whole amounts become integers (`90`, not `90.0`). Others go through `f64`: for up to
/// 15 significant digits the shortest representation that round-trips, which is what
/// serde_json prints, is the decimal itself, and every amount here has at most 13.
pub(crate) fn json_number(amount: Decimal) -> serde_json::Number {
    let amount = amount.normalize();
    if amount.scale() == 0
        && let Some(whole) = amount.to_i64()
    {
        return whole.into();
    }
    amount.to_string().parse::<f64>().ok().and_then(serde_json::Number::from_f64).unwrap_or_else(|| 0.into())
}

/// Parses a JSON number exactly: serde_json keeps the shortest decimal form of the
/// number that was sent, so `100.1` arrives as `100.1`, not `100.09999…`.
pub(crate) fn decimal_from_json(number: &serde_json::Number) -> Option<Decimal> {
    if let Some(whole) = number.as_i64() {
        return Some(Decimal::from(whole));
    }
    if let Some(whole) = number.as_u64() {
        return Some(Decimal::from(whole));
    }
    let text = number.to_string();
    Decimal::from_str_exact(&text).or_else(|_| Decimal::from_scientific(&text)).ok()
}

/// A percent discount, 0 to 99.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Discount(u8);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Discount must be in from 0 to 99;")]
pub struct DiscountError;

impl Discount {
    pub fn percent(self) -> u8 {
        self.0
    }
}

impl TryFrom<i64> for Discount {
    type Error = DiscountError;

    fn try_from(percent: i64) -> Result<Self, Self::Error> {
        match u8::try_from(percent) {
            Ok(p) if p <= 99 => Ok(Discount(p)),
            _ => Err(DiscountError),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn money(s: &str) -> Money {
        Money::price(d(s)).unwrap()
    }

    fn discount(p: i64) -> Discount {
        Discount::try_from(p).unwrap()
    }

    #[test]
    fn a_price_is_non_negative_with_at_most_two_decimals() {
        assert_eq!(Money::price(d("-0.01")), Err(PriceError::Negative));
        assert_eq!(Money::price(d("0.001")), Err(PriceError::TooPrecise));
        assert_eq!(Money::price(d("100000000")), Err(PriceError::TooLarge));
        assert_eq!(money("99999999.99").amount(), d("99999999.99"));
        assert_eq!(money("0").amount(), Decimal::ZERO);
        assert_eq!(money("-0").amount(), Decimal::ZERO);
        // Trailing zeros are not extra precision.
        assert_eq!(money("10.500").amount(), d("10.5"));
    }

    #[test]
    fn discount_is_a_percentage_from_0_to_99() {
        assert!(Discount::try_from(-1).is_err());
        assert!(Discount::try_from(100).is_err());
        assert!(Discount::try_from(i64::MAX).is_err());
        assert_eq!(discount(0).percent(), 0);
        assert_eq!(discount(99).percent(), 99);
    }

    #[test]
    fn actual_price_applies_the_percent_discount() {
        // The original README: price 100, discount 10 → 90.
        assert_eq!(money("100").discounted(discount(10)), money("90"));
        assert_eq!(money("100").discounted(discount(0)), money("100"));
        assert_eq!(money("0").discounted(discount(50)), Money::ZERO);
        assert_eq!(money("19.99").discounted(discount(99)), money("0.2"));
    }

    #[test]
    fn actual_price_rounds_half_to_even_on_cents() {
        // 0.25 × 0.5 = 0.125 → 0.12 (2 is even); 0.35 × 0.5 = 0.175 → 0.18.
        assert_eq!(money("0.25").discounted(discount(50)), money("0.12"));
        assert_eq!(money("0.35").discounted(discount(50)), money("0.18"));
        // 1.01 × 0.67 = 0.6767 → 0.68 (not a midpoint).
        assert_eq!(money("1.01").discounted(discount(33)), money("0.68"));
    }

    #[test]
    fn totals_are_exact_sums() {
        let lines = [money("0.1"), money("0.2"), money("0.3")];
        assert_eq!(Money::sum(lines), money("0.6"));
        assert_eq!(Money::sum([]), Money::ZERO);
    }

    #[test]
    fn amounts_render_as_plain_json_numbers() {
        assert_eq!(serde_json::to_string(&money("90")).unwrap(), "90");
        assert_eq!(serde_json::to_string(&money("90.50")).unwrap(), "90.5");
        assert_eq!(serde_json::to_string(&money("0.1")).unwrap(), "0.1");
        assert_eq!(serde_json::to_string(&money("99999999.99")).unwrap(), "99999999.99");
        assert_eq!(json_number(d("99999999999.99")).to_string(), "99999999999.99");
    }

    #[test]
    fn json_numbers_parse_exactly() {
        let parse = |s: &str| decimal_from_json(&serde_json::from_str(s).unwrap()).unwrap();
        assert_eq!(parse("100"), d("100"));
        assert_eq!(parse("100.1"), d("100.1"));
        assert_eq!(parse("0.29"), d("0.29"));
        assert_eq!(parse("1e2"), d("100"));
        assert_eq!(parse("-5"), d("-5"));
        assert!(Money::price(parse("0.125")).is_err());
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Any amount a client may set: whole cents from 0 to [`MAX_PRICE`].
        fn price() -> impl Strategy<Value = Money> {
            (0i64..=9_999_999_999).prop_map(|cents| Money::price(Decimal::new(cents, 2)).unwrap())
        }

        fn discount() -> impl Strategy<Value = Discount> {
            (0i64..=99).prop_map(|p| Discount::try_from(p).unwrap())
        }

        proptest! {
            #[test]
            fn negative_prices_are_refused(cents in -9_999_999_999i64..=-1) {
                prop_assert_eq!(Money::price(Decimal::new(cents, 2)), Err(PriceError::Negative));
            }

            #[test]
            fn a_discounted_price_is_never_negative_nor_above_the_price(p in price(), d in discount()) {
                let actual = p.discounted(d);
                prop_assert!(actual >= Money::ZERO && actual <= p);
                prop_assert!(actual.amount().scale() <= 2);
                // Off the exact product by at most half a cent (the rounding).
                let exact = p.amount() * Decimal::from(100 - u32::from(d.percent())) / Decimal::ONE_HUNDRED;
                prop_assert!((actual.amount() - exact).abs() <= Decimal::new(5, 3));
            }

            #[test]
            fn totals_are_exact_sums_of_cents(lines in proptest::collection::vec((price(), discount()), 1..200)) {
                let actual: Vec<Money> = lines.iter().map(|(p, d)| p.discounted(*d)).collect();
                let total = Money::sum(actual.iter().copied());
                let cents: i64 = actual.iter().map(|m| (m.amount() * Decimal::ONE_HUNDRED).to_i64().unwrap()).sum();
                prop_assert_eq!(total.amount(), Decimal::new(cents, 2).normalize());
                prop_assert!(total >= Money::ZERO);
            }

            #[test]
            fn amounts_survive_json_exactly(cents in 0i64..=99_999_999_990_000) {
                // Up to the largest total: MAX_ORDER_LINES lines at MAX_PRICE.
                let amount = Decimal::new(cents, 2).normalize();
                prop_assert_eq!(decimal_from_json(&json_number(amount)), Some(amount));
            }

            #[test]
            fn discounts_outside_0_to_99_are_refused(percent in prop_oneof![i64::MIN..0, 100..i64::MAX]) {
                prop_assert_eq!(Discount::try_from(percent), Err(DiscountError));
            }
        }
    }
}
