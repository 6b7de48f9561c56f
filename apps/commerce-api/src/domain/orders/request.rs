//! What a customer asks for when ordering, validated: merged lines, the coupon, how it is paid.

use std::collections::BTreeMap;

use commerce_web::FieldError;
use sha2::{Digest, Sha256};

use crate::domain::card::CardNumber;
use crate::domain::states::{CardType, PaymentKind, PaymentMethod};
use crate::domain::{Result, check};

/// Most lines per order.
pub const MAX_LINES: usize = 50;
/// Most units of one product per order.
pub const MAX_QUANTITY: i64 = 100;

/// A validated order request: merged lines (product id → quantity, in product-id order), the
/// coupon, and how it is paid.
#[derive(Debug)]
pub struct OrderRequest {
    pub lines: BTreeMap<i64, i64>,
    pub user_coupon_id: Option<i64>,
    pub payment: PaymentMethod,
}

impl OrderRequest {
    /// Validates and merges `(product_id, quantity)` lines and the payment's fields.
    pub fn parse(
        items: &[(i64, i64)],
        user_coupon_id: Option<i64>,
        method: &str,
        card_type: Option<&str>,
        card_no: Option<&str>,
    ) -> Result<Self> {
        let mut errors = Vec::new();
        if items.is_empty() || items.len() > MAX_LINES {
            errors.push(FieldError::new(
                "items",
                format!("must have 1-{MAX_LINES} lines"),
            ));
        }
        let mut lines = BTreeMap::new();
        for (i, &(product_id, quantity)) in items.iter().enumerate() {
            if !(1..=MAX_QUANTITY).contains(&quantity) {
                errors.push(FieldError::new(
                    format!("items[{i}].quantity"),
                    format!("must be 1-{MAX_QUANTITY}"),
                ));
            }
            if product_id <= 0 {
                errors.push(FieldError::new(
                    format!("items[{i}].product_id"),
                    "must be a product id",
                ));
            }
            *lines.entry(product_id).or_insert(0) += quantity;
        }
        if lines.values().any(|q| *q > MAX_QUANTITY) {
            errors.push(FieldError::new(
                "items",
                format!("a product's total quantity must be at most {MAX_QUANTITY}"),
            ));
        }
        let payment = match method.parse::<PaymentKind>() {
            Ok(PaymentKind::Point) => {
                if card_type.is_some() || card_no.is_some() {
                    errors.push(FieldError::new(
                        "payment",
                        "card_type and card_no are only for CARD payments",
                    ));
                }
                Some(PaymentMethod::Point)
            }
            Ok(PaymentKind::Card) => parse_card(card_type, card_no, "payment.", &mut errors)
                .map(|(card_type, card_no)| PaymentMethod::Card { card_type, card_no }),
            Err(_) => {
                errors.push(FieldError::new(
                    "payment.method",
                    format!("must be {}", PaymentKind::expected()),
                ));
                None
            }
        };
        check(errors)?;
        Ok(Self {
            lines,
            user_coupon_id,
            payment: payment.expect("a valid payment when no field failed"),
        })
    }

    /// SHA-256 of the canonical (merged, sorted) request, for idempotency-key replays.
    pub fn hash(&self) -> String {
        let (card_type, card_no) = match &self.payment {
            PaymentMethod::Point => (None, None),
            // Masked: the full number is never kept, not even hashed.
            PaymentMethod::Card { card_type, card_no } => {
                (Some(card_type.as_str()), Some(card_no.masked()))
            }
        };
        let canonical = serde_json::json!({
            "items": self.lines.iter().collect::<Vec<_>>(),
            "user_coupon_id": self.user_coupon_id,
            "payment": self.payment.kind().as_str(),
            "card_type": card_type,
            "card_no": card_no,
        });
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

/// Validates a card's type and number, reporting each invalid one under `prefix` + its name.
pub fn parse_card(
    card_type: Option<&str>,
    card_no: Option<&str>,
    prefix: &str,
    errors: &mut Vec<FieldError>,
) -> Option<(CardType, CardNumber)> {
    let card_type = card_type.and_then(|t| t.parse::<CardType>().ok());
    if card_type.is_none() {
        errors.push(FieldError::new(
            format!("{prefix}card_type"),
            format!("must be {}", CardType::expected()),
        ));
    }
    let card_no = card_no.and_then(CardNumber::parse);
    if card_no.is_none() {
        errors.push(FieldError::new(
            format!("{prefix}card_no"),
            "must look like ####-####-####-####",
        ));
    }
    card_type.zip(card_no)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Error;

    #[test]
    fn lines_are_merged_and_payments_parsed() {
        let req = OrderRequest::parse(&[(2, 1), (1, 3), (2, 4)], None, "POINT", None, None)
            .expect("valid");
        assert_eq!(req.lines, BTreeMap::from([(1, 3), (2, 5)]));
        assert!(matches!(req.payment, PaymentMethod::Point));

        let card = OrderRequest::parse(
            &[(1, 1)],
            None,
            "CARD",
            Some("KB"),
            Some("1234-5678-9012-3456"),
        )
        .expect("valid");
        assert!(matches!(
            card.payment,
            PaymentMethod::Card {
                card_type: CardType::Kb,
                ..
            }
        ));
        assert!(!format!("{card:?}").contains("5678"), "{card:?}");
    }

    #[test]
    fn every_invalid_field_is_reported() {
        let Err(Error::Invalid(errors)) =
            OrderRequest::parse(&[(0, 0)], None, "CARD", Some("VISA"), Some("1234"))
        else {
            panic!("expected a validation error");
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "items[0].quantity",
                "items[0].product_id",
                "payment.card_type",
                "payment.card_no"
            ]
        );
        assert!(matches!(
            OrderRequest::parse(&[(1, 1)], None, "CASH", None, None),
            Err(Error::Invalid(_))
        ));
    }
}
