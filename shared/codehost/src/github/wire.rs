//! The parts of GitHub's JSON answers this adapter reads.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub(crate) struct User {
    pub login: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Repository {
    pub name: String,
    pub owner: User,
    pub html_url: String,
    #[serde(default)]
    pub default_branch: Option<String>,
    #[serde(default)]
    pub private: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Sha {
    pub sha: String,
}

/// `GET /repos/{o}/{r}/git/ref/{ref}`.
#[derive(Debug, Deserialize)]
pub(crate) struct GitRef {
    pub object: Sha,
}

/// `GET`/`POST /repos/{o}/{r}/git/commits`.
#[derive(Debug, Deserialize)]
pub(crate) struct Commit {
    pub sha: String,
    pub tree: Sha,
    #[serde(default)]
    pub parents: Vec<Sha>,
}

/// `GET /repos/{o}/{r}/git/trees/{sha}?recursive=1`.
#[derive(Debug, Deserialize)]
pub(crate) struct Tree {
    #[serde(default)]
    pub tree: Vec<TreeItem>,
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct TreeItem {
    #[serde(default)]
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub sha: String,
}

/// `PUT /repos/{o}/{r}/contents/{path}`.
#[derive(Debug, Deserialize)]
pub(crate) struct ContentsPut {
    pub commit: Commit,
}
