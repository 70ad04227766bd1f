//! Credentials for container registries (`SLIPWAY_REGISTRY_AUTH`): a Docker-style
//! `config.json`, the file `docker login` and `podman login --authfile` write — per registry
//! under `auths`, `auth` (base64 of `user:password`) or `username` and `password`. Read at each
//! pull or push, so rotated credentials apply without a restart.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use serde::Deserialize;

/// Docker Hub, as image references without a registry name it.
const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read the registry credentials {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the registry credentials {path} are not a Docker config.json: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the registry credentials {path} hold no user name and password for {registry} (credential helpers and tokens are not supported)")]
    Unusable { path: PathBuf, registry: String },
}

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// As the file names it (`registry.example.com`, `127.0.0.1:5000`).
    pub registry: String,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The credentials file.
#[derive(Debug, Clone)]
pub struct AuthFile {
    path: PathBuf,
}

#[derive(Deserialize)]
struct ConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl Entry {
    fn credentials(self, registry: &str) -> Option<Credentials> {
        let (username, password) = match (self.auth, self.username, self.password) {
            (Some(auth), _, _) if !auth.is_empty() => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()?;
                let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
                (user.to_string(), password.to_string())
            }
            (_, Some(user), Some(password)) => (user, password),
            _ => return None,
        };
        Some(Credentials {
            registry: registry.to_string(),
            username,
            password,
        })
    }
}

impl AuthFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file once (a start-up check); returns how many registries it names.
    pub fn check(&self) -> Result<usize, AuthFileError> {
        Ok(self.read()?.auths.len())
    }

    /// The credentials for the registry `image` comes from; `None` if the file names none
    /// for it (the engine then goes without).
    pub fn for_image(&self, image: &str) -> Result<Option<Credentials>, AuthFileError> {
        let registry = registry_of(image);
        let file = self.read()?;
        let Some((name, entry)) = file
            .auths
            .into_iter()
            .find(|(name, _)| normalize(name) == registry)
        else {
            return Ok(None);
        };
        match entry.credentials(&name) {
            Some(credentials) => Ok(Some(credentials)),
            None => Err(AuthFileError::Unusable {
                path: self.path.clone(),
                registry: name,
            }),
        }
    }

    /// Every registry's credentials (a build's base images may come from any of them);
    /// entries without a user name and password are left out.
    pub fn all(&self) -> Result<Vec<Credentials>, AuthFileError> {
        let file = self.read()?;
        Ok(file
            .auths
            .into_iter()
            .filter_map(|(name, entry)| entry.credentials(&name))
            .collect())
    }

    fn read(&self) -> Result<ConfigJson, AuthFileError> {
        let text = std::fs::read(&self.path).map_err(|source| AuthFileError::Read {
            path: self.path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| AuthFileError::Parse {
            path: self.path.clone(),
            source,
        })
    }
}

/// The registry of an image reference, by Docker's rule: the first part of the name is a
/// registry when it has a dot or a port, or is `localhost`; otherwise the image is on Docker
/// Hub.
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => normalize(first),
        _ => DOCKER_HUB.to_string(),
    }
}

/// A registry as `config.json` may name it (`https://index.docker.io/v1/`, `Registry.Example.com`)
/// reduced to its host and port, Docker Hub's aliases to one name.
fn normalize(name: &str) -> String {
    let name = name
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = name.split('/').next().unwrap_or(name).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str) -> (tempfile::TempDir, AuthFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        (dir, AuthFile::new(path))
    }

    #[test]
    fn the_registry_of_an_image_follows_dockers_rule() {
        assert_eq!(registry_of("nginx"), "docker.io");
        assert_eq!(registry_of("library/nginx:1.27"), "docker.io");
        assert_eq!(registry_of("acme/shop@sha256:abc"), "docker.io");
        assert_eq!(registry_of("ghcr.io/acme/shop:v1"), "ghcr.io");
        assert_eq!(registry_of("127.0.0.1:5000/slipway/p:d"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/slipway/p:d"), "localhost");
        assert_eq!(
            registry_of("Registry.Example.com/a"),
            "registry.example.com"
        );
    }

    #[test]
    fn credentials_are_found_by_registry_in_either_form() {
        // "user:pa:ss" — a password may hold a colon.
        let (_dir, auth) = file(
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "dXNlcjpwYTpzcw=="},
                "registry.example.com": {"username": "ci", "password": "secret"},
                "127.0.0.1:5000": {"auth": "YTpi"}
            }, "credsStore": "desktop"}"#,
        );
        let hub = auth.for_image("acme/shop:v1").unwrap().unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("user", "pa:ss")
        );
        let example = auth
            .for_image("registry.example.com/acme/shop:v1")
            .unwrap()
            .unwrap();
        assert_eq!(example.username, "ci");
        assert_eq!(example.registry, "registry.example.com");
        let local = auth
            .for_image("127.0.0.1:5000/slipway/p:d")
            .unwrap()
            .unwrap();
        assert_eq!(
            (local.username.as_str(), local.password.as_str()),
            ("a", "b")
        );
        assert_eq!(auth.for_image("ghcr.io/acme/shop:v1").unwrap(), None);
        assert_eq!(auth.check().unwrap(), 3);
        assert_eq!(auth.all().unwrap().len(), 3);
        // The password never shows in logs.
        assert!(!format!("{example:?}").contains("secret"));
    }

    #[test]
    fn a_file_that_cannot_be_used_says_why() {
        let (_dir, missing) = file("{}");
        let missing = AuthFile::new(missing.path().with_file_name("absent.json"));
        assert!(matches!(missing.check(), Err(AuthFileError::Read { .. })));
        let (_dir, garbage) = file("auths: no");
        assert!(matches!(garbage.check(), Err(AuthFileError::Parse { .. })));
        // A credential helper's entry has no password: said so, not an anonymous pull.
        let (_dir, helper) =
            file(r#"{"auths": {"ghcr.io": {}}, "credHelpers": {"ghcr.io": "gh"}}"#);
        let error = helper.for_image("ghcr.io/acme/shop").unwrap_err();
        assert!(matches!(error, AuthFileError::Unusable { .. }), "{error}");
        assert!(error.to_string().contains("ghcr.io"), "{error}");
        let (_dir, bad) = file(r#"{"auths": {"ghcr.io": {"auth": "not base64!"}}}"#);
        assert!(bad.for_image("ghcr.io/acme/shop").is_err());
    }
}
