//! Fly app names for projects: `<prefix><project id>`, made a valid DNS label.

use tb_core::domain::ProjectId;
use tb_core::encoding::sha256_hex;

/// The longest app name (it is the first label of `<app>.fly.dev`).
pub const MAX_APP_NAME: usize = 63;

/// `turbobackend-proj-1a2b…` for `proj_1a2b…`: lowercase, `_` as `-`. When that would be
/// ambiguous (upper case letters, two ids mapping to the same name) or too long, or would
/// end in `-`, a hash of the id is appended so distinct projects never share an app.
pub fn app_name(prefix: &str, project: &ProjectId) -> String {
    let id = project.as_str();
    let plain = format!("{prefix}{}", id.to_ascii_lowercase().replace('_', "-"));
    let lossless = !id.bytes().any(|b| b.is_ascii_uppercase() || b == b'-');
    if lossless && plain.len() <= MAX_APP_NAME && !plain.ends_with('-') {
        return plain;
    }
    let hash = &sha256_hex(id.as_bytes())[..8];
    let keep = MAX_APP_NAME - hash.len() - 1;
    let head: String = plain.chars().take(keep).collect();
    format!("{}-{hash}", head.trim_end_matches('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_are_dns_labels_and_distinct_per_project() {
        let p = |s: &str| ProjectId::parse(s).unwrap();
        assert_eq!(
            app_name("turbobackend-", &p("proj_1a2b")),
            "turbobackend-proj-1a2b"
        );
        let a = app_name("turbobackend-", &p("proj-x"));
        let b = app_name("turbobackend-", &p("proj_x"));
        assert_ne!(a, b);
        let c = app_name("turbobackend-", &p("Proj_X"));
        assert_ne!(c, b);
        let long = app_name("turbobackend-", &p(&"a".repeat(64)));
        assert!(long.len() <= MAX_APP_NAME, "{long}");
        for name in [a, c, long, app_name("turbobackend-", &p("x_"))] {
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !name.ends_with('-'),
                "{name}"
            );
        }
    }
}
