//! A fault-injecting HTTP/1.1 proxy for registry-client tests.
//!
//! [`FaultProxy`] listens on 127.0.0.1 and forwards every request to an
//! upstream `host:port` (normally a [`super::registry::Registry`] started
//! without TLS). The client under test is pointed at the proxy's address as
//! if it were the registry. [`Rule`]s pick requests (by method, path
//! substring or any predicate, every Nth match, at most N times) and apply a
//! [`Fault`] to them: an error status, a 429 with `Retry-After`, a response
//! cut off mid-body, a connection closed without an answer, or a stall.
//! Every request is recorded ([`FaultProxy::requests`]) with the fault it got
//! and the status the client saw, so a test can assert both that faults were
//! injected and that the client recovered from them.
//!
//! The proxy keeps client connections alive (HTTP/1.1 keep-alive) and opens
//! one upstream connection per request. The client's `Host` header is passed
//! on unchanged, so the registry builds its absolute `Location` URLs with the
//! proxy's address; any `Location` that still names the upstream is rewritten
//! to the proxy too.
//!
//! The [`http`] module holds the small HTTP/1.1 pieces (head parsing, body
//! framing, a blocking client and a threaded server) that the proxy, the
//! token server and the registry harness share. Everything is std::net and
//! threads with 30 s socket timeouts, so a broken test fails instead of
//! hanging.

use std::io::{self, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{Framing, Head};

/// Timeout for every socket read, write and connect made by the harness.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// What to do to a request that a [`Rule`] picked.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and a registry-style JSON error body, without
    /// forwarding the request (e.g. 500, 502, 503).
    Status(u16),
    /// Answer `429 Too Many Requests` with `Retry-After: retry_after`
    /// (seconds), without forwarding. [`Fault::too_many_requests`] uses 1 s.
    TooManyRequests { retry_after: u32 },
    /// Forward the request, then send the response head and only part of the
    /// body, and close the connection: the "dropped connection
    /// mid-download". The head still announces the full `Content-Length`. A
    /// response without a body (a HEAD, a 201 with no content) cannot be cut,
    /// so there the head is withheld as well: the upstream acted on the
    /// request but the client gets no answer.
    Truncate(Cut),
    /// Read the whole request, then close the connection without any
    /// response (nothing is forwarded).
    Close,
    /// Wait this long before forwarding the request (nothing is read from
    /// the request body meanwhile): for client timeouts.
    Stall(Duration),
    /// Forward, send the head and part of the body, wait `pause`, then send
    /// the rest: a download that stalls midway (read timeouts).
    StallBody { cut: Cut, pause: Duration },
}

impl Fault {
    /// `429 Too Many Requests` with `Retry-After: 1`.
    pub fn too_many_requests() -> Fault {
        Fault::TooManyRequests { retry_after: 1 }
    }

    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Status(_) => FaultKind::Status,
            Fault::TooManyRequests { .. } => FaultKind::TooManyRequests,
            Fault::Truncate(_) => FaultKind::Truncate,
            Fault::Close => FaultKind::Close,
            Fault::Stall(_) => FaultKind::Stall,
            Fault::StallBody { .. } => FaultKind::StallBody,
        }
    }
}

/// Where [`Fault::Truncate`] and [`Fault::StallBody`] cut a response body.
/// The cut always leaves at least one byte of a non-empty body unsent.
#[derive(Clone, Copy, Debug)]
pub enum Cut {
    /// After half of the body (rounded down).
    Half,
    /// After this many bytes of the body (as sent on the wire, so chunk
    /// headers count for a chunked body).
    After(u64),
}

/// The kind of a [`Fault`], for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    Status,
    TooManyRequests,
    Truncate,
    Close,
    Stall,
    StallBody,
}

/// A test on a request head, for [`Rule::when`].
type Predicate = Box<dyn Fn(&Head) -> bool + Send + Sync>;

/// A request predicate and the fault to inject into the requests it picks.
///
/// ```ignore
/// // Every 3rd GET of a blob, at most 4 times, gets a 500:
/// Rule::new(Fault::Status(500)).method("GET").path_contains("/blobs/").every(3).limit(4)
/// // The first 2 manifest PUTs get a 429:
/// Rule::new(Fault::too_many_requests()).method("PUT").path_contains("/manifests/").limit(2)
/// // Any predicate on the request head:
/// Rule::new(Fault::Close).when(|req| req.header("range").is_some())
/// ```
///
/// Rules are tried in order. Each rule counts the requests it matches; it
/// fires on its `every`-th, 2×`every`-th, ... match until it has fired
/// `limit` times. The first rule that fires decides the request's fault,
/// and rules after it do not see (or count) that request.
pub struct Rule {
    fault: Fault,
    method: Option<String>,
    path: Option<String>,
    when: Option<Predicate>,
    every: usize,
    limit: Option<usize>,
    matched: usize,
    fired: usize,
}

impl Rule {
    /// A rule that applies `fault` to every request (narrow it with the
    /// methods below).
    pub fn new(fault: Fault) -> Rule {
        Rule {
            fault,
            method: None,
            path: None,
            when: None,
            every: 1,
            limit: None,
            matched: 0,
            fired: 0,
        }
    }

    /// Only requests with this method (case-insensitive).
    pub fn method(mut self, method: &str) -> Rule {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Only requests whose target (path and query) contains `part`.
    pub fn path_contains(mut self, part: &str) -> Rule {
        self.path = Some(part.to_string());
        self
    }

    /// Only requests for which `pred` holds (in addition to the method and
    /// path filters). `pred` sees the request head: `method()`, `target()`,
    /// `header(name)`.
    pub fn when(mut self, pred: impl Fn(&Head) -> bool + Send + Sync + 'static) -> Rule {
        self.when = Some(Box::new(pred));
        self
    }

    /// Fire on every `n`-th matching request (the n-th, 2n-th, ...).
    pub fn every(mut self, n: usize) -> Rule {
        assert!(n > 0, "Rule::every(0)");
        self.every = n;
        self
    }

    /// Fire at most `n` times.
    pub fn limit(mut self, n: usize) -> Rule {
        self.limit = Some(n);
        self
    }

    fn matches(&self, head: &Head) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| head.method().eq_ignore_ascii_case(m))
            && self
                .path
                .as_deref()
                .is_none_or(|p| head.target().contains(p))
            && self.when.as_ref().is_none_or(|pred| pred(head))
    }

    /// Counts a request and says whether the rule fires on it.
    fn fires(&mut self, head: &Head) -> bool {
        if self.limit.is_some_and(|limit| self.fired >= limit) || !self.matches(head) {
            return false;
        }
        self.matched += 1;
        if self.matched.is_multiple_of(self.every) {
            self.fired += 1;
            return true;
        }
        false
    }
}

/// What the proxy does with a request after its fault, if any.
enum Action<'a> {
    /// The fault answered it; the registry never saw it.
    Answered,
    /// Forwarded to the registry, the response body maybe cut or paused.
    Forward(Option<BodyFault<'a>>),
}

/// One request the proxy received.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query, as the client sent it.
    pub target: String,
    /// The client's `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The fault injected into this request, if any.
    pub fault: Option<FaultKind>,
    /// The status of the response head the client received (the injected
    /// one or the upstream's); `None` when it got no head.
    pub status: Option<u16>,
}

/// The running proxy; stops (closing every connection) when dropped.
pub struct FaultProxy {
    shared: Arc<Shared>,
    server: http::Server,
}

struct Shared {
    upstream: SocketAddr,
    upstream_host: String,
    /// Set once the listener is bound.
    proxy_host: OnceLock<String>,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<SeenRequest>>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` ("host:port"; the upstream must speak
    /// plain HTTP, so not a TLS registry) that applies `rules` (see
    /// [`Rule`]; an empty list forwards everything untouched).
    pub fn start(upstream: &str, rules: Vec<Rule>) -> FaultProxy {
        let upstream_addr = upstream
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .unwrap_or_else(|| panic!("fault proxy: cannot resolve upstream {upstream}"));
        let shared = Arc::new(Shared {
            upstream: upstream_addr,
            upstream_host: upstream.to_string(),
            proxy_host: OnceLock::new(),
            rules: Mutex::new(rules),
            seen: Mutex::new(Vec::new()),
        });
        let handler_shared = shared.clone();
        let server = http::Server::start(move |stream, stopping| {
            // Errors here are the client's or upstream's socket failing (or
            // a fault we injected): nothing to report.
            let _ = serve_client(&handler_shared, stream, stopping);
        })
        .expect("fault proxy: bind 127.0.0.1");
        let _ = shared.proxy_host.set(server.host());
        FaultProxy { shared, server }
    }

    /// "127.0.0.1:PORT": what the client should use as the registry host.
    pub fn host(&self) -> String {
        self.server.host()
    }

    /// "http://127.0.0.1:PORT".
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// Replaces the rules (their counters start again from zero).
    pub fn set_rules(&self, rules: Vec<Rule>) {
        *self.shared.rules.lock().unwrap() = rules;
    }

    /// How many times rule number `index` (in the current list) fired.
    pub fn rule_fired(&self, index: usize) -> usize {
        self.shared.rules.lock().unwrap()[index].fired
    }

    /// Every request seen so far, in arrival order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// How many requests had this method (or any, for "") and a target
    /// containing `path_part`.
    pub fn count(&self, method: &str, path_part: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| method.is_empty() || r.method.eq_ignore_ascii_case(method))
            .filter(|r| r.target.contains(path_part))
            .count()
    }

    /// How many faults of this kind were injected.
    pub fn injected(&self, kind: FaultKind) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.fault == Some(kind))
            .count()
    }

    /// How many faults were injected in all.
    pub fn injected_total(&self) -> usize {
        self.requests().iter().filter(|r| r.fault.is_some()).count()
    }
}

impl Shared {
    fn decide(&self, head: &Head) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        rules
            .iter_mut()
            .find_map(|rule| rule.fires(head).then(|| rule.fault.clone()))
    }

    fn record(&self, head: &Head, fault: Option<FaultKind>) -> usize {
        let mut seen = self.seen.lock().unwrap();
        seen.push(SeenRequest {
            method: head.method().to_string(),
            target: head.target().to_string(),
            authorization: head.header("authorization").map(str::to_string),
            fault,
            status: None,
        });
        seen.len() - 1
    }

    fn set_status(&self, index: usize, status: u16) {
        self.seen.lock().unwrap()[index].status = Some(status);
    }

    /// A registry `Location` naming the upstream is made to name the proxy,
    /// so the client's next request comes back through it.
    fn rewrite_location(&self, head: &mut Head) {
        let Some(location) = head.header("location") else {
            return;
        };
        let upstream = format!("http://{}", self.upstream_host);
        if let Some(rest) = location.strip_prefix(&upstream) {
            let proxy = self.proxy_host.get().map_or("", String::as_str);
            let rewritten = format!("http://{proxy}{rest}");
            head.set("Location", &rewritten);
        }
    }
}

/// Serves one client connection: requests one after another (keep-alive)
/// until the client closes, asks to close, or a fault ends the connection.
fn serve_client(shared: &Shared, client: TcpStream, stopping: &AtomicBool) -> io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut writer = client;
    loop {
        let Some(mut head) = http::read_head(&mut reader)? else {
            return Ok(());
        };
        let framing = http::request_framing(&head)?;
        let keep_alive = head.version() == "HTTP/1.1" && !head.has_token("connection", "close");
        // The proxy answers `Expect: 100-continue` itself, so the upstream
        // never sees it (and never sends an interim response).
        let expects_continue = head.has_token("expect", "100-continue");
        head.remove("expect");
        let fault = shared.decide(&head);
        let index = shared.record(&head, fault.as_ref().map(Fault::kind));
        if expects_continue {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        // Faults that answer instead of the registry; the others forward,
        // maybe late, maybe with the body cut or paused.
        let action = match fault {
            Some(Fault::Status(status)) => {
                http::copy_body(&mut reader, &mut io::sink(), framing)?;
                send_error(&mut writer, head.method(), status, None, keep_alive)?;
                shared.set_status(index, status);
                Action::Answered
            }
            Some(Fault::TooManyRequests { retry_after }) => {
                http::copy_body(&mut reader, &mut io::sink(), framing)?;
                send_error(
                    &mut writer,
                    head.method(),
                    429,
                    Some(retry_after),
                    keep_alive,
                )?;
                shared.set_status(index, 429);
                Action::Answered
            }
            Some(Fault::Close) => {
                http::copy_body(&mut reader, &mut io::sink(), framing)?;
                writer.flush()?;
                let _ = writer.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(Fault::Stall(pause)) => {
                http::sleep_unless_stopping(pause, stopping);
                Action::Forward(None)
            }
            Some(Fault::Truncate(cut)) => Action::Forward(Some(BodyFault {
                cut,
                pause: None,
                stopping,
            })),
            Some(Fault::StallBody { cut, pause }) => Action::Forward(Some(BodyFault {
                cut,
                pause: Some(pause),
                stopping,
            })),
            None => Action::Forward(None),
        };
        let keep_going = match action {
            Action::Answered => keep_alive,
            Action::Forward(body_fault) => forward(
                shared,
                index,
                &head,
                framing,
                &mut reader,
                &mut writer,
                keep_alive,
                body_fault,
            )?,
        };
        writer.flush()?;
        if !keep_going {
            // A FIN rather than a reset: the request was read in full.
            let _ = writer.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}

/// How [`forward`] tampers with the response body.
struct BodyFault<'a> {
    cut: Cut,
    /// `None`: close at the cut. `Some`: wait, then send the rest.
    pause: Option<Duration>,
    stopping: &'a AtomicBool,
}

/// Forwards one request upstream and relays the response. Returns whether
/// the client connection can serve another request.
#[allow(clippy::too_many_arguments)]
fn forward(
    shared: &Shared,
    index: usize,
    head: &Head,
    framing: Framing,
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    keep_alive: bool,
    body_fault: Option<BodyFault>,
) -> io::Result<bool> {
    let upstream = match TcpStream::connect_timeout(&shared.upstream, IO_TIMEOUT) {
        Ok(stream) => stream,
        Err(_) => {
            http::copy_body(reader, &mut io::sink(), framing)?;
            send_error(writer, head.method(), 502, None, keep_alive)?;
            shared.set_status(index, 502);
            return Ok(keep_alive);
        }
    };
    http::set_timeouts(&upstream)?;
    // One upstream connection per request keeps the relay simple.
    let mut up_head = head.clone();
    up_head.set("Connection", "close");
    up_head.remove("keep-alive");
    up_head.remove("proxy-connection");
    let mut up_writer = upstream.try_clone()?;
    up_writer.write_all(&up_head.to_bytes())?;
    http::copy_body(reader, &mut up_writer, framing)?;
    up_writer.flush()?;

    let mut up_reader = BufReader::new(upstream);
    let mut resp = loop {
        let resp = http::read_head(&mut up_reader)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upstream closed without a response",
            )
        })?;
        // Skip interim responses (the upstream never saw an Expect).
        if !(100..200).contains(&resp.status()) {
            break resp;
        }
    };
    let resp_framing = http::response_framing(head.method(), &resp)?;
    shared.rewrite_location(&mut resp);
    let keep = keep_alive && resp_framing != Framing::UntilClose && body_fault.is_none();
    finish_head(&mut resp, keep);

    let Some(body_fault) = body_fault else {
        shared.set_status(index, resp.status());
        writer.write_all(&resp.to_bytes())?;
        http::copy_body(&mut up_reader, writer, resp_framing)?;
        return Ok(keep);
    };
    // Buffer the whole (raw, still framed) body, so a cut "after half" is
    // known for chunked bodies too. Test bodies are small.
    let mut raw = Vec::new();
    http::copy_body(&mut up_reader, &mut raw, resp_framing)?;
    if raw.is_empty() {
        if let Some(pause) = body_fault.pause {
            http::sleep_unless_stopping(pause, body_fault.stopping);
            shared.set_status(index, resp.status());
            writer.write_all(&resp.to_bytes())?;
        }
        // Truncate: nothing to cut, so withhold the head as well.
        return Ok(false);
    }
    let cut = match body_fault.cut {
        Cut::Half => raw.len() / 2,
        Cut::After(n) => (n as usize).min(raw.len() - 1),
    };
    shared.set_status(index, resp.status());
    writer.write_all(&resp.to_bytes())?;
    writer.write_all(&raw[..cut])?;
    writer.flush()?;
    if let Some(pause) = body_fault.pause {
        http::sleep_unless_stopping(pause, body_fault.stopping);
        writer.write_all(&raw[cut..])?;
    }
    Ok(false)
}

/// Marks a response head for keep-alive or close.
fn finish_head(head: &mut Head, keep_alive: bool) {
    if keep_alive {
        head.remove("connection");
    } else {
        head.set("Connection", "close");
    }
}

/// Answers with `status` and a body in the registry's error format (no
/// body for a HEAD), plus `Retry-After` if given.
fn send_error(
    writer: &mut TcpStream,
    method: &str,
    status: u16,
    retry_after: Option<u32>,
    keep_alive: bool,
) -> io::Result<()> {
    let code = match status {
        401 => "UNAUTHORIZED",
        404 => "NOT_FOUND",
        429 => "TOOMANYREQUESTS",
        502 | 503 => "UNAVAILABLE",
        _ => "UNKNOWN",
    };
    let body = format!(
        "{{\"errors\":[{{\"code\":\"{code}\",\"message\":\"fault injected by the test proxy\",\"detail\":{status}}}]}}"
    );
    let mut head = Head::response(status);
    head.set("Content-Type", "application/json; charset=utf-8");
    head.set("Docker-Distribution-Api-Version", "registry/2.0");
    head.set("Content-Length", &body.len().to_string());
    if let Some(seconds) = retry_after {
        head.set("Retry-After", &seconds.to_string());
    }
    finish_head(&mut head, keep_alive);
    let mut msg = head.to_bytes();
    if !method.eq_ignore_ascii_case("HEAD") {
        msg.extend_from_slice(body.as_bytes());
    }
    writer.write_all(&msg)
}

/// Minimal blocking HTTP/1.1: message heads, body framing, a client and a
/// thread-per-connection server. Shared by the proxy, the token server and
/// the registry harness.
pub mod http {
    use std::collections::HashMap;
    use std::io::{self, BufRead, BufReader, Read, Write};
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use super::IO_TIMEOUT;

    /// Larger heads are refused (a test talking garbage fails fast).
    const MAX_HEAD: usize = 64 * 1024;

    /// A request or response head: the start line and the header fields in
    /// order, names as received.
    #[derive(Clone, Debug)]
    pub struct Head {
        /// "GET /v2/ HTTP/1.1" or "HTTP/1.1 200 OK".
        pub start: String,
        pub headers: Vec<(String, String)>,
    }

    impl Head {
        pub fn request(method: &str, target: &str) -> Head {
            Head {
                start: format!("{method} {target} HTTP/1.1"),
                headers: Vec::new(),
            }
        }

        pub fn response(status: u16) -> Head {
            Head {
                start: format!("HTTP/1.1 {status} {}", reason(status)),
                headers: Vec::new(),
            }
        }

        fn word(&self, n: usize) -> &str {
            self.start.split(' ').nth(n).unwrap_or("")
        }

        /// A request's method.
        pub fn method(&self) -> &str {
            self.word(0)
        }

        /// A request's target (path and query).
        pub fn target(&self) -> &str {
            self.word(1)
        }

        /// A request's path, without the query.
        pub fn path(&self) -> &str {
            self.target().split('?').next().unwrap_or("")
        }

        /// A request's protocol version ("HTTP/1.1").
        pub fn version(&self) -> &str {
            self.word(2)
        }

        /// A response's status code (0 if the start line is malformed).
        pub fn status(&self) -> u16 {
            self.word(1).parse().unwrap_or(0)
        }

        /// The first value of a header (name case-insensitive).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        /// Whether a comma-separated header lists `token` (case-insensitive).
        pub fn has_token(&self, name: &str, token: &str) -> bool {
            self.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .flat_map(|(_, v)| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        }

        /// Replaces every value of a header with one value.
        pub fn set(&mut self, name: &str, value: &str) {
            self.remove(name);
            self.headers.push((name.to_string(), value.to_string()));
        }

        pub fn remove(&mut self, name: &str) {
            self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        }

        pub fn to_bytes(&self) -> Vec<u8> {
            let mut out = format!("{}\r\n", self.start);
            for (name, value) in &self.headers {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
            out.push_str("\r\n");
            out.into_bytes()
        }
    }

    pub fn reason(status: u16) -> &'static str {
        match status {
            100 => "Continue",
            200 => "OK",
            201 => "Created",
            202 => "Accepted",
            204 => "No Content",
            206 => "Partial Content",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            429 => "Too Many Requests",
            500 => "Internal Server Error",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ => "Status",
        }
    }

    fn invalid(msg: impl Into<String>) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, msg.into())
    }

    /// Reads one line (with its line ending); EOF before the end of the
    /// line is an error.
    fn read_line(r: &mut impl BufRead, limit: usize) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        r.take(limit as u64).read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(if line.len() >= limit {
                invalid("HTTP line too long")
            } else {
                io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-line")
            });
        }
        Ok(line)
    }

    /// Reads a message head. `Ok(None)` when the peer closed the connection
    /// cleanly before sending anything (the end of a keep-alive connection).
    pub fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
        // Tolerate empty lines before a request, as RFC 9112 asks.
        let start = loop {
            if r.fill_buf()?.is_empty() {
                return Ok(None);
            }
            let line = read_line(r, MAX_HEAD)?;
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            if !line.is_empty() {
                break line;
            }
        };
        let mut headers = Vec::new();
        let mut size = start.len();
        loop {
            let line = read_line(r, MAX_HEAD)?;
            size += line.len();
            if size > MAX_HEAD {
                return Err(invalid("HTTP head too large"));
            }
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        Ok(Some(Head { start, headers }))
    }

    /// How a message body is delimited.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Framing {
        Empty,
        Length(u64),
        Chunked,
        /// Until the sender closes the connection (responses only).
        UntilClose,
    }

    fn length(head: &Head) -> io::Result<Option<u64>> {
        head.header("content-length")
            .map(|v| {
                v.parse()
                    .map_err(|_| invalid(format!("bad Content-Length {v:?}")))
            })
            .transpose()
    }

    pub fn request_framing(head: &Head) -> io::Result<Framing> {
        if head.has_token("transfer-encoding", "chunked") {
            return Ok(Framing::Chunked);
        }
        Ok(match length(head)? {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        })
    }

    /// The framing of a response to a request with `method`.
    pub fn response_framing(method: &str, head: &Head) -> io::Result<Framing> {
        let status = head.status();
        if method.eq_ignore_ascii_case("HEAD")
            || (100..200).contains(&status)
            || status == 204
            || status == 304
        {
            return Ok(Framing::Empty);
        }
        if head.has_token("transfer-encoding", "chunked") {
            return Ok(Framing::Chunked);
        }
        Ok(match length(head)? {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        })
    }

    /// Copies exactly `n` bytes.
    fn copy_exact(r: &mut impl BufRead, w: &mut impl Write, n: u64) -> io::Result<()> {
        let copied = io::copy(&mut r.take(n), w)?;
        if copied < n {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("body ended after {copied} of {n} bytes"),
            ));
        }
        Ok(())
    }

    /// Copies a body as it is on the wire (chunk framing included), stopping
    /// where `framing` says it ends. Returns the bytes copied.
    pub fn copy_body(
        r: &mut impl BufRead,
        w: &mut impl Write,
        framing: Framing,
    ) -> io::Result<u64> {
        match framing {
            Framing::Empty => Ok(0),
            Framing::Length(n) => copy_exact(r, w, n).map(|()| n),
            Framing::UntilClose => io::copy(r, w),
            Framing::Chunked => {
                let mut total = 0;
                loop {
                    let line = read_line(r, 4096)?;
                    w.write_all(&line)?;
                    total += line.len() as u64;
                    let size = chunk_size(&line)?;
                    if size == 0 {
                        // Trailer fields, then the final empty line.
                        loop {
                            let line = read_line(r, MAX_HEAD)?;
                            w.write_all(&line)?;
                            total += line.len() as u64;
                            if line == b"\r\n" || line == b"\n" {
                                return Ok(total);
                            }
                        }
                    }
                    copy_exact(r, w, size + 2)?; // data and its CRLF
                    total += size + 2;
                }
            }
        }
    }

    fn chunk_size(line: &[u8]) -> io::Result<u64> {
        let text = String::from_utf8_lossy(line);
        let hex = text.split(';').next().unwrap_or("").trim();
        u64::from_str_radix(hex, 16).map_err(|_| invalid(format!("bad chunk size line {text:?}")))
    }

    /// Reads a body, decoding chunked framing. The flag says whether the
    /// body was complete (false: the connection ended early).
    pub fn read_body(r: &mut impl BufRead, framing: Framing) -> io::Result<(Vec<u8>, bool)> {
        let mut body = Vec::new();
        match framing {
            Framing::Empty => Ok((body, true)),
            Framing::UntilClose => {
                r.read_to_end(&mut body)?;
                Ok((body, true))
            }
            Framing::Length(n) => {
                r.take(n).read_to_end(&mut body)?;
                let complete = body.len() as u64 == n;
                Ok((body, complete))
            }
            Framing::Chunked => loop {
                let line = match read_line(r, 4096) {
                    Ok(line) => line,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok((body, false)),
                    Err(e) => return Err(e),
                };
                let size = chunk_size(&line)?;
                if size == 0 {
                    // Skip trailers.
                    while read_line(r, MAX_HEAD).is_ok_and(|l| l != b"\r\n" && l != b"\n") {}
                    return Ok((body, true));
                }
                let before = body.len();
                r.take(size).read_to_end(&mut body)?;
                if (body.len() - before) as u64 != size || read_line(r, 16).is_err() {
                    return Ok((body, false));
                }
            },
        }
    }

    pub fn set_timeouts(stream: &TcpStream) -> io::Result<()> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))
    }

    /// Sleeps `total`, waking early when the server is stopping.
    pub fn sleep_unless_stopping(total: Duration, stopping: &AtomicBool) {
        let end = Instant::now() + total;
        while !stopping.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= end {
                return;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(50)));
        }
    }

    /// A response read by [`request`].
    #[derive(Debug)]
    pub struct Response {
        pub head: Head,
        pub body: Vec<u8>,
        /// False when the connection ended before the body did.
        pub complete: bool,
    }

    impl Response {
        pub fn status(&self) -> u16 {
            self.head.status()
        }

        pub fn header(&self, name: &str) -> Option<&str> {
            self.head.header(name)
        }

        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    /// Sends one plain-HTTP request to `host` ("127.0.0.1:PORT") on a new
    /// connection and reads the response. `Host`, `Content-Length` and
    /// `Connection: close` are added.
    pub fn request(
        host: &str,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let addr = host
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| invalid(format!("cannot resolve {host}")))?;
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        set_timeouts(&stream)?;
        let mut head = Head::request(method, target);
        head.set("Host", host);
        for (name, value) in headers {
            head.headers.push((name.to_string(), value.to_string()));
        }
        if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
            head.set("Content-Length", &body.len().to_string());
        }
        head.set("Connection", "close");
        let mut writer = stream.try_clone()?;
        let mut msg = head.to_bytes();
        msg.extend_from_slice(body);
        writer.write_all(&msg)?;
        let mut reader = BufReader::new(stream);
        let head = read_head(&mut reader)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed without a response",
            )
        })?;
        let (body, complete) = read_body(&mut reader, response_framing(method, &head)?)?;
        Ok(Response {
            head,
            body,
            complete,
        })
    }

    /// A thread-per-connection TCP server on 127.0.0.1 (a free port). On
    /// drop it stops accepting, shuts down every open connection (so
    /// handlers blocked on a socket return) and joins all threads.
    pub struct Server {
        addr: SocketAddr,
        stopping: Arc<AtomicBool>,
        conns: Arc<Mutex<HashMap<u64, TcpStream>>>,
        workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
        accept: Option<JoinHandle<()>>,
    }

    impl Server {
        /// `handler` runs on its own thread for each connection; it gets the
        /// stream (timeouts already set) and the stop flag.
        pub fn start(
            handler: impl Fn(TcpStream, &AtomicBool) + Send + Sync + 'static,
        ) -> io::Result<Server> {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let stopping = Arc::new(AtomicBool::new(false));
            let conns: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
            let workers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
            let handler = Arc::new(handler);
            let accept = {
                let (stopping, conns, workers) = (stopping.clone(), conns.clone(), workers.clone());
                let next_id = AtomicU64::new(0);
                std::thread::spawn(move || {
                    for stream in listener.incoming() {
                        if stopping.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        if set_timeouts(&stream).is_err() {
                            continue;
                        }
                        let Ok(clone) = stream.try_clone() else {
                            continue;
                        };
                        let id = next_id.fetch_add(1, Ordering::SeqCst);
                        conns.lock().unwrap().insert(id, clone);
                        let (handler, stopping, conns) =
                            (handler.clone(), stopping.clone(), conns.clone());
                        let worker = std::thread::spawn(move || {
                            handler(stream, &stopping);
                            conns.lock().unwrap().remove(&id);
                        });
                        let mut workers = workers.lock().unwrap();
                        workers.retain(|w| !w.is_finished());
                        workers.push(worker);
                    }
                })
            };
            Ok(Server {
                addr,
                stopping,
                conns,
                workers,
                accept: Some(accept),
            })
        }

        pub fn addr(&self) -> SocketAddr {
            self.addr
        }

        /// "127.0.0.1:PORT".
        pub fn host(&self) -> String {
            self.addr.to_string()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stopping.store(true, Ordering::SeqCst);
            // Wake the accept loop with a connection it will discard.
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            if let Some(accept) = self.accept.take() {
                let _ = accept.join();
            }
            for conn in self.conns.lock().unwrap().values() {
                let _ = conn.shutdown(Shutdown::Both);
            }
            let workers = std::mem::take(&mut *self.workers.lock().unwrap());
            for worker in workers {
                let _ = worker.join();
            }
        }
    }
}
