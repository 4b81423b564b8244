//! Request-framing guard. hyper resolves a request carrying both `Content-Length` and
//! `Transfer-Encoding` the way RFC 9112 §6.3 allows (Transfer-Encoding wins, the length
//! is dropped, the connection closed afterwards), which leaves the pipeline unable to
//! see that the request was ambiguous. Outpost refuses such requests outright: this
//! wrapper watches the HTTP/1 request heads as hyper reads them off the socket —
//! skipping bodies by their framing — and records, per request, whether its head was
//! ambiguous. The service consults that record before routing.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Longest head the scanner buffers; longer heads are refused by hyper anyway.
const MAX_SCAN: usize = 96 * 1024;

/// Per-connection verdicts, one per request head, in order.
#[derive(Debug, Default, Clone)]
pub struct Verdicts(Arc<Mutex<VecDeque<bool>>>);

impl Verdicts {
    fn push(&self, ambiguous: bool) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(ambiguous);
    }

    /// Whether the next request on this connection had an ambiguous head. HTTP/1
    /// requests are dispatched in the order their heads are read, so the front of the
    /// queue belongs to the request being dispatched.
    pub fn next_is_ambiguous(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
            .unwrap_or(false)
    }
}

#[derive(Debug)]
enum State {
    /// Collecting a request head.
    Head(Vec<u8>),
    /// Skipping a fixed-length body.
    Body(u64),
    /// Chunked body: reading a chunk-size line, byte by byte (nothing buffered, so no
    /// length limit of its own): the size's hex digits so far, whether there was one,
    /// and whether the digits have ended (an extension or the line end follows).
    ChunkSize {
        size: u64,
        digits: bool,
        ended: bool,
    },
    /// Chunked body: skipping chunk data (+ its CRLF).
    ChunkData(u64),
    /// Chunked body: reading trailer lines until an empty one; `blank` while the current
    /// line has held nothing but `\r`.
    Trailers { blank: bool },
    /// No more scanning (HTTP/2, unparsable input, or the connection will close).
    Off,
}

impl State {
    fn chunk_size() -> Self {
        State::ChunkSize {
            size: 0,
            digits: false,
            ended: false,
        }
    }
}

/// The byte-level scanner (pure; unit-tested).
#[derive(Debug)]
pub struct Scanner {
    state: State,
    verdicts: Verdicts,
    /// No head has been read yet.
    first: bool,
}

impl Scanner {
    /// A scanner recording into `verdicts`.
    pub fn new(verdicts: Verdicts) -> Self {
        Self {
            state: State::Head(Vec::new()),
            verdicts,
            first: true,
        }
    }

    /// Feed bytes read from the client.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Head(buf) => {
                    if buf.is_empty() {
                        // Robustness: empty lines before a request line are allowed.
                        let skip = data
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            return;
                        }
                        // The usual case: the whole head arrived in this read. It is
                        // judged where it lies, without copying it.
                        if let Some(end) = find_head_end(data) {
                            if end + 4 > MAX_SCAN {
                                self.state = State::Off;
                                return;
                            }
                            let (head, rest) = data.split_at(end + 4);
                            data = rest;
                            self.state = self.after_head(&head[..end]);
                            continue;
                        }
                    }
                    let before = buf.len();
                    buf.extend_from_slice(data);
                    // Only the new bytes (and the three before them) can complete the
                    // terminator: a head sent a byte at a time costs linear time.
                    let from = before.saturating_sub(3);
                    match find_head_end(&buf[from..]).map(|i| i + from) {
                        // The same limit whether or not the head came in one read.
                        Some(end) if end + 4 > MAX_SCAN => self.state = State::Off,
                        Some(end) => {
                            let used = end + 4 - before;
                            let head = std::mem::take(buf);
                            data = &data[used..];
                            self.state = self.after_head(&head[..end]);
                        }
                        None => {
                            if buf.len() > MAX_SCAN {
                                self.state = State::Off;
                            }
                            return;
                        }
                    }
                }
                State::Body(left) => {
                    data = skip(left, data);
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize {
                    size,
                    digits,
                    ended,
                } => {
                    let Some((&b, rest)) = data.split_first() else {
                        return;
                    };
                    data = rest;
                    // Lenient where hyper is strict (it refuses, and closes, anything
                    // odder), strict only where hyper refuses too: no digit, overflow.
                    match b {
                        b'\n' if !*digits => self.state = State::Off,
                        b'\n' if *size == 0 => self.state = State::Trailers { blank: true },
                        b'\n' => self.state = State::ChunkData(size.saturating_add(2)),
                        b' ' | b'\t' if !*digits => {}
                        _ if *ended => {}
                        _ => match char::from(b).to_digit(16) {
                            Some(d) => match size.checked_mul(16) {
                                Some(v) => {
                                    *size = v + u64::from(d);
                                    *digits = true;
                                }
                                None => self.state = State::Off,
                            },
                            None if *digits => *ended = true,
                            None => self.state = State::Off,
                        },
                    }
                }
                State::ChunkData(left) => {
                    data = skip(left, data);
                    if *left == 0 {
                        self.state = State::chunk_size();
                    }
                }
                State::Trailers { blank } => {
                    let Some((&b, rest)) = data.split_first() else {
                        return;
                    };
                    data = rest;
                    match b {
                        b'\n' if *blank => self.state = State::Head(Vec::new()),
                        b'\n' => *blank = true,
                        b'\r' => {}
                        _ => *blank = false,
                    }
                }
            }
        }
    }

    fn after_head(&mut self, head: &[u8]) -> State {
        // HTTP/2 prior knowledge: the preface starts with this "head"; framing is binary
        // from there on. Judged on the whole head, not on the first read starting with
        // `PRI `: that let an HTTP/1 request whose method is `PRI` switch the guard off
        // for the connection, and missed a preface split across reads (found by fuzzing,
        // fuzz/README.md).
        if std::mem::take(&mut self.first) && head == b"PRI * HTTP/2.0" {
            return State::Off;
        }
        // A head is almost always valid UTF-8 (ASCII): checking that is cheaper than
        // decoding it lossily, which gives the same text when it is.
        let text = match std::str::from_utf8(head) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(head),
        };
        let mut lengths = Vec::new();
        let mut te: Option<String> = None;
        for line in crlf_lines(&text).skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let name = name.trim();
            if name.eq_ignore_ascii_case("content-length") {
                lengths.push(value.trim().to_string());
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                let v = value.trim().to_ascii_lowercase();
                te = Some(match te {
                    Some(prev) => format!("{prev}, {v}"),
                    None => v,
                });
            }
        }
        let ambiguous = !lengths.is_empty() && te.is_some();
        self.verdicts.push(ambiguous);
        if ambiguous {
            // hyper closes the connection after this request: nothing more to frame.
            return State::Off;
        }
        if let Some(te) = te {
            return if te
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim() == "chunked")
            {
                State::chunk_size()
            } else {
                State::Off // hyper refuses this request itself
            };
        }
        match lengths.first().map(|l| l.parse::<u64>()) {
            None => State::Head(Vec::new()),
            Some(Ok(0)) => State::Head(Vec::new()),
            Some(Ok(n)) => State::Body(n),
            Some(Err(_)) => State::Off, // hyper refuses an invalid length itself
        }
    }
}

/// Consume up to `*left` bytes of `data`, returning the rest.
fn skip<'a>(left: &mut u64, data: &'a [u8]) -> &'a [u8] {
    let n = (*left).min(data.len() as u64);
    *left -= n;
    &data[usize::try_from(n).unwrap_or(data.len())..]
}

/// Where the blank line that ends a head starts. The searcher is built once: building
/// it cost more than searching a whole head.
fn find_head_end(hay: &[u8]) -> Option<usize> {
    static END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    END.find(hay)
}

/// The lines of `text` between CRLFs, exactly as `text.split("\r\n")` gives them.
fn crlf_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let t = rest?;
        let b = t.as_bytes();
        let mut from = 0;
        while let Some(i) = memchr::memchr(b'\n', &b[from..]) {
            let at = from + i;
            // Both ends are ASCII bytes, so both slices start on character boundaries.
            if at > 0 && b[at - 1] == b'\r' {
                rest = t.get(at + 1..);
                return t.get(..at - 1);
            }
            from = at + 1;
        }
        rest = None;
        Some(t)
    })
}

/// A client connection with its request heads watched.
#[derive(Debug)]
pub struct Watched {
    inner: TcpStream,
    scanner: Scanner,
}

impl Watched {
    /// Wrap `inner`; verdicts go to `verdicts`.
    pub fn new(inner: TcpStream, verdicts: Verdicts) -> Self {
        Self {
            inner,
            scanner: Scanner::new(verdicts),
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            this.scanner.feed(&buf.filled()[before..]);
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_lines_are_the_lines_split_gives() {
        for text in [
            "",
            "\r\n",
            "GET / HTTP/1.1",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5",
            "a\nb\r\nc\rd\r\r\ne\n\r\nf\r\n",
            "\r\r\n\n\r\n\r\n",
            "h\u{e9}: \u{fffd}\r\nx:\u{a0}y\r\n\r",
        ] {
            let ours: Vec<&str> = crlf_lines(text).collect();
            let split: Vec<&str> = text.split("\r\n").collect();
            assert_eq!(ours, split, "{text:?}");
        }
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"),
            Some(20)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r"), None);
    }

    fn scan(chunks: &[&[u8]]) -> Vec<bool> {
        let v = Verdicts::default();
        let mut s = Scanner::new(v.clone());
        for c in chunks {
            s.feed(c);
        }
        let mut out = Vec::new();
        while let Some(x) = v.0.lock().unwrap().pop_front() {
            out.push(x);
        }
        out
    }

    #[test]
    fn flags_cl_with_te() {
        let r = scan(&[b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /s HTTP/1.1\r\n\r\n"]);
        assert_eq!(r, [true]);
        let r =
            scan(&[b"POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n"]);
        assert_eq!(r, [true]);
    }

    #[test]
    fn follows_keep_alive_framing_across_reads() {
        let all: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\r\n\r\nPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\nGET /c HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan(&[all]), [false, false, true]);
        // Same bytes, one at a time.
        let bytes: Vec<&[u8]> = all.chunks(1).collect();
        assert_eq!(scan(&bytes), [false, false, true]);
        // A body that looks like a head is not mistaken for one.
        let r = scan(&[b"POST /a HTTP/1.1\r\nContent-Length: 46\r\n\r\nX HTTP/1.1\r\nContent-Length: 1\r\nTE: chunked\r\n\r\nGET /b HTTP/1.1\r\n\r\n"]);
        assert_eq!(r, [false, false]);
    }

    #[test]
    fn http2_is_left_alone() {
        assert_eq!(
            scan(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]),
            Vec::<bool>::new()
        );
        // Also when the preface arrives in pieces (frames are not heads).
        let h2: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04\0\0\0\0\0\r\n\r\n";
        assert_eq!(scan(&h2.chunks(1).collect::<Vec<_>>()), Vec::<bool>::new());
    }

    #[test]
    fn long_chunk_lines_do_not_depend_on_read_sizes() {
        // A chunk-size line of any length (leading zeros, a long extension) and a long
        // trailer are followed the same way in one read and a byte at a time, and the
        // next head is still checked (found by fuzzing, fuzz/README.md).
        let mut all = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        all.extend(std::iter::repeat_n(b'0', 3000));
        all.extend(b"3;");
        all.extend(std::iter::repeat_n(b'x', 3000));
        all.extend(b"\r\nabc\r\n0\r\nT: ");
        all.extend(std::iter::repeat_n(b'y', 200_000));
        all.extend(
            b"\r\n\r\nGET /b HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(scan(&[&all]), [false, true]);
        assert_eq!(scan(&all.chunks(1).collect::<Vec<_>>()), [false, true]);
        assert_eq!(scan(&all.chunks(777).collect::<Vec<_>>()), [false, true]);
    }

    #[test]
    fn chunk_sizes_hyper_refuses_end_scanning() {
        // No digit, or a size beyond u64: hyper refuses the body and closes.
        for line in [&b"x\r\n"[..], b"\r\n", b"1ffffffffffffffff\r\n"] {
            let mut all = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            all.extend(line);
            all.extend(
                b"GET /b HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            );
            assert_eq!(
                scan(&[&all]),
                [false],
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn a_head_over_the_scan_limit_ends_scanning_in_any_read_size() {
        let mut all = b"GET /a HTTP/1.1\r\nX: ".to_vec();
        all.extend(std::iter::repeat_n(b'a', MAX_SCAN));
        all.extend(b"\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(scan(&[&all]), Vec::<bool>::new());
        assert_eq!(
            scan(&all.chunks(1000).collect::<Vec<_>>()),
            Vec::<bool>::new()
        );
    }

    #[test]
    fn a_pri_method_is_still_http1() {
        // Only the HTTP/2 preface turns scanning off, not any stream starting `PRI `.
        let r =
            scan(&[b"PRI / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"]);
        assert_eq!(r, [true]);
    }
}
