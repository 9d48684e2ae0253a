//! gRPC through graygate: a tonic client speaks HTTP/2 (prior knowledge) to graygate, which picks
//! the version per call from a metadata header (`x-version: canary`, an ordinary header rule) and
//! passes the call to tonic echo servers on `h2c` upstreams: unary, server streaming and
//! bidirectional streaming, with trailers (the status, its metadata) and without buffering.

use crate::support::grpc::EchoRequest;
use crate::support::*;
use std::time::Duration;
use tonic::Code;

/// How long one step of a stream may take before the test fails (before patience).
const STEP: Duration = Duration::from_secs(10);

fn h2c(name: &str, server: &GrpcEcho) -> UpstreamFile {
    UpstreamFile {
        name: name.into(),
        servers: vec![server.addr().to_string()],
        protocol: Some("h2c".into()),
        ..UpstreamFile::default()
    }
}

/// graygate in front of a stable and a canary echo server; `x-version: canary` picks the canary.
async fn grpc_gateway(stable: &GrpcEcho, canary: &GrpcEcho) -> Gateway {
    gateway()
        .upstream_file(h2c("stable", stable))
        .upstream_file(h2c("canary", canary))
        .route(route("web"))
        .service(web().rule(
            "by-metadata",
            "canary",
            header("x-version").equals("canary"),
        ))
        .start()
        .await
}

/// The next item of a stream, within [`STEP`].
async fn next<S: futures_util::Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    use futures_util::StreamExt;
    tokio::time::timeout(patient(STEP), stream.next())
        .await
        .expect("the next message in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_go_to_the_version_their_metadata_asks_for() {
    let (stable, canary) = (
        GrpcEcho::start("stable").await,
        GrpcEcho::start("canary").await,
    );
    let gg = grpc_gateway(&stable, &canary).await;
    let mut client = EchoClient::connect(gg.addr).await;
    // One client connection, each call routed on its own.
    for (metadata, want) in [
        (&[][..], "stable"),
        (&[("x-version", "canary")][..], "canary"),
        (&[("x-version", "stable")][..], "stable"),
        (&[("x-version", "canary")][..], "canary"),
    ] {
        let reply = client
            .unary("hello", metadata)
            .await
            .unwrap_or_else(|s| panic!("{s:?}\n{}", gg.log_text()))
            .into_inner();
        assert_eq!(reply.text, "hello");
        assert_eq!(reply.served_by, want, "{metadata:?}");
        assert_eq!(reply.te, "trailers", "TE: trailers reaches the upstream");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_status_and_its_metadata_come_back_in_the_trailers() {
    let (stable, canary) = (
        GrpcEcho::start("stable").await,
        GrpcEcho::start("canary").await,
    );
    let gg = grpc_gateway(&stable, &canary).await;
    let mut client = EchoClient::connect(gg.addr).await;
    let status = client
        .unary("fail", &[("x-version", "canary")])
        .await
        .expect_err("the server fails the call");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "asked to fail");
    assert_eq!(status.metadata().get("x-served-by").unwrap(), "canary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_flows_message_by_message() {
    let (stable, canary) = (
        GrpcEcho::start("stable").await,
        GrpcEcho::start("canary").await,
    );
    let gg = grpc_gateway(&stable, &canary).await;
    let mut client = EchoClient::connect(gg.addr).await;
    let mut replies = client
        .count("tick", 5, &[("x-version", "canary")])
        .await
        .expect("the stream starts");
    for seq in 1..=5 {
        // Each reply arrives before the server is allowed to send the next one: a proxy that
        // held the stream back until its end would never deliver it.
        let reply = next(&mut replies)
            .await
            .expect("a reply")
            .expect("not an error");
        assert_eq!((reply.seq, reply.served_by.as_str()), (seq, "canary"));
        canary.release();
    }
    assert!(next(&mut replies).await.is_none(), "ends with status OK");
    let trailers = replies.trailers().await.expect("trailers");
    assert!(trailers.is_some(), "the status came as trailers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_stream_echoes_each_message_as_it_goes() {
    let (stable, canary) = (
        GrpcEcho::start("stable").await,
        GrpcEcho::start("canary").await,
    );
    let gg = grpc_gateway(&stable, &canary).await;
    let mut client = EchoClient::connect(gg.addr).await;
    for (metadata, want) in [
        (&[][..], "stable"),
        (&[("x-version", "canary")][..], "canary"),
    ] {
        let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(1);
        let outgoing =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let mut replies = client
            .chat(outgoing, metadata)
            .await
            .expect("the call starts");
        // Ping-pong: the next message is sent only after the echo of the last one came back,
        // so that any buffering on the way, in either direction, would stall the call.
        for seq in 1..=5u32 {
            let text = format!("message {seq}");
            tx.send(EchoRequest {
                text: text.clone(),
                count: 0,
            })
            .await
            .expect("send");
            let reply = next(&mut replies)
                .await
                .expect("a reply")
                .expect("not an error");
            assert_eq!(
                (reply.text.as_str(), reply.seq, reply.served_by.as_str()),
                (text.as_str(), seq, want)
            );
        }
        drop(tx);
        assert!(
            next(&mut replies).await.is_none(),
            "ends when the client does"
        );
    }
}
