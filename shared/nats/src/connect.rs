//! Connecting to NATS with any credential kind, refusing servers too old for Slipway.

use std::path::PathBuf;

use slipway_core::config::NatsConfig;

/// Message schedules, per-message TTL and cron schedules arrived in 2.14.
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 14, 0);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read NATS credentials file {path}: {source}")]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error(
        "nats-server {found} at {url} is too old: Slipway needs nats-server {}.{}.{} or newer \
         (message schedules, per-message TTL); install it with scripts/install-nats-server.sh",
        MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1, MIN_SERVER_VERSION.2
    )]
    ServerTooOld { found: String, url: String },
}

/// Connects as `name` (shown in `nats server report connections`) and checks the version.
pub async fn connect(config: &NatsConfig, name: &str) -> Result<async_nats::Client, ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        // Keep retrying for ever once connected: a restarted nats-server must not kill us.
        .max_reconnects(None);
    if let Some(path) = &config.nats_creds {
        options = async_nats::ConnectOptions::with_credentials_file(path.clone())
            .await
            .map_err(|source| ConnectError::Credentials {
                path: path.clone(),
                source,
            })?
            .name(name)
            .max_reconnects(None);
    }
    if let (Some(user), Some(password)) = (&config.nats_user, &config.nats_password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.nats_token {
        options = options.token(token.clone());
    }
    if let Some(seed) = &config.nats_nkey {
        options = options.nkey(seed.clone());
    }
    if let Some(ca) = &config.nats_tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    // Replies to this process come to its user's own inbox prefix, which no other user may
    // read (nats/accounts.conf).
    options = options.custom_inbox_prefix(config.inbox_prefix());
    let urls: Vec<&str> = config.nats_url.split(',').map(str::trim).collect();
    let client =
        options
            .connect(urls.as_slice())
            .await
            .map_err(|source| ConnectError::Connect {
                url: config.nats_url.clone(),
                source,
            })?;
    check_version(&client.server_info().version, &config.nats_url)?;
    Ok(client)
}

/// Refuses a server older than [`MIN_SERVER_VERSION`].
pub fn check_version(found: &str, url: &str) -> Result<(), ConnectError> {
    if parse_version(found).is_some_and(|v| v >= MIN_SERVER_VERSION) {
        Ok(())
    } else {
        Err(ConnectError::ServerTooOld {
            found: found.to_string(),
            url: url.to_string(),
        })
    }
}

/// `2.14.0`, `v2.15.1`, `2.14.0-RC.1` → (2, 14, 0).
fn parse_version(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.trim_start_matches('v').split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_gate() {
        assert!(check_version("2.14.0", "u").is_ok());
        assert!(check_version("2.15.1", "u").is_ok());
        assert!(check_version("v3.0.0-beta", "u").is_ok());
        let err = check_version("2.9.25", "nats://h:4222")
            .unwrap_err()
            .to_string();
        assert!(err.contains("2.9.25") && err.contains("2.14.0"), "{err}");
        assert!(check_version("", "u").is_err());
        assert!(check_version("garbage", "u").is_err());
    }
}
