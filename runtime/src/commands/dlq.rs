//! `mailpush dlq`: the dead letters of a stopped or running instance's spool — the
//! SQLite spool in the state dir (a running instance picks up replays within a second,
//! [`crate::pipeline::Dispatcher::take_replays`]), or, in cluster mode, the cluster's
//! dead-letter stream in JetStream, from any node ([`crate::cluster::dlq`]).

use std::sync::Arc;

use crate::cluster::nats::Names;
use crate::spool::sqlite::SqliteSpool;
use crate::spool::{DeadLetter, Spool, SpoolError};
use mailpush_config::Config;

/// The dead letters of one spool.
pub enum DeadLetters {
    Local(Arc<SqliteSpool>),
    /// No spool yet (nothing was ever spooled with this config): no dead letters.
    NoSpool,
    Cluster(Box<ClusterLetters>),
}

/// The cluster's dead-letter stream.
pub struct ClusterLetters {
    js: async_nats::jetstream::Context,
    names: Names,
    partitions: u32,
}

impl DeadLetters {
    /// Opens the spool of `config` (none yet: [`DeadLetters::NoSpool`]).
    pub async fn open(config: &Config) -> Result<Self, SpoolError> {
        if let Some(c) = &config.settings.cluster {
            let client = crate::cluster::nats::connect(c, "dlq").await?;
            return Ok(DeadLetters::Cluster(Box::new(ClusterLetters {
                js: crate::cluster::nats::jetstream(&client),
                names: Names::new(&c.stream),
                partitions: c.partitions,
            })));
        }
        let path = config.settings.spool_path();
        if !path.exists() {
            tracing::info!(
                "no spool at {} (nothing was ever spooled with this config)",
                path.display()
            );
            return Ok(DeadLetters::NoSpool);
        }
        Ok(DeadLetters::Local(SqliteSpool::open(
            &path,
            config.settings.spool_quota,
        )?))
    }

    /// Every dead letter, or one driver's.
    pub async fn list(&self, driver: Option<u32>) -> Result<Vec<DeadLetter>, SpoolError> {
        match self {
            DeadLetters::Local(s) => s.dead_letters(driver),
            DeadLetters::NoSpool => Ok(Vec::new()),
            DeadLetters::Cluster(c) => crate::cluster::dlq::list(&c.js, &c.names, driver).await,
        }
    }

    /// The numbers of the drivers that have dead letters, ascending.
    pub async fn drivers(&self) -> Result<Vec<u32>, SpoolError> {
        match self {
            DeadLetters::Local(s) => s.dead_letter_drivers(),
            _ => Ok(crate::spool::drivers_of(&self.list(None).await?)),
        }
    }

    /// One dead letter.
    pub async fn show(&self, id: i64) -> Result<Option<DeadLetter>, SpoolError> {
        match self {
            DeadLetters::Local(s) => s.dead_letter_by_id(id),
            _ => Ok(self.list(None).await?.into_iter().find(|d| d.id == id)),
        }
    }

    /// Makes dead letters pending again (one, or all of one driver, or all); how many.
    pub async fn replay(&self, id: Option<i64>, driver: Option<u32>) -> Result<usize, SpoolError> {
        match self {
            DeadLetters::Local(s) => s.replay(id, driver),
            DeadLetters::NoSpool => Ok(0),
            DeadLetters::Cluster(c) => {
                crate::cluster::dlq::replay(&c.js, &c.names, c.partitions, id, driver).await
            }
        }
    }

    /// Deletes dead letters for good; how many.
    pub async fn purge(&self, id: Option<i64>, driver: Option<u32>) -> Result<usize, SpoolError> {
        match self {
            DeadLetters::Local(s) => s.purge(id, driver),
            DeadLetters::NoSpool => Ok(0),
            DeadLetters::Cluster(c) => {
                crate::cluster::dlq::purge(&c.js, &c.names, id, driver).await
            }
        }
    }
}
