//! Splitting an amount in integer minor units by the largest-remainder method.
//!
//! Every share of a discount, of points, of a payment or of a refund is allocated here, so that
//! shares always add up to the amount exactly and the same inputs always give the same shares:
//! each share is first floored (`amount × weight ÷ total weight`), then the units left over go
//! one each to the largest fractional remainders, ties to the earlier weight. A share never
//! exceeds its weight when the amount does not exceed the total weight.

/// `amount` split in proportion to `weights` (all ≥ 0). With no weight at all (every weight
/// zero), the amount goes to the first weight; `amount` must then be 0 for any share to respect
/// its weight, which callers guarantee (a discount never exceeds the total it discounts).
///
/// # Panics
/// If `amount` or a weight is negative: shares of negative amounts are not defined here.
pub fn largest_remainder(amount: i64, weights: &[i64]) -> Vec<i64> {
    assert!(amount >= 0, "amount {amount} is negative");
    assert!(
        weights.iter().all(|w| *w >= 0),
        "a weight is negative: {weights:?}"
    );
    let total: i128 = weights.iter().map(|w| i128::from(*w)).sum();
    if weights.is_empty() {
        return Vec::new();
    }
    if total == 0 {
        let mut shares = vec![0; weights.len()];
        shares[0] = amount;
        return shares;
    }
    let amount_wide = i128::from(amount);
    let mut shares = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    for (i, w) in weights.iter().enumerate() {
        let exact = amount_wide * i128::from(*w);
        shares.push(i64::try_from(exact / total).expect("a share is at most the amount"));
        remainders.push((exact % total, i));
    }
    let mut left = amount - shares.iter().sum::<i64>();
    // Largest remainder first; among equal remainders, the earlier weight.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in remainders {
        if left == 0 {
            break;
        }
        shares[i] += 1;
        left -= 1;
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_splits() {
        assert_eq!(largest_remainder(100, &[1, 1, 1]), vec![34, 33, 33]);
        assert_eq!(largest_remainder(10, &[1, 2, 3]), vec![2, 3, 5]);
        assert_eq!(largest_remainder(0, &[5, 7]), vec![0, 0]);
        assert_eq!(largest_remainder(7, &[0, 3, 0]), vec![0, 7, 0]);
        assert_eq!(largest_remainder(0, &[0, 0]), vec![0, 0]);
        assert_eq!(largest_remainder(5, &[]), Vec::<i64>::new());
        // 3,000 off 10,000 + 20,000 + 30,000 + 1: the remainders decide the last units.
        assert_eq!(
            largest_remainder(3_000, &[10_000, 20_000, 30_000, 1]),
            vec![500, 1_000, 1_500, 0]
        );
        // The biggest amounts the API accepts do not overflow.
        let big = 1_000_000_000 * 1_000;
        assert_eq!(largest_remainder(big, &[big, big]), vec![big / 2, big / 2]);
    }

    proptest! {
        #[test]
        fn shares_add_up_and_stay_within_their_weights(
            weights in prop::collection::vec(0i64..=1_000_000_000_000, 1..20),
            fraction in 0.0f64..=1.0,
        ) {
            let total: i64 = weights.iter().sum();
            // Any amount up to the total weight, the edges included.
            let amount = ((total as f64) * fraction) as i64;
            let amount = amount.min(total);
            let shares = largest_remainder(amount, &weights);
            prop_assert_eq!(shares.len(), weights.len());
            prop_assert_eq!(shares.iter().sum::<i64>(), amount);
            for (share, weight) in shares.iter().zip(&weights) {
                prop_assert!(*share >= 0 && share <= weight, "{share} of weight {weight}");
                // Within one unit of the exact proportion.
                if total > 0 {
                    let exact = i128::from(amount) * i128::from(*weight);
                    let floor = exact / i128::from(total);
                    prop_assert!(i128::from(*share) - floor <= 1 && i128::from(*share) >= floor);
                }
            }
        }

        #[test]
        fn the_same_inputs_give_the_same_shares(
            weights in prop::collection::vec(0i64..=10_000, 1..10),
            amount in 0i64..=10_000,
        ) {
            prop_assert_eq!(largest_remainder(amount, &weights), largest_remainder(amount, &weights));
        }
    }
}
