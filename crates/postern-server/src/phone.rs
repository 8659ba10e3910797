//! Phone numbers: validation and normalization to E.164.
//!
//! Numbers must be given in international form (a leading `+` and the
//! country code) because the server cannot guess a member's country.
//! Phone numbers are personal data: nothing here logs them.

/// Why a phone number was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PhoneError {
    /// Not in international form.
    #[error("phone numbers need the international form with the country code, like +14155552671")]
    NotInternational,
    /// Could not be parsed or is not a valid number.
    #[error("{0:?} is not a valid phone number")]
    Invalid(String),
}

/// Normalizes `input` (spaces, dashes, dots and brackets allowed) to E.164.
pub fn normalize(input: &str) -> Result<String, PhoneError> {
    let trimmed = input.trim();
    if trimmed.len() > 64 {
        return Err(PhoneError::Invalid(trimmed.chars().take(64).collect()));
    }
    if !trimmed.starts_with('+') {
        return Err(PhoneError::NotInternational);
    }
    let number =
        phonenumber::parse(None, trimmed).map_err(|_| PhoneError::Invalid(trimmed.to_owned()))?;
    if !phonenumber::is_valid(&number) {
        return Err(PhoneError::Invalid(trimmed.to_owned()));
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_common_notations() {
        assert_eq!(normalize("+1 (415) 555-2671").unwrap(), "+14155552671");
        assert_eq!(normalize(" +7 912 345-67-89 ").unwrap(), "+79123456789");
        assert_eq!(normalize("+44 20 7946 0958").unwrap(), "+442079460958");
    }

    #[test]
    fn rejects_bad_numbers_clearly() {
        assert_eq!(normalize("4155552671"), Err(PhoneError::NotInternational));
        assert!(matches!(normalize("+1 555"), Err(PhoneError::Invalid(_))));
        assert!(matches!(normalize("+abc"), Err(PhoneError::Invalid(_))));
        assert!(matches!(
            normalize(&"+1".repeat(100)),
            Err(PhoneError::Invalid(_))
        ));
    }
}
