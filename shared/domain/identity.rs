//! Who may do what, as the wire carries it: operator roles, the names of operator tokens,
//! and the requests that make them. Checked here once (`TryFrom<pb::X>`).

use std::fmt;

use crate::error::Error;
use crate::pb;

/// Longest name of an operator token.
pub const MAX_TOKEN_NAME_LEN: usize = 64;
/// Most named operator tokens a master keeps.
pub const MAX_TOKENS: usize = 1000;
/// Names that stand for the credentials the master has without `token create`: the
/// bootstrap admin token (`<data-dir>/token`), its own REPL, the join token.
pub const RESERVED_TOKEN_NAMES: [&str; 4] = ["admin", "repl", "join", "anonymous"];

/// What an operator token may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads only: workers, tasks, logs, status.
    Viewer,
    /// Also submits and cancels tasks and drains workers.
    Operator,
    /// Everything, tokens included.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Operator, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses a role, saying which ones there are when it is none of them.
pub fn parse_role(text: &str) -> Result<Role, Error> {
    Role::parse(text).ok_or_else(|| {
        Error::invalid(format!(
            "role '{}' is not one: use admin, operator or viewer",
            crate::text::clip(text)
        ))
    })
}

/// Checks the name of an operator token: 1..=64 of letters, digits, `.`, `_`, `-`,
/// starting with a letter or digit, and not one of [`RESERVED_TOKEN_NAMES`].
pub fn validate_token_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::invalid("token name is empty"));
    }
    if name.len() > MAX_TOKEN_NAME_LEN {
        return Err(Error::invalid(format!(
            "token name is {} characters long; at most {MAX_TOKEN_NAME_LEN} are allowed",
            name.len()
        )));
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !name.chars().all(ok_char) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(Error::invalid(format!(
            "token name '{}' must be letters, digits, '.', '_' and '-', starting with a \
             letter or a digit",
            crate::text::clip(&name.escape_debug().to_string())
        )));
    }
    // Taken, as a name another token has is (ALREADY_EXISTS, HTTP 409).
    if RESERVED_TOKEN_NAMES.contains(&name) {
        return Err(Error::AlreadyExists(format!(
            "token name '{name}' is taken by the master itself ({}); choose another",
            RESERVED_TOKEN_NAMES.join(", ")
        )));
    }
    Ok(())
}

/// A token to be made: `token create NAME --role ROLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub name: String,
    pub role: Role,
}

impl TryFrom<pb::CreateTokenRequest> for NewToken {
    type Error = Error;

    fn try_from(req: pb::CreateTokenRequest) -> Result<Self, Error> {
        validate_token_name(&req.name)?;
        Ok(NewToken {
            role: parse_role(&req.role)?,
            name: req.name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parsed() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        let err = parse_role("root").unwrap_err().to_string();
        assert!(err.contains("admin, operator or viewer"), "{err}");
    }

    #[test]
    fn token_names_are_bounded_and_reserved_ones_refused() {
        let make = |name: &str, role: &str| {
            NewToken::try_from(pb::CreateTokenRequest {
                name: name.into(),
                role: role.into(),
            })
        };
        assert_eq!(
            make("ci-bot", "operator").unwrap(),
            NewToken {
                name: "ci-bot".into(),
                role: Role::Operator
            }
        );
        for bad in ["", "-x", "a b", "admin", "repl", "join"] {
            assert!(make(bad, "viewer").is_err(), "{bad:?}");
        }
        let long = "x".repeat(10_000);
        let err = make(&long, "viewer").unwrap_err().to_string();
        assert!(err.contains("at most 64") && err.len() < 200, "{err}");
        assert!(make("ok", "god").is_err());
    }
}
