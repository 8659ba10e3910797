//! Safety numbers: what two members compare (in person, on a call) to know
//! that no one sits between them.
//!
//! As Signal computes its numbers (version 0 of its "numeric fingerprint"),
//! each side's half is `SHA-512` iterated 5,200 times over that account's
//! identity keys and id, of which 30 bytes become six groups of five digits;
//! the two halves are ordered by account id, so both members see the same
//! sixty digits. A Postern account has one identity key per device, so a
//! half covers all of the account's device keys, sorted: a new or removed
//! device changes the number, as it should — it is a new key that can read
//! the conversation.

use postern_proto::ids::AccountId;
use sha2::{Digest, Sha512};

const ITERATIONS: usize = 5200;
const VERSION: [u8; 2] = [0, 0];

/// Thirty digits for one account.
fn half(account: AccountId, keys: &[[u8; 32]]) -> String {
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    let joined: Vec<u8> = keys.concat();
    let mut hash = Sha512::new()
        .chain_update(VERSION)
        .chain_update(&joined)
        .chain_update(account.0)
        .finalize();
    for _ in 0..ITERATIONS {
        hash = Sha512::new()
            .chain_update(hash)
            .chain_update(&joined)
            .finalize();
    }
    hash[..30]
        .chunks(5)
        .map(|c| {
            let n = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect()
}

/// The safety number of two accounts, each with its devices' identity
/// keys: sixty digits, the same whichever side computes it.
pub fn safety_number(a: (AccountId, &[[u8; 32]]), b: (AccountId, &[[u8; 32]])) -> String {
    let (first, second) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    half(first.0, first.1) + &half(second.0, second.1)
}

/// Digits in groups of five, four groups per line, as Signal shows them.
pub fn display(number: &str) -> String {
    let groups: Vec<&str> = number
        .as_bytes()
        .chunks(5)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect();
    groups
        .chunks(4)
        .map(|line| line.join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_compute_the_same_number() {
        let alice = AccountId([1; 16]);
        let bob = AccountId([2; 16]);
        let ka = [[7u8; 32], [8; 32]];
        let kb = [[9u8; 32]];
        let n1 = safety_number((alice, &ka), (bob, &kb));
        let n2 = safety_number((bob, &kb), (alice, &[[8u8; 32], [7; 32]]));
        assert_eq!(n1, n2, "order of sides and of keys does not matter");
        assert_eq!(n1.len(), 60);
        assert!(n1.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(display(&n1).lines().count(), 3);
    }

    #[test]
    fn any_key_change_changes_the_number() {
        let alice = AccountId([1; 16]);
        let bob = AccountId([2; 16]);
        let base = safety_number((alice, &[[7; 32]]), (bob, &[[9; 32]]));
        let new_device = safety_number((alice, &[[7; 32], [6; 32]]), (bob, &[[9; 32]]));
        let new_key = safety_number((alice, &[[7; 32]]), (bob, &[[10; 32]]));
        assert_ne!(base, new_device);
        assert_ne!(base, new_key);
        assert_eq!(base[30..], new_device[30..], "bob's half is unchanged");
    }
}
