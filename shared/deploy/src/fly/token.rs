//! The forms of a Fly token flyctl sends, after fly-go's `tokens/tokens.go`: the token
//! (`FLY_API_TOKEN`, as `fly tokens create` prints it) may carry an `FlyV1` or `Bearer`
//! scheme and hold several comma-separated tokens; macaroons start with `fm1r_`, `fm1a_` or
//! `fm2_`, anything else is a user (OAuth) token.
//!
//! - The Machines API gets `FlapsHeader()`: `FlyV1 <macaroons>` when there are macaroons,
//!   else `Bearer <user tokens>`.
//! - The registry gets `Docker()` as the password of user `x` (flyctl's
//!   `internal/build/imgsrc/docker.go` `registryAuth`, and `fly auth docker` writing
//!   `"auth": base64("x:" + Tokens.Docker())`): the same tokens without any scheme.

/// A parsed Fly token.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct FlyTokens {
    macaroons: Vec<String>,
    user_tokens: Vec<String>,
}

impl FlyTokens {
    /// fly-go `tokens.Parse`: strip the scheme, split on `,`, sort by prefix.
    pub(crate) fn parse(token: &str) -> FlyTokens {
        let mut parsed = FlyTokens {
            macaroons: Vec::new(),
            user_tokens: Vec::new(),
        };
        for tok in strip_scheme(token).split(',') {
            let tok = tok.trim();
            if tok.is_empty() {
                continue;
            }
            match tok.split_once('_').map(|(prefix, _)| prefix) {
                Some("fm1r" | "fm1a" | "fm2") => parsed.macaroons.push(tok.to_owned()),
                _ => parsed.user_tokens.push(tok.to_owned()),
            }
        }
        parsed
    }

    /// fly-go `normalized(false, …)`: the macaroons if there are any, else the user tokens.
    fn normalized(&self) -> String {
        if self.macaroons.is_empty() {
            self.user_tokens.join(",")
        } else {
            self.macaroons.join(",")
        }
    }

    /// The `Authorization` value for the Machines API (fly-go `FlapsHeader`).
    pub(crate) fn api_header(&self) -> String {
        let scheme = if self.macaroons.is_empty() {
            "Bearer"
        } else {
            "FlyV1"
        };
        format!("{scheme} {}", self.normalized())
    }

    /// The registry password for user `x` (fly-go `Docker`).
    pub(crate) fn docker(&self) -> String {
        self.normalized()
    }
}

/// fly-go `StripAuthorizationScheme`: drops leading `Bearer ` / `FlyV1 ` (any case, any
/// number of them).
fn strip_scheme(token: &str) -> &str {
    let token = token.trim();
    match token.split_once(' ') {
        Some((prefix, rest))
            if prefix.trim().eq_ignore_ascii_case("bearer")
                || prefix.trim().eq_ignore_ascii_case("flyv1") =>
        {
            strip_scheme(rest)
        }
        _ => token,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_sent_in_flyctls_forms() {
        let t = FlyTokens::parse("FlyV1 fm2_abc,fm2_def");
        assert_eq!(t.api_header(), "FlyV1 fm2_abc,fm2_def");
        assert_eq!(t.docker(), "fm2_abc,fm2_def");

        // A bare macaroon still goes out under the FlyV1 scheme.
        let t = FlyTokens::parse("fm2_abc");
        assert_eq!(t.api_header(), "FlyV1 fm2_abc");
        assert_eq!(t.docker(), "fm2_abc");

        let t = FlyTokens::parse("  Bearer  user-token ");
        assert_eq!(t.api_header(), "Bearer user-token");
        assert_eq!(t.docker(), "user-token");

        // Macaroons win over user tokens.
        let t = FlyTokens::parse("FlyV1 fm1r_a, oauth-b");
        assert_eq!(t.docker(), "fm1r_a");
        assert_eq!(strip_scheme("bearer FlyV1 fm2_x"), "fm2_x");
    }
}
