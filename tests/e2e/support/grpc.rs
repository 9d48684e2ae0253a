//! A gRPC echo service for the tests, built from tonic's generic server and client plumbing with
//! hand-written prost messages: no `.proto` file, no `protoc`, no generated code.
//!
//! The service `graygate.test.Echo` has three methods:
//! - `Unary`: one reply naming the server; the text `fail` is answered with the status
//!   `FAILED_PRECONDITION` and the metadata `x-served-by` in the trailers;
//! - `Count` (server streaming): `count` replies, the first at once and each next one only after
//!   the test calls [`GrpcEcho::release`], so that a test can tell a stream that flows from one
//!   that arrives in one piece at its end;
//! - `Chat` (bidirectional): every message echoed at once as it arrives.
//!
//! Every reply carries the server's name and the `te` header its request arrived with. The server
//! speaks HTTP/2 with prior knowledge (h2c) on a loopback port and stops when dropped; the client
//! is tonic's own channel.

use futures_util::{Stream, StreamExt};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tonic::codec::Streaming;
use tonic::metadata::MetadataMap;
use tonic::server::{Grpc, ServerStreamingService, StreamingService, UnaryService};
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

/// A request to the echo service.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub text: String,
    /// `Count`: how many replies.
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

/// A reply of the echo service.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub text: String,
    /// The name of the server that answered.
    #[prost(string, tag = "2")]
    pub served_by: String,
    /// The reply's place in a stream, from 1.
    #[prost(uint32, tag = "3")]
    pub seq: u32,
    /// The `te` header of the request, as the server received it (`-` if none).
    #[prost(string, tag = "4")]
    pub te: String,
}

const UNARY: &str = "/graygate.test.Echo/Unary";
const COUNT: &str = "/graygate.test.Echo/Count";
const CHAT: &str = "/graygate.test.Echo/Chat";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

/// A running echo server; stops when dropped.
pub struct GrpcEcho {
    addr: SocketAddr,
    /// Permits for `Count` to send its next reply.
    gate: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcEcho {
    /// Binds 127.0.0.1 port 0 and answers as `name`.
    pub async fn start(name: &str) -> GrpcEcho {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("an address");
        let gate = Arc::new(Semaphore::new(0));
        let echo = Echo {
            name: Arc::from(name),
            gate: gate.clone(),
        };
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let echo = echo.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let echo = echo.clone();
                        async move { Ok::<_, Infallible>(echo.call(req).await) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        GrpcEcho { addr, gate, task }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Lets a `Count` stream send one more reply.
    pub fn release(&self) {
        self.gate.add_permits(1);
    }
}

impl Drop for GrpcEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The service itself, shared by every connection.
#[derive(Clone)]
struct Echo {
    name: Arc<str>,
    gate: Arc<Semaphore>,
}

impl Echo {
    async fn call(
        self,
        req: http::Request<hyper::body::Incoming>,
    ) -> http::Response<tonic::body::Body> {
        let te = req
            .headers()
            .get("te")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        let method = Method { echo: self, te };
        let mut grpc = Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
        match req.uri().path() {
            UNARY => grpc.unary(method, req).await,
            COUNT => grpc.server_streaming(method, req).await,
            CHAT => grpc.streaming(method, req).await,
            _ => Status::unimplemented("no such method").into_http(),
        }
    }
}

/// One call of a method, with what its request arrived with.
struct Method {
    echo: Echo,
    te: String,
}

impl Method {
    fn reply(&self, text: String, seq: u32) -> EchoReply {
        EchoReply {
            text,
            served_by: self.echo.name.to_string(),
            seq,
            te: self.te.clone(),
        }
    }
}

impl UnaryService<EchoRequest> for Method {
    type Response = EchoReply;
    type Future = BoxFuture<Result<Response<EchoReply>, Status>>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let text = request.into_inner().text;
        if text == "fail" {
            let mut metadata = MetadataMap::new();
            metadata.insert(
                "x-served-by",
                self.echo.name.parse().expect("a metadata value"),
            );
            let status = Status::with_metadata(Code::FailedPrecondition, "asked to fail", metadata);
            return Box::pin(async move { Err(status) });
        }
        let reply = self.reply(text, 1);
        Box::pin(async move { Ok(Response::new(reply)) })
    }
}

impl ServerStreamingService<EchoRequest> for Method {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Result<Response<ReplyStream>, Status>>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let request = request.into_inner();
        let gate = self.echo.gate.clone();
        let template = self.reply(request.text, 0);
        let count = request.count;
        let replies = futures_util::stream::unfold(1u32, move |seq| {
            let (gate, template) = (gate.clone(), template.clone());
            async move {
                if seq > count {
                    return None;
                }
                if seq > 1 {
                    gate.acquire().await.ok()?.forget();
                }
                Some((Ok(EchoReply { seq, ..template }), seq + 1))
            }
        });
        Box::pin(async move { Ok(Response::new(Box::pin(replies) as ReplyStream)) })
    }
}

impl StreamingService<EchoRequest> for Method {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Result<Response<ReplyStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<EchoRequest>>) -> Self::Future {
        let template = self.reply(String::new(), 0);
        let mut seq = 0;
        let replies = request.into_inner().map(move |message| {
            seq += 1;
            message.map(|m| EchoReply {
                text: m.text,
                seq,
                ..template.clone()
            })
        });
        Box::pin(async move { Ok(Response::new(Box::pin(replies) as ReplyStream)) })
    }
}

/// A client of the echo service through tonic's channel (HTTP/2 with prior knowledge).
pub struct EchoClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl EchoClient {
    /// Connects to `addr` (graygate, or an echo server directly).
    pub async fn connect(addr: SocketAddr) -> EchoClient {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("an endpoint")
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        EchoClient {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    /// `Unary` with `text`, and these metadata entries.
    pub async fn unary(
        &mut self,
        text: &str,
        metadata: &[(&'static str, &str)],
    ) -> Result<Response<EchoReply>, Status> {
        let request = with_metadata(
            EchoRequest {
                text: text.into(),
                count: 0,
            },
            metadata,
        );
        self.ready().await;
        self.grpc
            .unary(request, path(UNARY), ProstCodec::default())
            .await
    }

    /// `Count`: a stream of `count` replies.
    pub async fn count(
        &mut self,
        text: &str,
        count: u32,
        metadata: &[(&'static str, &str)],
    ) -> Result<Streaming<EchoReply>, Status> {
        let request = with_metadata(
            EchoRequest {
                text: text.into(),
                count,
            },
            metadata,
        );
        self.ready().await;
        self.grpc
            .server_streaming(request, path(COUNT), ProstCodec::default())
            .await
            .map(Response::into_inner)
    }

    /// `Chat`: the messages come from `outgoing`, the replies from the returned stream.
    pub async fn chat(
        &mut self,
        outgoing: impl Stream<Item = EchoRequest> + Send + 'static,
        metadata: &[(&'static str, &str)],
    ) -> Result<Streaming<EchoReply>, Status> {
        let request = with_metadata(outgoing, metadata);
        self.ready().await;
        self.grpc
            .streaming(request, path(CHAT), ProstCodec::default())
            .await
            .map(Response::into_inner)
    }

    async fn ready(&mut self) {
        self.grpc.ready().await.expect("the channel is ready");
    }
}

fn path(method: &'static str) -> http::uri::PathAndQuery {
    http::uri::PathAndQuery::from_static(method)
}

fn with_metadata<T>(message: T, metadata: &[(&'static str, &str)]) -> Request<T> {
    let mut request = Request::new(message);
    for (key, value) in metadata {
        request
            .metadata_mut()
            .insert(*key, value.parse().expect("a metadata value"));
    }
    request
}
