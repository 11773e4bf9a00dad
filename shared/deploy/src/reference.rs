//! Image references: `node:20-slim`, `127.0.0.1:5056/base/node:20`,
//! `registry.fly.io/my-app@sha256:…`, parsed the way Docker does.

use std::fmt;
use std::str::FromStr;

use crate::DeployError;

/// Docker Hub, as written in references.
pub const DOCKER_HUB: &str = "docker.io";

/// A registry, a repository in it, and a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Host and optional port as written in references (`docker.io`, `127.0.0.1:5056`).
    pub registry: String,
    /// `library/node`, `my-app`.
    pub repository: String,
    /// A tag (`20-slim`) or a digest (`sha256:…`).
    pub reference: String,
}

impl ImageRef {
    pub fn new(
        registry: impl Into<String>,
        repository: impl Into<String>,
        reference: impl Into<String>,
    ) -> Result<Self, DeployError> {
        let image = ImageRef {
            registry: registry.into(),
            repository: repository.into(),
            reference: reference.into(),
        };
        image.validate()?;
        Ok(image)
    }

    /// True when [`ImageRef::reference`] is a digest rather than a tag.
    pub fn is_digest(&self) -> bool {
        self.reference.contains(':')
    }

    fn validate(&self) -> Result<(), DeployError> {
        let bad = |why: &str| {
            Err(DeployError::Config(format!(
                "image reference {self}: {why}"
            )))
        };
        if self.registry.is_empty()
            || !self
                .registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return bad("bad registry host");
        }
        if self.repository.is_empty()
            || self.repository.split('/').any(|c| {
                c.is_empty()
                    || !c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            })
        {
            return bad("a repository is lowercase path components of [a-z0-9._-]");
        }
        if self.is_digest() {
            let hex = self.reference.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad("only sha256 digests are supported");
            }
        } else if self.reference.is_empty()
            || self.reference.len() > 128
            || !self
                .reference
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return bad("bad tag");
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = DeployError;

    fn from_str(s: &str) -> Result<Self, DeployError> {
        let (name, reference) = match s.split_once('@') {
            Some((name, digest)) => (name, digest.to_owned()),
            None => {
                let last_slash = s.rfind('/').map_or(0, |i| i + 1);
                match s[last_slash..].rfind(':') {
                    Some(i) => (&s[..last_slash + i], s[last_slash + i + 1..].to_owned()),
                    None => (s, "latest".to_owned()),
                }
            }
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        ImageRef::new(registry, repository, reference)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = if self.is_digest() { '@' } else { ':' };
        write!(
            f,
            "{}/{}{sep}{}",
            self.registry, self.repository, self.reference
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_like_docker_does() {
        let r: ImageRef = "node:20-slim".parse().unwrap();
        assert_eq!(r.to_string(), "docker.io/library/node:20-slim");
        let r: ImageRef = "127.0.0.1:5056/base/node".parse().unwrap();
        assert_eq!(
            (
                r.registry.as_str(),
                r.repository.as_str(),
                r.reference.as_str()
            ),
            ("127.0.0.1:5056", "base/node", "latest")
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        let r: ImageRef = format!("registry.fly.io/my-app@{digest}").parse().unwrap();
        assert!(r.is_digest());
        assert_eq!(r.to_string(), format!("registry.fly.io/my-app@{digest}"));
        assert!("Node:20".parse::<ImageRef>().is_err());
        assert!("x/y@sha256:zz".parse::<ImageRef>().is_err());
        assert!("localhost:5000/a/b:v1".parse::<ImageRef>().is_ok());
    }
}
