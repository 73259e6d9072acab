//! Stopping well: SIGINT and SIGTERM as a future and as a flag, for loops that finish the
//! work in hand before they stop (every binary; `docker stop` and Kubernetes send
//! SIGTERM).

/// A flag that turns true on SIGINT or SIGTERM, for loops that finish their work in
/// hand before they stop.
pub fn flag() -> tokio::sync::watch::Receiver<bool> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        signal().await;
        let _ = stop.send(true);
    });
    stopped
}

/// Sleeps for `delay`, or less if shutdown comes first (a retry loop's wait).
pub(crate) async fn sleep_or_stop(delay: std::time::Duration, shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        _ = shutdown.changed() => {}
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (`docker stop`).
pub async fn signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}
