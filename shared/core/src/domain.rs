//! Requests, projects and their lifecycle.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A string newtype stored as its string (`#[serde(try_from = "String", into = "String")]`):
/// read back through its `parse`, so a stored value is checked like a new one.
macro_rules! parsed_string {
    ($name:ident, $error:ty) => {
        impl TryFrom<String> for $name {
            type Error = $error;
            fn try_from(s: String) -> Result<Self, $error> {
                $name::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}
pub(crate) use parsed_string;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// Accepts 1-64 characters of `[A-Za-z0-9_-]`: safe in keys, URLs, resource
            /// names and log lines.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                    return Err(IdError { kind: stringify!($name), value: s.chars().take(80).collect() });
                }
                Ok($name(s.to_string()))
            }

            /// A fresh random id, `<prefix>_<26 hex chars>`.
            pub fn generate() -> Self {
                $name(format!("{}_{}", $prefix, crate::ids::random_hex(13)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        parsed_string!($name, IdError);
    };
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("invalid {kind} `{value}`: use 1-64 characters of letters, digits, `_` and `-`")]
pub struct IdError {
    pub kind: &'static str,
    pub value: String,
}

id_type!(
    /// One `execute_request` call and everything it caused.
    RequestId, "req"
);
id_type!(
    /// A backend being built; requests change it over time.
    ProjectId, "proj"
);
id_type!(
    /// The platform user a request is billed to.
    UserId, "user"
);

/// Where a request is in its life. Moves only forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Queued,
    Running,
    Finalizing,
    Succeeded,
    Failed,
    Cancelled,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Cancelled)
    }
}

/// A short description of what the user wants built, as given to `execute_request`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Description(String);

impl Description {
    pub const MAX_LEN: usize = 8_000;

    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("description is empty: say what the backend should do".into());
        }
        if t.len() > Self::MAX_LEN {
            return Err(format!(
                "description is {} bytes; the limit is {}",
                t.len(),
                Self::MAX_LEN
            ));
        }
        Ok(Description(t.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

parsed_string!(Description, String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_safe_characters_only() {
        assert!(ProjectId::parse("proj_789").is_ok());
        assert!(ProjectId::parse("a b").is_err());
        assert!(ProjectId::parse("x'; DROP DATABASE y; --").is_err());
        assert!(ProjectId::parse("").is_err());
        let id = RequestId::generate();
        assert!(id.as_str().starts_with("req_") && RequestId::parse(id.as_str()).is_ok());
        assert_ne!(RequestId::generate(), RequestId::generate());
    }

    #[test]
    fn descriptions_are_trimmed_and_bounded() {
        assert_eq!(Description::parse("  hi ").unwrap().as_str(), "hi");
        assert!(Description::parse("   ").is_err());
        assert!(Description::parse(&"x".repeat(9000)).is_err());
    }
}
