//! The outbound HTTP policy of one driver, shared by all its instances: its grants, a
//! connection limit, one circuit breaker per endpoint, the keep-alive pool and the
//! resolver's cache.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::pool::ConnectionPool;
use super::resolver::Resolver;
use super::settings::HttpSettings;
use crate::breaker::EndpointBreakers;
use crate::wasm::log::DriverTag;

/// The outbound HTTP policy of one driver (shared by its instances).
#[derive(Clone)]
pub struct HttpPolicy {
    pub tag: Arc<DriverTag>,
    pub settings: Arc<HttpSettings>,
    pub connections: Arc<Semaphore>,
    /// One circuit breaker per endpoint, with the driver's `breaker_*` thresholds.
    pub breakers: Arc<EndpointBreakers>,
    /// Kept-alive connections to checked addresses.
    pub pool: Arc<ConnectionPool>,
    /// Host names resolved, kept for a short while.
    pub resolver: Arc<Resolver>,
}

impl HttpPolicy {
    /// A driver's policy: its grants and limits, a connection limit, endpoint breakers
    /// with the driver's thresholds and an empty keep-alive pool.
    pub fn new(tag: Arc<DriverTag>, settings: Arc<HttpSettings>) -> Self {
        HttpPolicy {
            tag,
            connections: Arc::new(Semaphore::new(settings.max_connections)),
            breakers: Arc::new(EndpointBreakers::new(settings.endpoint_breaker.clone())),
            pool: Arc::new(ConnectionPool::new(settings.max_connections)),
            resolver: Arc::new(Resolver::default()),
            settings,
        }
    }
}
