//! A TCP proxy that misbehaves on demand, between the code under test and a real server
//! (PostgreSQL, RabbitMQ, Redis): the faults of a network that says nothing. Like the
//! registry backend's `ChaosProxy` and Toxiproxy's `timeout` toxic.
//!
//! Per connection, the proxy can:
//! - pass bytes both ways (the default);
//! - [`FaultProxy::partition`]: freeze every connection, old and new, until
//!   [`FaultProxy::heal`] (a partition that heals): nothing is read or closed, so what
//!   the client writes waits in the kernel's buffers as on a silent network, and a new
//!   connection is accepted (the listener's kernel answers the handshake) but not
//!   forwarded;
//! - [`FaultProxy::freeze_current_for_good`]: freeze the connections open now for good
//!   while new ones pass (a failover behind a stable address: the old host is gone
//!   without a word);
//! - [`FaultProxy::close_all`]: close every connection (a restart);
//! - [`FaultProxy::redirect`]: lead new connections to another upstream;
//! - [`FaultProxy::freeze_after`]: freeze a connection for good right after the client
//!   sends a given byte string (`COMMIT`), either holding those bytes (the server never
//!   sees them) or passing them and swallowing the answer: an outcome the client cannot
//!   know.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// What a connection does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Pass,
    Frozen,
    Closed,
}

/// What to do when the client sends a trigger ([`FaultProxy::freeze_after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The trigger's bytes are held: the server never receives them.
    Hold,
    /// The trigger reaches the server; its answer never reaches the client.
    SwallowAnswer,
    /// The trigger reaches the server; its answer reaches the client once
    /// [`FaultProxy::release_answers`] is called (a query whose result is late).
    DelayAnswer,
}

struct Shared {
    upstream: SocketAddr,
    partitioned: bool,
    connections: Vec<watch::Sender<Flow>>,
    /// Frozen for good: closed only when the proxy is dropped.
    frozen_for_good: Vec<watch::Sender<Flow>>,
    trigger: Option<(Vec<u8>, Trigger)>,
    /// Set by [`FaultProxy::release_answers`]: delayed answers go on.
    released: watch::Receiver<bool>,
}

/// A proxy listening on a port of its own; dropped, it stops accepting.
pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    partition: watch::Sender<bool>,
    release: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.close_all();
        for connection in self.shared.lock().unwrap().frozen_for_good.drain(..) {
            connection.send_replace(Flow::Closed);
        }
    }
}

impl FaultProxy {
    /// A proxy in front of `upstream` (`host:port`), passing everything.
    pub async fn start(upstream: &str) -> FaultProxy {
        let upstream = tokio::net::lookup_host(upstream).await.unwrap().next().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (release, released) = watch::channel(false);
        let shared = Arc::new(Mutex::new(Shared {
            upstream,
            partitioned: false,
            connections: Vec::new(),
            frozen_for_good: Vec::new(),
            trigger: None,
            released,
        }));
        let (partition, partitioned) = watch::channel(false);
        let accept = tokio::spawn(accept(listener, shared.clone(), partitioned));
        FaultProxy { addr, shared, partition, release, accept }
    }

    /// `url` with its `host:port` replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let scheme_end = url.find("://").map_or(0, |i| i + 3);
        let after_credentials = url[scheme_end..].find('@').map_or(scheme_end, |i| scheme_end + i + 1);
        let host_end = url[after_credentials..].find(['/', '?']).map_or(url.len(), |i| after_credentials + i);
        format!("{}{}{}", &url[..after_credentials], self.addr, &url[host_end..])
    }

    fn set_all(&self, flow: Flow) {
        let mut shared = self.shared.lock().unwrap();
        shared.connections.retain(|c| !c.is_closed() && *c.borrow() != Flow::Closed);
        for connection in &shared.connections {
            connection.send_if_modified(|now| {
                let changed = *now != Flow::Closed && *now != flow;
                if changed {
                    *now = flow;
                }
                changed
            });
        }
    }

    /// Every connection, old and new, frozen until [`Self::heal`].
    pub fn partition(&self) {
        self.shared.lock().unwrap().partitioned = true;
        self.partition.send_replace(true);
        self.set_all(Flow::Frozen);
    }

    /// Ends a [`Self::partition`]: the frozen connections forward what they held.
    pub fn heal(&self) {
        self.shared.lock().unwrap().partitioned = false;
        self.partition.send_replace(false);
        self.set_all(Flow::Pass);
    }

    /// The connections open now frozen for good (never forwarded, never closed, until the
    /// proxy is dropped); new connections pass.
    pub fn freeze_current_for_good(&self) {
        let mut shared = self.shared.lock().unwrap();
        let frozen: Vec<_> = shared.connections.drain(..).collect();
        for connection in &frozen {
            connection.send_replace(Flow::Frozen);
        }
        shared.frozen_for_good.extend(frozen);
    }

    /// Closes every connection, as a restart of the server would.
    pub fn close_all(&self) {
        let mut shared = self.shared.lock().unwrap();
        for connection in shared.connections.drain(..) {
            connection.send_replace(Flow::Closed);
        }
    }

    /// New connections go to `upstream` (`host:port`).
    pub async fn redirect(&self, upstream: &str) {
        let upstream = tokio::net::lookup_host(upstream).await.unwrap().next().unwrap();
        self.shared.lock().unwrap().upstream = upstream;
    }

    /// The next connection whose client sends `bytes` is frozen for good there. The
    /// proxy reads plaintext only: give PostgreSQL clients `sslmode=disable`.
    pub fn freeze_after(&self, bytes: &[u8], trigger: Trigger) {
        self.shared.lock().unwrap().trigger = Some((bytes.to_vec(), trigger));
    }

    /// Whether the trigger set by [`Self::freeze_after`] has fired.
    pub fn fired(&self) -> bool {
        self.shared.lock().unwrap().trigger.is_none()
    }

    /// Lets the answers held by [`Trigger::DelayAnswer`] through.
    pub fn release_answers(&self) {
        self.release.send_replace(true);
    }
}

async fn accept(listener: TcpListener, shared: Arc<Mutex<Shared>>, partitioned: watch::Receiver<bool>) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        let _ = client.set_nodelay(true);
        let (flow, rx) = watch::channel(Flow::Pass);
        let upstream = {
            let mut shared = shared.lock().unwrap();
            shared.connections.push(flow);
            shared.upstream
        };
        let shared = shared.clone();
        let mut partitioned = partitioned.clone();
        tokio::spawn(async move {
            // During a partition a new connection is held before it reaches the server.
            if partitioned.wait_for(|p| !*p).await.is_err() {
                return;
            }
            let Ok(server) = TcpStream::connect(upstream).await else { return };
            let _ = server.set_nodelay(true);
            pump(client, server, rx, shared).await;
        });
    }
}

/// Forwards both ways while the flow says pass; stops reading while frozen; closes both
/// sides when closed or when either side closes.
async fn pump(client: TcpStream, server: TcpStream, flow: watch::Receiver<Flow>, shared: Arc<Mutex<Shared>>) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Set when a trigger fires: the connection is frozen for good from then on.
    let tripped = Arc::new(AtomicBool::new(false));
    // Set when a `DelayAnswer` trigger fires: what the server says next waits for release.
    let delayed = Arc::new(AtomicBool::new(false));
    let released = shared.lock().unwrap().released.clone();
    let up = direction(client_read, server_write, flow.clone(), (tripped.clone(), delayed.clone()), Side::Up(shared));
    let down = direction(server_read, client_write, flow, (tripped, delayed), Side::Down(released));
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

async fn direction(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut flow: watch::Receiver<Flow>,
    (tripped, delayed): (Arc<AtomicBool>, Arc<AtomicBool>),
    side: Side,
) {
    let (triggers, mut released) = match side {
        Side::Up(shared) => (Some(shared), None),
        Side::Down(released) => (None, Some(released)),
    };
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if tripped.load(Ordering::SeqCst) {
            let _ = flow.wait_for(|f| *f == Flow::Closed).await;
            return;
        }
        // Wait while frozen; stop when closed.
        match flow.wait_for(|f| *f != Flow::Frozen).await.map(|f| *f) {
            Ok(Flow::Pass) => {}
            _ => return,
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = flow.changed() => {
                if changed.is_err() { return }
                continue;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let bytes = &buffer[..n];
        if let Some(shared) = &triggers {
            let fired = {
                let mut shared = shared.lock().unwrap();
                match &shared.trigger {
                    Some((needle, kind)) if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) => {
                        let kind = *kind;
                        shared.trigger = None;
                        Some(kind)
                    }
                    _ => None,
                }
            };
            if fired == Some(Trigger::DelayAnswer) {
                // Before the bytes leave, so that their answer is held.
                delayed.store(true, Ordering::SeqCst);
            } else if let Some(kind) = fired {
                // Tripped before the bytes leave: the way down forwards nothing after.
                tripped.store(true, Ordering::SeqCst);
                if kind == Trigger::SwallowAnswer && to.write_all(bytes).await.is_err() {
                    return;
                }
                continue;
            }
        }
        if tripped.load(Ordering::SeqCst) {
            continue;
        }
        if let Some(released) = released.as_mut()
            && delayed.load(Ordering::SeqCst)
            && released.wait_for(|r| *r).await.is_err()
        {
            return;
        }
        if to.write_all(bytes).await.is_err() {
            return;
        }
    }
}

/// Which way a [`direction`] goes: up (client to server) it watches for triggers; down,
/// it holds a delayed answer until its release.
enum Side {
    Up(Arc<Mutex<Shared>>),
    Down(watch::Receiver<bool>),
}
