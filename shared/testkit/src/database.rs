//! Throwaway databases: a SQLite file in a temp dir, or a fresh PostgreSQL database on the
//! server named by `SLIPWAY_TEST_POSTGRES_URL` (default: this machine's, database `test`),
//! dropped afterwards.

use anyhow::{Context, Result};
use sqlx::{Connection, Executor, PgConnection};

pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl TestDb {
    pub fn sqlite() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("slipway.db").display());
        Ok(Self {
            url,
            _dir: Some(dir),
            pg: None,
        })
    }

    pub async fn postgres() -> Result<Self> {
        let admin_url = std::env::var("SLIPWAY_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into());
        let name = format!("slipway_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin_url).await.with_context(|| {
            format!("PostgreSQL at {admin_url} is needed for the store tests (set SLIPWAY_TEST_POSTGRES_URL)")
        })?;
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        let base = admin_url
            .rsplit_once('/')
            .map(|(base, _)| base.to_string())
            .unwrap_or(admin_url.clone());
        Ok(Self {
            url: format!("{base}/{name}"),
            _dir: None,
            pg: Some((admin_url, name)),
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.pg.take() else {
            return;
        };
        // Drop runs outside any runtime we may block; use a short-lived one on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin_url).await.ok()?;
                conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await
                    .ok()
            })
        })
        .join();
    }
}
