//! The display bridge: RabbitMQ -> MQTT for kitchen display screens.
//! (Being written; see issue 4.)

use crate::config::Config;
use crate::http::Limits;
use crate::modes::StartError;
use crate::storage::SharedStore;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const SERVICE: &str = "display-bridge";

pub async fn start(
    _cfg: &Config,
    _store: SharedStore,
    _addr: SocketAddr,
    _limits: Limits,
    _shutdown: CancellationToken,
    _tasks: &TaskTracker,
) -> Result<SocketAddr, StartError> {
    Err(StartError::Store(crate::storage::StoreError::Query(
        "display bridge not built yet".into(),
    )))
}
