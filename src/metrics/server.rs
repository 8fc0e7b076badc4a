//! The `/metrics` HTTP endpoint: hyper's HTTP/1.1 server in front of the registry, with the
//! limits that keep a scrape answered whatever other clients of the port do.
//!
//! Every connection carries one request and is closed after its answer (no keep-alive, as the
//! endpoint always did), so its whole life is bounded: `header_timeout` to send a
//! complete request head (counted from the accept, so it covers a silent socket and a client
//! trickling header bytes alike), then `write_timeout` for the answer to be taken in. Request
//! bodies are never read. At most `max_connections` are open; when one more arrives, the
//! endpoint sheds an older one rather than making the newcomer wait ([`victim`]: a connection
//! without a complete request first, from the client address holding the most, the oldest), so
//! idle, slow and non-reading clients cannot queue a scrape behind them.
//!
//! This module only serves the registry it is given: it reads no daemon state and decides
//! nothing. Its metrics are declared with the others in `crate::metrics`.

use super::{CONTENT_TYPE, EndpointMetrics, encode};
use crate::config::MetricsConfig;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::registry::Registry;
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

/// Largest request head read (hyper's smallest read buffer): Prometheus sends a few hundred
/// bytes; a larger head is answered 431.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Most header lines in a request head; more is answered 431.
const MAX_HEADERS: usize = 64;

/// How many connections the endpoint keeps and how long each may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointLimits {
    /// Connections open at once; one more sheds an older one.
    pub max_connections: usize,
    /// From the accept to the end of the request head.
    pub header_timeout: Duration,
    /// From the complete request to the last byte of the answer handed to the kernel.
    pub write_timeout: Duration,
}

impl From<&MetricsConfig> for EndpointLimits {
    fn from(c: &MetricsConfig) -> Self {
        EndpointLimits {
            max_connections: c.max_connections as usize,
            header_timeout: Duration::from_millis(c.header_timeout_ms),
            write_timeout: Duration::from_millis(c.write_timeout_ms),
        }
    }
}

impl Default for EndpointLimits {
    fn default() -> Self {
        EndpointLimits::from(&MetricsConfig::default())
    }
}

/// Why the endpoint closed a connection before answering it in full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectionDrop {
    /// No complete request head within `header_timeout`.
    HeaderTimeout,
    /// The answer was not taken in within `write_timeout`.
    WriteTimeout,
    /// Closed to make room for a newer connection at `max_connections`.
    Shed,
}

impl ConnectionDrop {
    pub const ALL: [ConnectionDrop; 3] = [
        ConnectionDrop::HeaderTimeout,
        ConnectionDrop::WriteTimeout,
        ConnectionDrop::Shed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ConnectionDrop::HeaderTimeout => "header_timeout",
            ConnectionDrop::WriteTimeout => "write_timeout",
            ConnectionDrop::Shed => "shed",
        }
    }
}

impl EncodeLabelValue for ConnectionDrop {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: ConnectionDrop,
}

/// The `/metrics` HTTP endpoint. Stops when dropped, closing every connection it holds.
pub struct MetricsServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Listens on `addr` and serves `registry` until dropped, within `limits`, counting its
    /// connections in `metrics`. Must run inside a tokio runtime.
    pub async fn bind(
        addr: SocketAddr,
        registry: Arc<Registry>,
        limits: EndpointLimits,
        metrics: EndpointMetrics,
    ) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("metrics endpoint: cannot listen on {addr}: {e}"),
            )
        })?;
        let local_addr = listener.local_addr()?;
        let endpoint = Endpoint {
            registry,
            limits,
            metrics,
        };
        let task = tokio::spawn(endpoint.serve(listener));
        Ok(MetricsServer { local_addr, task })
    }

    /// The address actually bound (the port is chosen by the OS when `addr` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What every connection shares.
#[derive(Clone)]
struct Endpoint {
    registry: Arc<Registry>,
    limits: EndpointLimits,
    metrics: EndpointMetrics,
}

/// One open connection as the accept loop sees it.
struct Open {
    peer: SocketAddr,
    /// Set once its request head is complete: from then on it is being answered.
    requested: Arc<AtomicBool>,
    task: AbortHandle,
}

impl Endpoint {
    /// Accepts until dropped. Owns every connection task (dropping the loop aborts them).
    async fn serve(self, listener: TcpListener) {
        // By accept order: the first entries are the oldest connections.
        let mut open: BTreeMap<u64, Open> = BTreeMap::new();
        let mut tasks: JoinSet<u64> = JoinSet::new();
        let mut next = 0u64;
        loop {
            tokio::select! {
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    self.forget(&mut open, done);
                }
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning; the next
                            // scrape retries.
                            tracing::warn!(error = %e, "metrics endpoint: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    while open.len() >= self.limits.max_connections.max(1) {
                        self.shed(&mut open);
                    }
                    let requested = Arc::new(AtomicBool::new(false));
                    let id = next;
                    next += 1;
                    let task = tasks.spawn(self.clone().connection(
                        id,
                        stream,
                        peer,
                        requested.clone(),
                    ));
                    open.insert(id, Open { peer, requested, task });
                    self.metrics.connections.set(open.len() as i64);
                }
            }
        }
    }

    /// Removes a finished connection (a shed one is already gone).
    fn forget(&self, open: &mut BTreeMap<u64, Open>, done: Result<u64, tokio::task::JoinError>) {
        match done {
            Ok(id) => {
                open.remove(&id);
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                tracing::error!(error = %e, "metrics endpoint: a connection task failed");
                open.retain(|_, o| o.task.id() != e.id());
            }
        }
        self.metrics.connections.set(open.len() as i64);
    }

    /// Closes one connection to make room for a newer one (see [`victim`]).
    fn shed(&self, open: &mut BTreeMap<u64, Open>) {
        let chosen = victim(
            open.iter()
                .map(|(id, o)| (*id, o.peer.ip(), o.requested.load(Ordering::Acquire))),
        );
        let Some(o) = chosen.and_then(|id| open.remove(&id)) else {
            return;
        };
        o.task.abort();
        self.count(ConnectionDrop::Shed);
        tracing::debug!(
            peer = %o.peer,
            answering = o.requested.load(Ordering::Acquire),
            max_connections = self.limits.max_connections,
            "metrics endpoint: connection shed for a newer one"
        );
    }

    fn count(&self, reason: ConnectionDrop) {
        self.metrics
            .dropped
            .get_or_create(&DropLabels { reason })
            .inc();
    }

    /// Serves one connection: one request, one answer, within the limits. Returns its id.
    async fn connection(
        self,
        id: u64,
        stream: TcpStream,
        peer: SocketAddr,
        requested: Arc<AtomicBool>,
    ) -> u64 {
        let answering = Arc::new(Notify::new());
        let service = {
            let registry = self.registry.clone();
            let answering = answering.clone();
            service_fn(move |request: Request<Incoming>| {
                requested.store(true, Ordering::Release);
                // Starts the write deadline (a permit is stored if nobody waits yet).
                answering.notify_one();
                let answer = answer(&request, &registry);
                async move { Ok::<_, Infallible>(answer) }
            })
        };
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .keep_alive(false)
            .header_read_timeout(self.limits.header_timeout)
            .max_buf_size(MAX_REQUEST_BYTES)
            .max_headers(MAX_HEADERS)
            .serve_connection(TokioIo::new(stream), service);
        let write_deadline = async {
            answering.notified().await;
            tokio::time::sleep(self.limits.write_timeout).await;
        };
        tokio::select! {
            served = connection => match served {
                Ok(()) => {}
                Err(e) if e.is_timeout() => {
                    self.count(ConnectionDrop::HeaderTimeout);
                    tracing::debug!(%peer, timeout = ?self.limits.header_timeout, "metrics endpoint: no complete request in time");
                }
                Err(e) => tracing::debug!(%peer, error = %e, "metrics endpoint: request dropped"),
            },
            () = write_deadline => {
                self.count(ConnectionDrop::WriteTimeout);
                tracing::debug!(%peer, timeout = ?self.limits.write_timeout, "metrics endpoint: answer not taken in time");
            }
        }
        id
    }
}

/// Which connection to close for a newcomer, given every open one as (accept order, client
/// address, whether its request is complete) oldest first. A connection that has not sent a
/// complete request goes before one being answered; among those, the one from the address that
/// holds the most connections, so that one client flooding the port sheds its own connections
/// and not Prometheus's single one; then the oldest. Within one address that is its oldest
/// connection without a request, or if all have one, its oldest: that client is the slowest to
/// read its answer.
fn victim(open: impl IntoIterator<Item = (u64, IpAddr, bool)>) -> Option<u64> {
    /// One client address: how many connections it holds and its oldest of each kind.
    #[derive(Default)]
    struct Client {
        count: usize,
        oldest_waiting: Option<u64>,
        oldest: Option<u64>,
    }
    let mut clients: HashMap<IpAddr, Client> = HashMap::new();
    for (id, ip, requested) in open {
        let c = clients.entry(ip).or_default();
        c.count += 1;
        c.oldest = c.oldest.or(Some(id));
        if !requested {
            c.oldest_waiting = c.oldest_waiting.or(Some(id));
        }
    }
    clients
        .values()
        .filter_map(|c| {
            let id = c.oldest_waiting.or(c.oldest)?;
            Some((c.oldest_waiting.is_some(), c.count, Reverse(id)))
        })
        .max()
        .map(|(_, _, Reverse(id))| id)
}

/// The answer to one request: the metrics for `GET`/`HEAD /metrics`, 404 for any other path,
/// 405 for any other method. (hyper answers malformed heads 400 and oversized ones 431.)
fn answer(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    match *request.method() {
        // hyper sends HEAD the headers GET would (Content-Length included), without the body.
        Method::GET | Method::HEAD => {
            let mut response = Response::new(Full::new(Bytes::from(encode(registry))));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(CONTENT_TYPE),
            );
            response
        }
        _ => {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            response
        }
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn one_client_loses_its_oldest_connection_without_a_request() {
        assert_eq!(
            victim([(1, A, true), (2, A, false), (3, A, false)]),
            Some(2)
        );
        // Every one being answered: the oldest has waited longest for its client to read.
        assert_eq!(victim([(1, A, true), (2, A, true)]), Some(1));
        assert_eq!(victim([]), None);
    }

    #[test]
    fn a_flooding_client_sheds_its_own_connections() {
        // B's scrape, accepted first and not yet read, survives A's newer idle sockets.
        let open = [(1, B, false), (2, A, false), (3, A, false), (4, A, false)];
        assert_eq!(victim(open), Some(2));
        // A's answers that are never read go before B's answer, but not before a socket that
        // never sent a request, wherever it comes from.
        let open = [(1, B, true), (2, A, true), (3, A, true)];
        assert_eq!(victim(open), Some(2));
        let open = [(1, A, true), (2, A, true), (3, A, true), (4, B, false)];
        assert_eq!(victim(open), Some(4));
    }

    #[test]
    fn between_equal_clients_the_oldest_goes() {
        assert_eq!(victim([(1, A, false), (2, B, false)]), Some(1));
        let open = [(1, A, true), (2, B, false), (3, A, false), (4, B, true)];
        assert_eq!(victim(open), Some(2));
    }
}
