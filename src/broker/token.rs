//! The broker's token: 32 random bytes drawn at every start, shown as hex, that a
//! TCP client proves it may connect with.

use std::fmt;

/// Random bytes in a token: far beyond guessing, even at a million tries a second.
const TOKEN_BYTES: usize = 32;

#[derive(Clone)]
pub(crate) struct Token(String);

impl Token {
    /// A new token from the operating system's random source.
    pub(crate) fn generate() -> std::io::Result<Token> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
        Ok(Token(bytes.iter().map(|byte| format!("{byte:02x}")).collect()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares in time that depends on the length alone (which is public), never on
    /// where the first wrong character is, so timing tells an attacker nothing.
    pub(crate) fn matches(&self, offered: &str) -> bool {
        let (expected, offered) = (self.0.as_bytes(), offered.as_bytes());
        if expected.len() != offered.len() {
            return false;
        }
        let difference = expected.iter().zip(offered).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0
    }
}

/// Never printed by accident: logs and panics show that a token exists, not what it is.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex_and_match_only_themselves() {
        let (a, b) = (Token::generate().unwrap(), Token::generate().unwrap());
        assert_eq!(a.as_str().len(), 2 * TOKEN_BYTES);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.as_str(), b.as_str());
        assert!(a.matches(a.as_str()));
        assert!(!a.matches(b.as_str()));
        assert!(!a.matches(""));
        assert!(!a.matches(&a.as_str()[1..]));
        let mut last_wrong = a.as_str().to_owned();
        let flipped = if last_wrong.ends_with('0') { '1' } else { '0' };
        last_wrong.pop();
        last_wrong.push(flipped);
        assert!(!a.matches(&last_wrong));
        assert_eq!(format!("{a:?}"), "Token(..)");
    }
}
