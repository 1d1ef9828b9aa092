//! Egress: every connection the host makes on behalf of a tenant — a guest's
//! outbound HTTP (`capability::outbound_http`) and a convergence task's webhook
//! (`convergence::tasks`) — goes through here, so both apply one rule.
//!
//! A name is resolved once ([`resolve_checked`]); unless private targets are
//! allowed, every address it resolves to must be public ([`is_private`]:
//! loopback, private, link-local, unspecified, IPv4-mapped forms of those and
//! similar ranges are refused); then the connection goes to exactly the
//! checked addresses ([`send_pinned`]), so a DNS answer that changes in between
//! (rebinding) cannot reach a private address. Redirects are never followed:
//! each request is one connection to one checked address.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// Why an address was refused, or a name could not be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The name resolves to an address inside a host or network.
    #[error("{host} resolves to {ip}, a private, loopback or otherwise internal address")]
    Private {
        /// The name asked for.
        host: String,
        /// The internal address it resolved to.
        ip: IpAddr,
    },
    /// The name does not resolve.
    #[error("{0} does not resolve")]
    NotFound(String),
    /// Resolving took too long.
    #[error("resolving {0} timed out")]
    Timeout(String),
}

/// Resolves `host:port` once; unless `allow_private`, refuses it if any
/// address is internal. The addresses returned are the ones to connect to.
pub async fn resolve_checked(
    host: &str,
    port: u16,
    allow_private: bool,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, Refused> {
    let addrs: Vec<SocketAddr> =
        tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| Refused::Timeout(host.to_owned()))?
            .map_err(|_| Refused::NotFound(host.to_owned()))?
            .collect();
    if addrs.is_empty() {
        return Err(Refused::NotFound(host.to_owned()));
    }
    if !allow_private && let Some(ip) = addrs.iter().map(SocketAddr::ip).find(|ip| is_private(*ip))
    {
        return Err(Refused::Private {
            host: host.to_owned(),
            ip,
        });
    }
    Ok(addrs)
}

/// Whether `ip` is reachable only inside a host or network (not the public internet).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
                || (a == 198 && (18..20).contains(&b)) // benchmarking
                || a >= 240 // reserved
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                let seg = v6.segments();
                // 6to4 (2002::/16) carries an IPv4 address in bits 16..48.
                let six_to_four = std::net::Ipv4Addr::new(
                    (seg[1] >> 8) as u8,
                    seg[1] as u8,
                    (seg[2] >> 8) as u8,
                    seg[2] as u8,
                );
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00 // unique local
                    || (first & 0xffc0) == 0xfe80 // link local
                    || (first & 0xffc0) == 0xfec0 // site local (deprecated)
                    || seg[..6] == [0; 6] // IPv4-compatible ::a.b.c.d (deprecated)
                    || seg[..4] == [0x100, 0, 0, 0] // discard-only 100::/64
                    || first == 0x2001 && seg[1] == 0xdb8 // documentation
                    || first == 0x64 && seg[1] == 0xff9b // NAT64 to anything
                    || first == 0x2002 && is_private(IpAddr::V4(six_to_four))
            }
        },
    }
}

/// The body, and the connection's own future (it ends with the response).
pub type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// Sends `request` over a connection to one of `addrs` — the addresses that
/// were checked — so the name is never resolved twice (a DNS answer that
/// changes between the check and the connection cannot reach a private
/// address). HTTPS verifies the certificate for `host` (Mozilla's roots and
/// the system's CAs). What wasmtime-wasi-http's `default_send_request` does, except that
/// it connects by name, which is exactly what must not happen here.
pub async fn send_pinned(
    mut request: http::Request<WasiBody>,
    host: &str,
    secure: bool,
    addrs: &[SocketAddr],
    options: RequestOptions,
) -> Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
> {
    let forever = Duration::from_secs(600);
    let connect_timeout = options.connect_timeout.unwrap_or(forever);
    let first_byte_timeout = options.first_byte_timeout.unwrap_or(forever);
    let between_bytes = options.between_bytes_timeout.unwrap_or(forever);

    // One deadline for the whole connect phase: every address tried, TLS and
    // the HTTP handshake together.
    let connect_by = tokio::time::Instant::now() + connect_timeout;
    let mut last = Error::DestinationNotFound;
    let mut tcp = None;
    for addr in addrs {
        match tokio::time::timeout_at(connect_by, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                tcp = Some(stream);
                break;
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = Error::ConnectionRefused;
            }
            Ok(Err(e)) => last = Error::Connect(e),
            Err(_) => {
                last = Error::ConnectionTimeout;
                break;
            }
        }
    }
    let tcp = tcp.ok_or(last)?;
    let stream: Box<dyn Stream> = if secure {
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::from(ip),
            Err(_) => ServerName::try_from(host.to_owned()).map_err(Error::InvalidDnsNameError)?,
        };
        let tls = tokio::time::timeout_at(connect_by, tls_connector().connect(name, tcp))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(Error::Tls)?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = tokio::time::timeout_at(
        connect_by,
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    // The connection runs as its own task, owned by `io`: it ends when the
    // response is read or dropped, or when wasmtime drops `io` with the request.
    let connection = AbortOnDrop(tokio::spawn(conn));
    let io = async move {
        match (&mut { connection }.0).await {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(Error::ConnectionTerminated),
        }
    };

    // Origin-form on the wire: the authority travels in the Host header.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = http::Uri::try_from(path).map_err(|_| Error::HttpRequestUriInvalid)?;
    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| Error::ConnectionReadTimeout)??;
    let response = response.map(|incoming| {
        IdleCapped {
            incoming,
            idle: between_bytes,
            waiting: None,
        }
        .boxed_unsync()
    });
    Ok((
        response,
        Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
    ))
}

/// A TCP or TLS stream.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// One TLS client configuration for every tenant connection, built once: Mozilla's roots
/// plus the system's CA store (`SSL_CERT_FILE` honoured), like the host's own
/// clients.
fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let native = rustls_native_certs::load_native_certs();
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(
            added,
            ignored,
            errors = native.errors.len(),
            "system CA certificates for guests"
        );
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    });
    tokio_rustls::TlsConnector::from(config.clone())
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response body that fails with `connection-read-timeout` when the guest
/// has waited `idle` for data (time the guest spends elsewhere does not count).
struct IdleCapped {
    incoming: hyper::body::Incoming,
    idle: Duration,
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for IdleCapped {
    type Data = bytes::Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.waiting = None;
                Poll::Ready(frame.map(|f| f.map_err(Error::from)))
            }
            Poll::Pending => {
                let idle = self.idle;
                let waiting = self
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match waiting.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "fec0::1",
            "::10.0.0.1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "100::1",
        ] {
            assert!(is_private(ip.parse().expect("ip")), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "2002:5db8:d822::1",
        ] {
            assert!(!is_private(ip.parse().expect("ip")), "{ip}");
        }
    }

    fn empty_request(uri: &str, host: &str) -> http::Request<WasiBody> {
        http::Request::builder()
            .uri(uri)
            .header(http::header::HOST, host)
            .body(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .expect("request")
    }

    fn options(every: Duration) -> RequestOptions {
        RequestOptions {
            connect_timeout: Some(every),
            first_byte_timeout: Some(every),
            between_bytes_timeout: Some(every),
        }
    }

    /// A one-connection HTTP server that answers `head`, then `body` after `pause`.
    async fn raw_server(head: &'static str, body: &'static str, pause: Duration) -> SocketAddr {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = vec![0u8; 4096];
            let n = socket.read(&mut request).await.expect("read");
            let request = String::from_utf8_lossy(&request[..n]).into_owned();
            let head = head.replace("{request-line}", request.lines().next().unwrap_or(""));
            socket.write_all(head.as_bytes()).await.expect("head");
            tokio::time::sleep(pause).await;
            let _ = socket.write_all(body.as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        addr
    }

    #[tokio::test]
    async fn requests_go_to_the_checked_address_without_resolving_again() {
        // `.invalid` never resolves: only the pinned address can be reached.
        let addr = raw_server(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-seen: {request-line}\r\n\r\n",
            "ok",
            Duration::ZERO,
        )
        .await;
        let request = empty_request(
            &format!("http://rebind.invalid:{}/hello?x=1", addr.port()),
            "rebind.invalid",
        );
        let (response, _io) = send_pinned(
            request,
            "rebind.invalid",
            false,
            &[addr],
            options(Duration::from_secs(5)),
        )
        .await
        .expect("sent to the pinned address");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["x-seen"],
            "GET /hello?x=1 HTTP/1.1",
            "origin-form on the wire"
        );
        let body = response.into_body().collect().await.expect("body");
        assert_eq!(body.to_bytes(), "ok");
    }

    #[tokio::test]
    async fn a_stalled_body_ends_with_a_read_timeout() {
        let addr = raw_server(
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
            "defghij",
            Duration::from_secs(3),
        )
        .await;
        let request = empty_request(&format!("http://127.0.0.1:{}/", addr.port()), "x");
        let (response, _io) = send_pinned(
            request,
            "127.0.0.1",
            false,
            &[addr],
            options(Duration::from_millis(200)),
        )
        .await
        .expect("head arrives");
        let error = response
            .into_body()
            .collect()
            .await
            .expect_err("the body stalls");
        assert!(matches!(error, Error::ConnectionReadTimeout), "{error:?}");
    }

    #[tokio::test]
    async fn refused_connections_and_failed_handshakes_are_reported() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        let request = empty_request(&format!("http://127.0.0.1:{}/", closed.port()), "x");
        let refused = send_pinned(
            request,
            "127.0.0.1",
            false,
            &[closed],
            options(Duration::from_secs(5)),
        )
        .await
        .err()
        .expect("nothing listens");
        assert!(matches!(refused, Error::ConnectionRefused), "{refused:?}");

        // A plain-HTTP server spoken to over TLS: the handshake fails, no request leaves.
        let addr = raw_server("HTTP/1.1 400 Bad Request\r\n\r\n", "", Duration::ZERO).await;
        let request = empty_request(
            &format!("https://example.com:{}/", addr.port()),
            "example.com",
        );
        let tls = send_pinned(
            request,
            "example.com",
            true,
            &[addr],
            options(Duration::from_secs(5)),
        )
        .await
        .err()
        .expect("not TLS");
        assert!(matches!(tls, Error::Tls(_)), "{tls:?}");
    }

    #[tokio::test]
    async fn names_resolving_to_internal_addresses_are_refused() {
        let refused = resolve_checked("localhost", 80, false, Duration::from_secs(5)).await;
        assert!(
            matches!(refused, Err(Refused::Private { .. })),
            "{refused:?}"
        );
        for literal in [
            "127.0.0.1",
            "0.0.0.0",
            "::ffff:127.0.0.1",
            "169.254.169.254",
        ] {
            let refused = resolve_checked(literal, 80, false, Duration::from_secs(5)).await;
            assert!(
                matches!(refused, Err(Refused::Private { .. })),
                "{literal}: {refused:?}"
            );
        }
        let allowed = resolve_checked("127.0.0.1", 80, true, Duration::from_secs(5)).await;
        assert!(allowed.is_ok_and(|a| a.len() == 1));
        let missing =
            resolve_checked("no-such-host.invalid", 80, false, Duration::from_secs(5)).await;
        assert!(matches!(
            missing,
            Err(Refused::NotFound(_) | Refused::Timeout(_))
        ));
    }
}
