//! The agent's HTTP client: one HTTP/1.1 request per connection over hyper,
//! `http://` or `https://` verified with the TLS configuration the caller
//! passes (the controller's CA, from [`crate::enroll::Identity`]), every wait
//! bounded by a timeout. No TLS configuration: only `http://` works.
//!
//! The agent makes few requests (artifact downloads, enrollment, renewal),
//! so it keeps no connection pool, follows no redirects and reads no proxy
//! settings. A general client (reqwest) would add URL and IDNA tables, a
//! pool and a platform verifier: a tenth of the agent's binary.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, HeaderValue, RANGE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Why a request got no answer (an answer with an error status is not an
/// error here: callers read the status).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("not an http:// or https:// URL: {0}")]
    Url(String),
    #[error("https needs the controller's CA certificate (ca_file), and none is known")]
    NoCa,
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("no data for {0:?}")]
    ReadTimeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    /// The display includes the whole chain: hyper's own message alone
    /// ("error reading a body from connection") rarely says what went wrong.
    #[error("HTTP: {}", crate::error::error_chain(.0))]
    Protocol(#[source] hyper::Error),
    #[error("the answer is over {0} bytes")]
    TooLarge(usize),
}

impl From<hyper::Error> for HttpError {
    fn from(e: hyper::Error) -> Self {
        HttpError::Protocol(e)
    }
}

/// Timeouts for one kind of request.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    /// TCP connect, TLS handshake and sending the request.
    pub connect_timeout: Duration,
    /// The longest wait for the response head or any piece of the body.
    pub read_timeout: Duration,
}

/// A response whose body is read piece by piece.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    body: Incoming,
    read_timeout: Duration,
}

impl Response {
    /// The declared body length (`Content-Length`), if the server sent one.
    pub fn content_length(&self) -> Option<u64> {
        self.body.size_hint().exact()
    }

    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, HttpError> {
        loop {
            let frame = tokio::time::timeout(self.read_timeout, self.body.frame())
                .await
                .map_err(|_| HttpError::ReadTimeout(self.read_timeout))?;
            match frame {
                None => return Ok(None),
                Some(frame) => {
                    // Trailers carry no data: skip them.
                    if let Ok(data) = frame?.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// The whole body, refused once it passes `limit` bytes.
    pub async fn bytes(mut self, limit: usize) -> Result<Vec<u8>, HttpError> {
        let mut all = Vec::new();
        while let Some(chunk) = self.chunk().await? {
            if all.len() + chunk.len() > limit {
                return Err(HttpError::TooLarge(limit));
            }
            all.extend_from_slice(&chunk);
        }
        Ok(all)
    }
}

/// The TLS configuration `https://` requests verify the server with; `None`
/// refuses them ([`HttpError::NoCa`]).
pub type Tls = Option<Arc<ClientConfig>>;

impl Client {
    /// `GET url` over plain HTTP, from byte `from` on when it is not 0 (HTTP
    /// Range); an `https://` URL fails with [`HttpError::NoCa`].
    pub async fn get(&self, url: &str, from: u64) -> Result<Response, HttpError> {
        self.get_with(&None, url, from).await
    }

    /// `GET url`, from byte `from` on when it is not 0 (HTTP Range), an
    /// `https://` URL verified with `tls`.
    pub async fn get_with(&self, tls: &Tls, url: &str, from: u64) -> Result<Response, HttpError> {
        let range = (from > 0).then(|| format!("bytes={from}-"));
        self.send(tls, Method::GET, url, range, None).await
    }

    /// `POST url` with a JSON body over plain HTTP.
    pub async fn post_json(&self, url: &str, body: Vec<u8>) -> Result<Response, HttpError> {
        self.post_json_with(&None, url, body).await
    }

    /// `POST url` with a JSON body, an `https://` URL verified with `tls`.
    pub async fn post_json_with(
        &self,
        tls: &Tls,
        url: &str,
        body: Vec<u8>,
    ) -> Result<Response, HttpError> {
        self.send(tls, Method::POST, url, None, Some(body)).await
    }

    /// One request on a new connection.
    async fn send(
        &self,
        tls: &Tls,
        method: Method,
        url: &str,
        range: Option<String>,
        json: Option<Vec<u8>>,
    ) -> Result<Response, HttpError> {
        let bad_url = || HttpError::Url(url.to_owned());
        let uri: Uri = url.parse().map_err(|_| bad_url())?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad_url()),
        };
        let authority = uri.authority().ok_or_else(bad_url)?.clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });

        let mut request = Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(HOST, authority.as_str())
            .header(CONNECTION, HeaderValue::from_static("close"));
        if let Some(range) = range {
            request = request.header(RANGE, range);
        }
        if json.is_some() {
            request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let request = request
            .body(Full::new(Bytes::from(json.unwrap_or_default())))
            .map_err(|_| bad_url())?;

        let tls = match https {
            true => Some(tls.clone().ok_or(HttpError::NoCa)?),
            false => None,
        };
        let connect = async {
            let tcp = TcpStream::connect((host, port))
                .await
                .map_err(HttpError::Connect)?;
            let Some(config) = tls else {
                return start(tcp).await;
            };
            let name = ServerName::try_from(host.to_owned()).map_err(|_| bad_url())?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(HttpError::Tls)?;
            start(tls).await
        };
        let mut sender = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| HttpError::ConnectTimeout(self.connect_timeout))??;
        let head = tokio::time::timeout(self.read_timeout, sender.send_request(request))
            .await
            .map_err(|_| HttpError::ReadTimeout(self.read_timeout))??;
        Ok(Response {
            status: head.status(),
            body: head.into_body(),
            read_timeout: self.read_timeout,
        })
    }
}

/// Handshakes HTTP/1.1 on `stream` and drives the connection in a task.
async fn start<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Ends when the response is read or dropped (`Connection: close`).
    tokio::spawn(connection);
    Ok(sender)
}

/// A one-shot HTTP server for tests of the agent's clients.
#[cfg(test)]
pub(crate) mod testing {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    /// Answers the first connection with `status` and `body` and returns
    /// the base URL and the request it read (head and body, up to 64 KiB).
    pub async fn serve_once(status: &str, body: Vec<u8>) -> (String, oneshot::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while request.len() < 64 * 1024 && !complete(&request) {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&request).into_owned());
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(&body).await;
            let _ = socket.shutdown().await;
        });
        (format!("http://{addr}"), rx)
    }

    /// Whether `request` holds its whole head and the body it declares.
    fn complete(request: &[u8]) -> bool {
        let text = String::from_utf8_lossy(request).to_lowercase();
        let Some(end) = text.find("\r\n\r\n") else {
            return false;
        };
        let declared = text[..end]
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        request.len() >= end + 4 + declared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Client = Client {
        connect_timeout: Duration::from_secs(10),
        read_timeout: Duration::from_millis(300),
    };

    #[tokio::test]
    async fn a_post_sends_json_and_reads_the_answer() {
        let (url, request) = testing::serve_once("201 Created", b"{\"ok\":true}".to_vec()).await;
        let response = QUICK
            .post_json(&format!("{url}/api/v1/enroll"), b"{\"token\":1}".to_vec())
            .await
            .expect("answer");
        assert_eq!(response.status, StatusCode::CREATED);
        assert_eq!(response.content_length(), Some(11));
        assert_eq!(response.bytes(1024).await.expect("body"), b"{\"ok\":true}");
        let request = request.await.expect("request").to_lowercase();
        assert!(
            request.starts_with("post /api/v1/enroll http/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("content-type: application/json\r\n"),
            "{request}"
        );
        assert!(request.ends_with("\r\n\r\n{\"token\":1}"), "{request}");
    }

    #[tokio::test]
    async fn a_get_from_an_offset_asks_for_a_range() {
        let (url, request) = testing::serve_once("206 Partial Content", vec![1; 5]).await;
        let mut response = QUICK
            .get(&format!("{url}/a?b=c"), 120)
            .await
            .expect("answer");
        assert_eq!(response.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            response.chunk().await.expect("chunk").as_deref(),
            Some(&[1u8; 5][..])
        );
        assert!(response.chunk().await.expect("end").is_none());
        let request = request.await.expect("request").to_lowercase();
        assert!(request.starts_with("get /a?b=c http/1.1\r\n"), "{request}");
        assert!(request.contains("range: bytes=120-\r\n"), "{request}");
    }

    #[tokio::test]
    async fn an_answer_over_the_limit_is_refused() {
        let (url, _) = testing::serve_once("200 OK", vec![0; 4096]).await;
        let response = QUICK.get(&url, 0).await.expect("answer");
        let err = response.bytes(1000).await.expect_err("too large");
        assert!(matches!(err, HttpError::TooLarge(1000)), "{err}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        // Accepts (the kernel does) but never answers.
        let err = QUICK.get(&url, 0).await.expect_err("no answer");
        assert!(matches!(err, HttpError::ReadTimeout(_)), "{err}");
        drop(listener);
    }

    #[tokio::test]
    async fn bad_urls_and_https_without_a_ca_are_named() {
        for url in ["ftp://127.0.0.1/x", "no url", "http:///path"] {
            let err = QUICK.get(url, 0).await.expect_err(url);
            assert!(matches!(err, HttpError::Url(_)), "{url}: {err}");
            assert!(err.to_string().contains(url), "{err}");
        }
        // No unit test installs the CA: HTTPS has nothing to verify against.
        let err = QUICK
            .get("https://127.0.0.1:1/", 0)
            .await
            .expect_err("no CA");
        assert!(matches!(err, HttpError::NoCa), "{err}");
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        drop(listener);
        let err = QUICK.get(&url, 0).await.expect_err("refused");
        assert!(matches!(err, HttpError::Connect(_)), "{err}");
    }
}
