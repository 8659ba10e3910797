//! Usernames: optional, unique, 3 to 32 characters of lowercase ASCII
//! letters, digits and `_`, starting with a letter. A leading `@` is
//! accepted and dropped; upper case is folded to lower case.

/// Why a username was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("usernames are 3 to 32 characters: letters a-z, digits and '_', starting with a letter")]
pub struct UsernameError;

/// Validates and normalizes a username.
pub fn normalize(input: &str) -> Result<String, UsernameError> {
    let name = input.trim().trim_start_matches('@').to_ascii_lowercase();
    let ok_len = (3..=32).contains(&name.len());
    let ok_first = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok_len && ok_first && ok_chars {
        Ok(name)
    } else {
        Err(UsernameError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_folds() {
        assert_eq!(normalize("@Alice_99").unwrap(), "alice_99");
        assert_eq!(normalize("bob").unwrap(), "bob");
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "ab",
            "9lives",
            "_x1",
            "al ice",
            "ali-ce",
            "алиса",
            &"a".repeat(33),
        ] {
            assert_eq!(normalize(bad), Err(UsernameError), "{bad:?}");
        }
    }
}
