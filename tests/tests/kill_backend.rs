//! One of three backends dies while the client runs: the client keeps serving from
//! the other two, and uses the backend again once it is back.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_core::config::MeshConfig;
use mesh_http::MeshClient;
use mesh_tests::backend::TestBackend;

/// Sends one request; true when it came back 200 with its whole body.
async fn get(client: &MeshClient) -> bool {
    let request = http::Request::get("http://kill-test/")
        .body(Empty::<Bytes>::new().map_err(Into::into).boxed_unsync())
        .unwrap();
    match client.send(request).await {
        Ok(response) => {
            response.status().is_success() && response.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

/// Sends `n` requests, four at a time; returns how many failed.
async fn send_batch(client: &MeshClient, n: usize) -> usize {
    let mut failed = 0;
    for _ in 0..n / 4 {
        let (a, b, c, d) = tokio::join!(get(client), get(client), get(client), get(client));
        failed += [a, b, c, d].iter().filter(|ok| !**ok).count();
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_survives_a_killed_backend_and_uses_it_again_after_restart() {
    let mut backends = vec![
        TestBackend::start().await,
        TestBackend::start().await,
        TestBackend::start().await,
    ];
    let endpoints: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let env: BTreeMap<String, String> = [(
        "MESH_SERVICE_KILL_TEST_ENDPOINTS".to_string(),
        endpoints.join(","),
    )]
    .into();
    let client = MeshClient::new(MeshConfig::from_source(&env).unwrap()).unwrap();
    client.ready().await;

    // Warm up: every backend takes traffic.
    assert_eq!(send_batch(&client, 600).await, 0);
    for b in &backends {
        assert!(
            b.served() > 0,
            "{} got no traffic before the kill",
            b.addr()
        );
    }

    backends[1].kill().await;
    let served_before_kill = backends[1].served();
    let failed = send_batch(&client, 2000).await;
    // Only requests caught on a connection at the instant of the kill may fail;
    // every later request goes to the two live backends.
    assert!(
        failed <= 4,
        "{failed} of 2000 requests failed with one backend down"
    );
    assert_eq!(
        backends[1].served(),
        served_before_kill,
        "a dead backend cannot serve"
    );
    let live: u64 = backends.iter().map(TestBackend::served).sum();
    assert!(live >= 600 + 2000 - failed as u64);

    backends[1].restart().await;
    // Bounded by requests, not by time: the restarted backend must take at least
    // 50 of the next 40,000 requests.
    let mut sent = 0;
    while backends[1].served() < served_before_kill + 50 {
        assert!(
            sent < 40_000,
            "restarted backend got {} requests after restart",
            backends[1].served() - served_before_kill
        );
        assert_eq!(
            send_batch(&client, 100).await,
            0,
            "no request may fail once the backend is back"
        );
        sent += 100;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
