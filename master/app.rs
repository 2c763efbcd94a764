//! The one app handle every edge holds: the cluster (workers and tasks in memory), the
//! store (the only writer, and where task output is kept), metrics and the credentials the
//! master accepts. The operations are its methods, in `ops/`; gRPC (`grpc/`), the HTTP API
//! (`http/`) and the REPL (through gRPC) only adapt to them.

use std::sync::Arc;

use crate::cluster::Cluster;
use crate::identity::Credentials;
use crate::metrics::Metrics;
use crate::store::Store;

/// Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct App {
    /// The master's in-memory truth about workers and tasks.
    pub cluster: Arc<Cluster>,
    /// Where every change is committed before it is acknowledged.
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Every credential the master accepts (the gRPC gates and the HTTP API check them).
    pub credentials: Arc<Credentials>,
}
