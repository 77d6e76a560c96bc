//! `mailpush dlq`: the dead letters of a stopped or running instance's spool. A running
//! instance picks up replays within a second ([`crate::pipeline::Dispatcher::take_replays`]).

use std::sync::Arc;

use crate::spool::sqlite::SqliteSpool;
use crate::spool::{DeadLetter, Spool, SpoolError};
use mailpush_config::Config;

/// The dead letters of one spool.
pub struct DeadLetters {
    spool: Arc<SqliteSpool>,
}

impl DeadLetters {
    /// Opens the spool of `config`; an error when there is none yet.
    pub fn open(config: &Config) -> Result<Self, SpoolError> {
        let path = config.settings.spool_path();
        if !path.exists() {
            return Err(SpoolError::Storage(format!(
                "no spool at {} (nothing was ever spooled with this config)",
                path.display()
            )));
        }
        Ok(DeadLetters {
            spool: SqliteSpool::open(&path, config.settings.spool_quota)?,
        })
    }

    /// Every dead letter, or one driver's.
    pub fn list(&self, driver: Option<u32>) -> Result<Vec<DeadLetter>, SpoolError> {
        self.spool.dead_letters(driver)
    }

    /// One dead letter.
    pub fn show(&self, id: i64) -> Result<Option<DeadLetter>, SpoolError> {
        Ok(self.list(None)?.into_iter().find(|d| d.id == id))
    }

    /// Makes dead letters pending again (one, or all of one driver, or all); how many.
    pub fn replay(&self, id: Option<i64>, driver: Option<u32>) -> Result<usize, SpoolError> {
        self.spool.replay(id, driver)
    }

    /// Deletes dead letters for good; how many.
    pub fn purge(&self, id: Option<i64>, driver: Option<u32>) -> Result<usize, SpoolError> {
        self.spool.purge(id, driver)
    }
}
