//! Helpers for end-to-end tests: the real `duckwire` binary on a free port, a real
//! WebSocket client (tungstenite), raw HTTP over a TCP socket, and Arrow IPC decoding.

pub mod deflate_client;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// A query that runs until it is interrupted (minutes on these machines).
pub const SLOW_SQL: &str = "select count(*) from range(100000000000) t(i) where i % 7 = 3";

/// How long a test waits for any single reply before failing (instead of hanging).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// The Parquet test data in `tests/data` (flights, athletes, penguins).
pub fn data_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name)
}

/// The `duckwire` binary: `$DUCKWIRE_BIN`, or the one next to this executable (a test in
/// target/<profile>/deps, or a tool in target/<profile>).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("DUCKWIRE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let here = exe.parent().expect("executable dir");
    let dir = if here.join("duckwire").exists() {
        here
    } else {
        here.parent().expect("target dir")
    };
    let binary = dir.join("duckwire");
    assert!(
        binary.exists(),
        "{} not found: build it first (scripts/test.sh does)",
        binary.display()
    );
    binary
}

/// A running server process; killed when dropped.
pub struct ServerProcess {
    child: Option<Child>,
    pub addr: String,
}

impl ServerProcess {
    pub fn start(args: &[&str]) -> ServerProcess {
        Self::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        Self::spawn(args, env, Stdio::inherit())
    }

    /// Starts the server with its log output (stderr) written to `log`.
    pub fn start_logging_to(args: &[&str], env: &[(&str, &str)], log: &Path) -> ServerProcess {
        let file = std::fs::File::create(log).expect("create the log file");
        Self::spawn(args, env, Stdio::from(file))
    }

    fn spawn(args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> ServerProcess {
        let mut command = Command::new(binary());
        command.args(["--port", "0"]);
        for (flag, default) in [("--threads", "2"), ("--log-level", "warn")] {
            if !args.contains(&flag) {
                command.args([flag, default]);
            }
        }
        command.args(args).stdout(Stdio::piped()).stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start duckwire");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("startup line");
        // `ws://` or, with --tls-cert, `wss://`.
        let addr = line
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no address in startup line {line:?}"))
            .to_string();
        ServerProcess {
            child: Some(child),
            addr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn connect(&self) -> Client {
        Client::connect(&self.url("/"), &[])
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The server's resident set size now, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        self.status_bytes("VmRSS:")
    }

    /// File descriptors the server has open (sockets included).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("/proc/<pid>/fd")
            .count()
    }

    /// The most the resident set reached since the server started (`VmHWM`).
    pub fn peak_rss_bytes(&self) -> u64 {
        self.status_bytes("VmHWM:")
    }

    /// The anonymous part of the resident set (heaps, stacks, buffers): what the server
    /// allocated, without the pages of its own code and libraries it has touched so far.
    pub fn anonymous_rss_bytes(&self) -> u64 {
        self.status_bytes("RssAnon:")
    }

    fn status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/<pid>/status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/<pid>/status"));
        kib * 1024
    }

    /// A value from the server's `/metrics` (0 when the series is absent).
    pub fn metric(&self, name: &str) -> f64 {
        let (_, _, body) = get(&self.addr, "/metrics", "");
        String::from_utf8(body)
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")).map(str::to_string))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        child.wait().expect("wait")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a client received.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Json(Value),
    Binary(Vec<u8>),
    Closed(Option<u16>),
}

pub struct Client {
    socket: WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub fn try_connect(url: &str, headers: &[(&str, &str)]) -> Result<Client, tungstenite::Error> {
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            request.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let (socket, _) = tungstenite::connect(request)?;
        if let tungstenite::stream::MaybeTlsStream::Plain(stream) = socket.get_ref() {
            stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        }
        Ok(Client { socket })
    }

    /// Sends `text`, giving up after `timeout` if the server stops reading (backpressure);
    /// `false` then.
    pub fn send_text_within(&mut self, text: &str, timeout: Duration) -> bool {
        if let tungstenite::stream::MaybeTlsStream::Plain(stream) = self.socket.get_ref() {
            stream.set_write_timeout(Some(timeout)).unwrap();
        }
        self.socket.send(Message::Text(text.into())).is_ok()
    }

    pub fn connect(url: &str, headers: &[(&str, &str)]) -> Client {
        Self::try_connect(url, headers).expect("WebSocket connect")
    }

    pub fn send_json(&mut self, value: Value) {
        self.socket
            .send(Message::Text(value.to_string().into()))
            .expect("send");
    }

    pub fn send_text(&mut self, text: &str) {
        self.socket.send(Message::Text(text.into())).expect("send");
    }

    pub fn send_binary(&mut self, bytes: Vec<u8>) {
        self.socket
            .send(Message::Binary(bytes.into()))
            .expect("send");
    }

    pub fn recv(&mut self) -> Received {
        loop {
            match self.socket.read() {
                Ok(Message::Text(text)) => {
                    return Received::Json(
                        serde_json::from_str(text.as_str()).expect("server sent JSON"),
                    )
                }
                Ok(Message::Binary(bytes)) => return Received::Binary(bytes.to_vec()),
                Ok(Message::Close(frame)) => {
                    return Received::Closed(frame.map(|f| u16::from(f.code)))
                }
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => return Received::Closed(None),
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    panic!("no reply within {REPLY_TIMEOUT:?}")
                }
                Err(e) => return Received::Closed(Some(close_code_of(&e))),
            }
        }
    }

    pub fn recv_json(&mut self) -> Value {
        match self.recv() {
            Received::Json(value) => value,
            other => panic!("expected a JSON message, got {other:?}"),
        }
    }

    pub fn recv_binary(&mut self) -> Vec<u8> {
        match self.recv() {
            Received::Binary(bytes) => bytes,
            other => panic!("expected a binary message, got {other:?}"),
        }
    }

    /// Waits for the close frame and returns its code.
    pub fn recv_close(&mut self) -> Option<u16> {
        loop {
            if let Received::Closed(code) = self.recv() {
                return code;
            }
        }
    }

    /// Sends a request and returns the reply (convenience for one-at-a-time tests).
    pub fn request(&mut self, value: Value) -> Value {
        self.send_json(value);
        self.recv_json()
    }

    pub fn close(mut self) {
        let _ = self.socket.close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        let _ = self.socket.flush();
    }
}

fn close_code_of(_: &tungstenite::Error) -> u16 {
    1006
}

/// Splits an Arrow result frame into its header JSON and IPC stream bytes.
pub fn split_arrow_frame(frame: &[u8]) -> (Value, &[u8]) {
    let n = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&frame[4..4 + n]).expect("header JSON");
    (header, &frame[4 + n..])
}

/// Decodes an Arrow IPC stream into record batches.
pub fn read_ipc(bytes: &[u8]) -> Vec<arrow_array::RecordBatch> {
    let reader =
        arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes.to_vec()), None)
            .expect("valid Arrow IPC stream");
    reader.map(|b| b.expect("batch")).collect()
}

/// A raw HTTP/1.1 exchange: returns (status, headers, body).
pub fn http(addr: &str, request: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    http_bytes(addr, request.as_bytes())
}

pub fn http_bytes(addr: &str, request: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let split = head_end(&response).expect("response head");
    let (status, headers) = parse_head(&response[..split]);
    let body = &response[split + 4..];
    let body = if header(&headers, "transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        dechunk(body)
    } else {
        body.to_vec()
    };
    (status, headers, body)
}

/// The Python of the venv `.ci/run` makes under `~/.cache/duckwire/<venv>` (or the one `env`
/// names), holding `what`. Without it the test is skipped (`None`), except under CI, where it
/// must be there.
pub fn python_in_venv(env: &str, venv: &str, what: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(format!(".cache/duckwire/{venv}/bin/python"))
    });
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!("no Python with {what} at {} ({env})", path.display());
    }
    eprintln!("skipped: no Python with {what} at {}", path.display());
    None
}

/// A body as sent with `Content-Encoding: encoding`, decoded as a browser would; panics on an
/// encoding we do not speak or a body that does not decode.
pub fn decode_body(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        None | Some("identity") => out.extend_from_slice(body),
        Some("gzip") => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("a gzip body");
        }
        Some("br") => {
            brotli::BrotliDecompress(&mut &body[..], &mut out).expect("a br body");
        }
        Some("zstd") => out = zstd::stream::decode_all(body).expect("a zstd body"),
        Some(other) => panic!("unexpected Content-Encoding {other}"),
    }
    out
}

/// The body of a `Transfer-Encoding: chunked` answer; panics on broken framing.
pub fn dechunk(mut wire: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = wire
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size_text = std::str::from_utf8(&wire[..line_end]).expect("an ASCII chunk size");
        let size = usize::from_str_radix(size_text.trim(), 16).expect("a hex chunk size");
        wire = &wire[line_end + 2..];
        if size == 0 {
            assert_eq!(wire, b"\r\n", "the chunked body ends with an empty chunk");
            return body;
        }
        body.extend_from_slice(&wire[..size]);
        assert_eq!(&wire[size..size + 2], b"\r\n", "each chunk ends with CRLF");
        wire = &wire[size + 2..];
    }
}

/// Where a response head ends (the blank line), if it has arrived.
pub fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

/// The status and the headers (names lower-cased) of a response head.
pub fn parse_head(head: &[u8]) -> (u16, Vec<(String, String)>) {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

pub fn get(addr: &str, path: &str, extra_headers: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}Connection: close\r\n\r\n"),
    )
}

pub fn post_json(
    addr: &str,
    body: &Value,
    extra_headers: &str,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let body = body.to_string();
    http(
        addr,
        &format!(
            "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// The rows of a Mosaic REST `json` query, asserting it answered 200.
pub fn post_rows(server: &ServerProcess, sql: &str) -> Value {
    let (status, _, body) = post_json(
        &server.addr,
        &serde_json::json!({"type":"json","sql":sql}),
        "",
    );
    assert_eq!(status, 200, "{sql}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// `text` as a query-string value.
pub fn url_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A fresh temporary directory for a test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("duckwire-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An Arrow IPC stream with columns id BIGINT and name VARCHAR.
pub fn arrow_ipc_table(ids: &[i64], names: &[&str]) -> Vec<u8> {
    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use std::sync::Arc;
    let batch = RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef),
        (
            "name",
            Arc::new(StringArray::from(names.to_vec())) as ArrayRef,
        ),
    ])
    .unwrap();
    ipc_stream(&batch)
}

/// An Arrow IPC stream whose string column is dictionary-encoded, as apache-arrow JS
/// writes every string column.
pub fn arrow_ipc_dictionary_table(names: &[&str]) -> Vec<u8> {
    use arrow_array::types::Int32Type;
    use arrow_array::{ArrayRef, DictionaryArray, RecordBatch};
    use std::sync::Arc;
    let dictionary: DictionaryArray<Int32Type> = names.iter().copied().collect();
    let batch =
        RecordBatch::try_from_iter(vec![("name", Arc::new(dictionary) as ArrayRef)]).unwrap();
    ipc_stream(&batch)
}

/// One record batch as an Arrow IPC stream.
fn ipc_stream(batch: &arrow_array::RecordBatch) -> Vec<u8> {
    let mut buffer = Vec::new();
    let mut writer =
        arrow_ipc::writer::StreamWriter::try_new(&mut buffer, &batch.schema()).unwrap();
    writer.write(batch).unwrap();
    writer.finish().unwrap();
    drop(writer);
    buffer
}

/// A framed binary `uploadArrow` message.
pub fn upload_frame(query_id: &str, table: &str, ipc: &[u8]) -> Vec<u8> {
    let header =
        serde_json::json!({"type":"uploadArrow","queryId":query_id,"tableName":table}).to_string();
    let mut frame = (header.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(header.as_bytes());
    frame.extend_from_slice(ipc);
    frame
}

/// Waits until `check` holds, polling every 20 ms (what it waits for happens in another
/// process, with nothing to be told by); panics naming `what` after [`REPLY_TIMEOUT`].
pub fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Loro update setting `key` = `value` in map "m" (from a fresh peer).
pub fn loro_update(key: &str, value: i64) -> Vec<u8> {
    let doc = loro::LoroDoc::new();
    doc.get_map("m").insert(key, value).unwrap();
    doc.commit();
    doc.export(loro::ExportMode::all_updates()).unwrap()
}

/// The map "m" of a base64 snapshot, as JSON.
pub fn snapshot_map(base64_snapshot: &str) -> Value {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64_snapshot)
        .expect("base64 snapshot");
    let doc = loro::LoroDoc::new();
    doc.import(&bytes).expect("valid snapshot");
    let value = doc.get_map("m").get_deep_value();
    serde_json::to_value(value).expect("loro value as JSON")
}

/// Joins `room` and returns the room's state (map "m") from the snapshot reply.
pub fn join_room(client: &mut Client, room: &str) -> Value {
    assert_eq!(
        client.request(serde_json::json!({"type":"crdt-join","roomId":room,"clientId":"c"})),
        serde_json::json!({"type":"crdt-joined","roomId":room})
    );
    let snapshot = client.recv_json();
    assert_eq!(snapshot["type"], "crdt-snapshot");
    assert_eq!(snapshot["roomId"], room);
    snapshot_map(snapshot["data"].as_str().expect("snapshot data"))
}

/// The `fuzz/` directory of the workspace (traffic, seeds, corpora, regressions).
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every file in `dir` as (name, bytes); nothing when the directory does not exist.
pub fn files_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|entry| {
            let entry = entry.expect("a readable directory entry");
            let bytes = std::fs::read(entry.path()).expect("a readable file");
            (entry.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

/// One kept-alive HTTP/1.1 connection: requests written as given, answers read one at a
/// time by their `Content-Length`.
pub struct HttpConnection {
    stream: TcpStream,
    buffered: Vec<u8>,
}

/// One HTTP answer: status, lower-cased headers, body.
pub type HttpAnswer = (u16, Vec<(String, String)>, Vec<u8>);

impl HttpConnection {
    pub fn open(addr: &str) -> HttpConnection {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        HttpConnection {
            stream,
            buffered: Vec::new(),
        }
    }

    /// A `POST /` with this JSON body (kept alive unless `extra_headers` says otherwise).
    pub fn post_request(body: &Value, extra_headers: &str) -> String {
        let body = body.to_string();
        format!(
            "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}\r\n{body}",
            body.len()
        )
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write request");
    }

    /// Reads the next answer; `None` when the server closed the connection instead.
    pub fn read_answer(&mut self) -> Option<HttpAnswer> {
        let split = loop {
            if let Some(at) = head_end(&self.buffered) {
                break at;
            }
            if !self.fill() {
                assert!(self.buffered.is_empty(), "connection closed mid-head");
                return None;
            }
        };
        let (status, headers) = parse_head(&self.buffered[..split]);
        let length: usize = header(&headers, "content-length")
            .expect("content-length")
            .parse()
            .expect("a length");
        self.buffered.drain(..split + 4);
        while self.buffered.len() < length {
            assert!(self.fill(), "connection closed mid-body");
        }
        let body = self.buffered.drain(..length).collect();
        Some((status, headers, body))
    }

    /// `true` once the server has closed the connection (reads until EOF or timeout).
    pub fn closed_by_server(&mut self) -> bool {
        while self.fill() {}
        true
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buffered.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) => panic!("reading an HTTP answer: {e}"),
        }
    }
}

/// Runs the binary with `args`, expecting it to refuse to start; returns its stderr.
pub fn refused_start(args: &[&str]) -> String {
    let output = Command::new(binary())
        .args(["--port", "0", "--log-level", "error"])
        .args(args)
        .output()
        .expect("run duckwire");
    assert!(!output.status.success(), "started with {args:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Creates the database file `db` with `sql` run through a server that then stops cleanly
/// (for tests of servers that open the file afterwards).
pub fn database_with(db: &str, sql: &str) {
    let writer = ServerProcess::start(&["--db-path", db]);
    writer
        .connect()
        .request(serde_json::json!({"type":"exec","sql":sql,"queryId":1}));
    assert!(writer.terminate().success());
}

/// A free TCP port on the loopback interface (for servers that cannot take port 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A real `redis-server` (Debian's) on a Unix socket in a temporary directory, for the
/// cluster tests; killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    pub socket: PathBuf,
    dir: PathBuf,
    /// More `redis-server` arguments (TLS).
    extra: Vec<String>,
}

impl RedisServer {
    /// `None`, with a message saying why, when `redis-server` is not installed (CI installs
    /// it; the tests then skip instead of failing on a machine without it).
    pub fn start(name: &str) -> Option<RedisServer> {
        Self::start_with(name, &[])
    }

    /// [`RedisServer::start`] with more `redis-server` arguments.
    pub fn start_with(name: &str, extra: &[String]) -> Option<RedisServer> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let dir = temp_dir(name);
        let socket = dir.join("redis.sock");
        let mut server = RedisServer {
            child: None,
            socket,
            dir,
            extra: extra.to_vec(),
        };
        server.restart();
        Some(server)
    }

    /// `redis+unix://` URL for `--redis-url`.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// Starts the server (again, after [`RedisServer::stop`]) on the same socket, and waits
    /// until it answers `PING`.
    pub fn restart(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&self.socket)
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        until("redis-server to start", || {
            self.command(&["PING"]).as_deref() == Some("+PONG")
        });
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends one command (RESP) and returns the answer: a status or integer line as sent
    /// (`+OK`, `:3`), a bulk string's content (`(nil)` for none), or for an array the `*N`
    /// line followed by its elements, one per line; `None` if Redis is not reachable.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = std::os::unix::net::UnixStream::connect(&self.socket).ok()?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut reader = BufReader::new(stream);
        let mut first = String::new();
        reader.read_line(&mut first).ok()?;
        let first = first.trim_end().to_string();
        if let Some(length) = first.strip_prefix('$') {
            if length == "-1" {
                return Some("(nil)".into());
            }
            let mut content = String::new();
            reader.read_line(&mut content).ok()?;
            return Some(content.trim_end().to_string());
        }
        let Some(count) = first.strip_prefix('*') else {
            return Some(first);
        };
        let mut lines = vec![first.clone()];
        let count: usize = count.parse().ok()?;
        for _ in 0..count {
            let mut line = String::new();
            reader.read_line(&mut line).ok()?;
            if line.starts_with('$') {
                line.clear();
                reader.read_line(&mut line).ok()?;
            }
            lines.push(line.trim_end().to_string());
        }
        Some(lines.join("\n"))
    }

    /// How many connections are subscribed to `channel` (`PUBSUB NUMSUB`).
    pub fn subscribers(&self, channel: &str) -> usize {
        self.command(&["PUBSUB", "NUMSUB", channel])
            .and_then(|answer| {
                answer
                    .lines()
                    .nth(2)
                    .and_then(|n| n.trim_start_matches(':').parse().ok())
            })
            .unwrap_or(0)
    }

    /// Waits until `PUBSUB NUMSUB channel` is `count` (subscriptions follow clients
    /// asynchronously); panics after [`REPLY_TIMEOUT`].
    pub fn wait_for_subscribers(&self, channel: &str, count: usize) {
        let deadline = std::time::Instant::now() + REPLY_TIMEOUT;
        loop {
            let now = self.subscribers(channel);
            if now == count {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{channel}: {now} Redis subscribers, expected {count}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
