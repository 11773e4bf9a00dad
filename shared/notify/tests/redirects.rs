//! A receiver that answers with a redirect does not get the signed request sent on: the
//! redirect's target sees nothing, and the delivery counts as failed (a 3xx is a final
//! answer, like any 4xx other than 429; docs/callbacks.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::any;
use tb_core::ports::{Notifier, PortError};
use tb_notify::HttpNotifier;

/// Serves `app` on a free loopback port; returns its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_the_callback_counts_as_failed() {
    // The second listener stands for what a redirect could reach (loopback, the metadata
    // service): it counts every request that arrives.
    let reached = Arc::new(AtomicU32::new(0));
    let target = serve(Router::new().fallback(any({
        let reached = reached.clone();
        move || async move {
            reached.fetch_add(1, Ordering::SeqCst);
            StatusCode::OK
        }
    })))
    .await;

    for status in [
        StatusCode::MOVED_PERMANENTLY,
        StatusCode::FOUND,
        StatusCode::SEE_OTHER,
        StatusCode::TEMPORARY_REDIRECT,
        StatusCode::PERMANENT_REDIRECT,
    ] {
        let location = format!("{target}/latest/meta-data");
        let receiver = serve(Router::new().fallback(any(move || {
            let location = location.clone();
            async move { (status, [(header::LOCATION, location)]).into_response() }
        })))
        .await;
        // Private targets allowed (the local binary's setting): only loopback is involved.
        let notifier = HttpNotifier::new("secret", true).with_retries(3, Duration::ZERO);
        let result = notifier
            .notify(
                &format!("{receiver}/hook"),
                "d1",
                &serde_json::json!({"phase": "succeeded"}),
            )
            .await;
        match result {
            Err(PortError::Permanent(message)) => assert!(
                message.contains(&status.as_u16().to_string()) && message.contains("redirect"),
                "{status}: {message}"
            ),
            other => panic!("{status}: expected a final failure, got {other:?}"),
        }
    }
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "a redirect was followed to the second listener"
    );
}
