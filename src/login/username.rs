//! Username rules: 3–32 characters of `a-z 0-9 . _ -`, unique regardless of case.

/// Shortest username.
pub const USERNAME_LEN_MIN: usize = 3;
/// Longest username.
pub const USERNAME_LEN_MAX: usize = 32;
/// Shortest password (checked by the host: the server never sees the password).
pub const PASSWORD_LEN_MIN: usize = 8;

/// Why a username is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    /// Too short or too long.
    #[error("a username has {USERNAME_LEN_MIN} to {USERNAME_LEN_MAX} characters, this one has {0}")]
    Length(usize),
    /// A character outside the allowed set.
    #[error("a username may only contain letters a-z, digits, '.', '_' and '-' (found {0:?})")]
    Character(char),
}

/// Checks a username and returns its canonical (lower-case) form, the account's key.
pub fn canonical(name: &str) -> Result<String, UsernameError> {
    let n = name.chars().count();
    if !(USERNAME_LEN_MIN..=USERNAME_LEN_MAX).contains(&n) {
        return Err(UsernameError::Length(n));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(UsernameError::Character(c));
    }
    Ok(name.to_ascii_lowercase())
}

/// Checks a password's length before anything is sent.
pub fn check_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < PASSWORD_LEN_MIN {
        return Err(format!("a password has at least {PASSWORD_LEN_MIN} characters, this one has {n}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rules() {
        assert_eq!(canonical("Alice.B-2_x").unwrap(), "alice.b-2_x");
        assert_eq!(canonical("ab"), Err(UsernameError::Length(2)));
        assert_eq!(canonical(&"a".repeat(33)), Err(UsernameError::Length(33)));
        assert_eq!(canonical("al ice"), Err(UsernameError::Character(' ')));
        assert_eq!(canonical("ålice"), Err(UsernameError::Character('å')));
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
    }

    proptest! {
        #[test]
        fn canonical_is_idempotent_and_case_insensitive(s in "[A-Za-z0-9._-]{3,32}") {
            let c = canonical(&s).unwrap();
            prop_assert_eq!(canonical(&c).unwrap(), c.clone());
            prop_assert_eq!(canonical(&s.to_ascii_uppercase()).unwrap(), c);
        }
    }
}
