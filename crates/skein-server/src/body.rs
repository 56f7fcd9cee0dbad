//! Reading an OTLP request body, for both transports: the compressions the OpenTelemetry
//! Collector's exporters can send, bounded by size and by ratio, and the in-flight memory
//! budget that every request's bytes count against.
//!
//! A request is read into memory before it is decoded (OTLP requests are single messages),
//! so what bounds memory is how many request bytes are held at once. Every request reserves its
//! compressed bytes as they arrive and its decompressed bytes as they are produced, from one
//! budget (`--max-inflight-request-bytes`); the reservation is released when the request has
//! been answered. When the budget is spent, a request waits up to [`BUDGET_WAIT`] for others to
//! finish and is then refused as overloaded (retryable, with a delay), so many large requests
//! at once are throttled rather than exhausting memory.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a request waits for budget before it is refused as overloaded.
pub(crate) const BUDGET_WAIT: Duration = Duration::from_secs(2);
/// The retry delay suggested to a client refused for lack of budget.
pub(crate) const OVERLOAD_RETRY_SECS: u32 = 1;
/// Output up to this size is allowed whatever the ratio, so small requests never trip it.
pub(crate) const RATIO_FLOOR_BYTES: usize = 1 << 20;
/// The budget is counted in units of this many bytes.
const UNIT: usize = 1024;
/// Decompressed output is produced, and reserved, this many bytes at a time.
const CHUNK: usize = 256 * 1024;

/// A body coding Skein can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coding {
    Identity,
    Gzip,
    /// zlib-wrapped deflate (RFC 9110's `deflate`); raw deflate is accepted too.
    Deflate,
    Zstd,
    /// The snappy block format, or the framing format when the body starts with its header
    /// (as the OpenTelemetry Collector's HTTP server reads `snappy`).
    Snappy,
    SnappyFramed,
    Lz4,
}

impl Coding {
    /// The `Content-Encoding` names the OpenTelemetry Collector's HTTP exporters send.
    pub(crate) const HTTP_NAMES: &'static str = "gzip, zstd, snappy, x-snappy-framed, deflate, zlib, lz4";
    /// The `grpc-encoding` names Skein accepts (`grpc-accept-encoding` of its answers).
    pub(crate) const GRPC_NAMES: &'static str = "gzip,zstd,snappy,identity";

    pub(crate) fn from_http(name: &str) -> Option<Coding> {
        Some(match name {
            "" | "identity" => Coding::Identity,
            "gzip" | "x-gzip" => Coding::Gzip,
            "deflate" | "zlib" => Coding::Deflate,
            "zstd" => Coding::Zstd,
            "snappy" => Coding::Snappy,
            "x-snappy-framed" => Coding::SnappyFramed,
            "lz4" => Coding::Lz4,
            _ => return None,
        })
    }

    /// gRPC's message encodings. The Collector's gRPC `snappy` uses the framing format.
    pub(crate) fn from_grpc(name: &str) -> Option<Coding> {
        Some(match name {
            "" | "identity" => Coding::Identity,
            "gzip" => Coding::Gzip,
            "zstd" => Coding::Zstd,
            "snappy" => Coding::SnappyFramed,
            "deflate" => Coding::Deflate,
            _ => return None,
        })
    }

    /// `body`, compressed in this coding, as a store may log it as it came (gzip and zstd;
    /// `None` for the others, whose requests the store compresses itself).
    pub(crate) fn kept(self, body: &[u8]) -> Option<skein_store::Compressed<'_>> {
        match self {
            Coding::Gzip => Some(skein_store::Compressed::Gzip(body)),
            Coding::Zstd => Some(skein_store::Compressed::Zstd(body)),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Zstd => "zstd",
            Coding::Snappy => "snappy",
            Coding::SnappyFramed => "snappy (framed)",
            Coding::Lz4 => "lz4",
        }
    }
}

/// Why a body could not be read. [`BodyError::retryable`] says which refusals a client should
/// retry: only overload; a body that is too large, expands too much or is corrupt is refused
/// the same way every time.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error(
        "request body{after} is over the limit of {limit} bytes; send smaller batches or raise --max-request-bytes"
    )]
    TooLarge { limit: usize, after: String },
    #[error(
        "request body of {compressed} bytes expands to more than {ratio} times its size on {coding} decompression: refused as a likely decompression bomb (raise --max-decompression-ratio if your batches really compress that well)"
    )]
    Ratio { compressed: usize, ratio: usize, coding: &'static str },
    #[error("malformed {coding} body: {detail}")]
    Malformed { coding: &'static str, detail: String },
    #[error("reading the request body failed: {0}")]
    Read(String),
    #[error(
        "too many request bytes in flight (--max-inflight-request-bytes is {budget}): retry after {retry_after} s"
    )]
    Overloaded { budget: usize, retry_after: u32 },
}

impl BodyError {
    /// The reason label of `skein_requests_refused_total`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } => "too_large",
            BodyError::Ratio { .. } => "decompression_ratio",
            BodyError::Malformed { .. } | BodyError::Read(_) => "malformed",
            BodyError::Overloaded { .. } => "throttled",
        }
    }
}

/// The in-flight request bytes budget, shared by both receivers.
#[derive(Clone, Debug)]
pub(crate) struct Budget {
    semaphore: Arc<Semaphore>,
    bytes: usize,
}

impl Budget {
    pub(crate) fn new(bytes: usize) -> Self {
        let units = bytes.div_ceil(UNIT).max(1);
        Budget { semaphore: Arc::new(Semaphore::new(units)), bytes }
    }

    /// An empty reservation, to grow as a request's bytes arrive.
    pub(crate) fn reservation(&self) -> Reservation {
        Reservation { budget: self.clone(), bytes: 0, permit: None }
    }

    /// Bytes reserved now.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        (self.bytes.div_ceil(UNIT).max(1) - self.semaphore.available_permits()) * UNIT
    }
}

/// Budget held by one request; released when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Budget,
    /// Bytes asked for so far; the units held are exactly these bytes rounded up once, however
    /// the body was split into frames.
    bytes: usize,
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// Reserves `bytes` more, waiting up to [`BUDGET_WAIT`].
    pub(crate) async fn grow(&mut self, bytes: usize) -> Result<(), BodyError> {
        let held = self.bytes.div_ceil(UNIT);
        let wanted = self.bytes.saturating_add(bytes);
        let units = u32::try_from(wanted.div_ceil(UNIT) - held).unwrap_or(u32::MAX);
        if units > 0 {
            let acquire = self.budget.semaphore.clone().acquire_many_owned(units);
            let permit = match tokio::time::timeout(BUDGET_WAIT, acquire).await {
                Ok(Ok(permit)) => permit,
                _ => {
                    return Err(BodyError::Overloaded {
                        budget: self.budget.bytes,
                        retry_after: OVERLOAD_RETRY_SECS,
                    });
                }
            };
            match &mut self.permit {
                Some(held) => held.merge(permit),
                None => self.permit = Some(permit),
            }
        }
        self.bytes = wanted;
        Ok(())
    }
}

/// The bounds a body is read under.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyLimits {
    /// Largest body, compressed and decompressed (`--max-request-bytes`).
    pub max_bytes: usize,
    /// Largest decompressed/compressed size ratio above [`RATIO_FLOOR_BYTES`].
    pub max_ratio: usize,
}

/// The most a body's buffer is sized to by an announced length before its bytes arrive; a
/// larger body grows the buffer as it arrives.
const PREALLOCATE: usize = 1 << 20;

/// Reads a whole HTTP body of at most `limits.max_bytes`, reserving its bytes as they arrive;
/// a body in one frame is returned as it is.
pub(crate) async fn collect<B>(
    body: B,
    framing: Framing,
    limits: BodyLimits,
    reservation: &mut Reservation,
) -> Result<Bytes, BodyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    // Room for the whole body at once when its length is announced (`Content-Length`, or a
    // gRPC message's prefix below), instead of growing the buffer by copies; at most
    // `PREALLOCATE` before the bytes arrive (a length is only what the client claims).
    let announced =
        |len: u64| usize::try_from(len).unwrap_or(usize::MAX).min(limits.max_bytes).min(PREALLOCATE);
    let mut out = bytes::BytesMut::with_capacity(announced(body.size_hint().lower()));
    let mut sized = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limits.max_bytes {
                return Err(BodyError::TooLarge { limit: limits.max_bytes, after: String::new() });
            }
            reservation.grow(data.len()).await?;
            if out.is_empty() && body.is_end_stream() {
                return Ok(data); // the whole body in one frame: no copy
            }
            out.extend_from_slice(&data);
            if framing == Framing::Grpc && !sized && out.len() >= 5 {
                sized = true;
                let message = u32::from_be_bytes([out[1], out[2], out[3], out[4]]);
                out.reserve(announced(u64::from(message) + 5).saturating_sub(out.len()));
            }
        }
    }
    Ok(out.freeze())
}

/// How a body announces its length besides `Content-Length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Only by `Content-Length` (OTLP/HTTP).
    Plain,
    /// A gRPC message: a flag byte and the message's length first.
    Grpc,
}

/// Decompresses `raw` under `limits`, reserving the output as it is produced.
pub(crate) async fn decompress(
    coding: Coding,
    raw: Bytes,
    limits: BodyLimits,
    reservation: &mut Reservation,
) -> Result<Bytes, BodyError> {
    let malformed = |detail: String| BodyError::Malformed { coding: coding.name(), detail };
    let ratio_cap = raw.len().saturating_mul(limits.max_ratio).max(RATIO_FLOOR_BYTES);
    let cap = ratio_cap.min(limits.max_bytes);
    let over = |len: usize| -> BodyError {
        if len > limits.max_bytes {
            BodyError::TooLarge {
                limit: limits.max_bytes,
                after: format!(" after {} decompression", coding.name()),
            }
        } else {
            BodyError::Ratio { compressed: raw.len(), ratio: limits.max_ratio, coding: coding.name() }
        }
    };
    let mut reader: Box<dyn Read + Send + '_> = match coding {
        Coding::Identity => return Ok(raw),
        Coding::Snappy if !raw.starts_with(SNAPPY_STREAM_HEADER) => {
            // The block format states its length first: check it before allocating.
            let len = snap::raw::decompress_len(&raw).map_err(|e| malformed(e.to_string()))?;
            if len > cap {
                return Err(over(len));
            }
            reservation.grow(len).await?;
            let out = snap::raw::Decoder::new().decompress_vec(&raw).map_err(|e| malformed(e.to_string()))?;
            return Ok(out.into());
        }
        Coding::Snappy | Coding::SnappyFramed => Box::new(snap::read::FrameDecoder::new(&raw[..])),
        Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&raw[..])),
        // zlib-wrapped deflate starts with a CMF byte of method 8 and a header checksum.
        Coding::Deflate
            if raw.len() >= 2
                && raw[0] & 0x0f == 8
                && u16::from_be_bytes([raw[0], raw[1]]).is_multiple_of(31) =>
        {
            Box::new(flate2::read::ZlibDecoder::new(&raw[..]))
        }
        Coding::Deflate => Box::new(flate2::read::DeflateDecoder::new(&raw[..])),
        Coding::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(&raw[..]).map_err(|e| malformed(e.to_string()))?)
        }
        Coding::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(&raw[..])),
    };
    let mut out: Vec<u8> = Vec::new();
    loop {
        // Read one chunk past the cap at most, so an overlong body is seen without
        // producing all of it.
        let want = CHUNK.min(cap + 1 - out.len());
        reservation.grow(want).await?;
        let start = out.len();
        out.resize(start + want, 0);
        let mut filled = 0;
        while filled < want {
            match reader.read(&mut out[start + filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(malformed(e.to_string())),
            }
        }
        out.truncate(start + filled);
        if out.len() > cap {
            return Err(over(out.len()));
        }
        if filled < want {
            return Ok(out.into());
        }
    }
}

/// The stream identifier chunk that starts every snappy framed stream.
const SNAPPY_STREAM_HEADER: &[u8] = b"\xff\x06\x00\x00sNaPpY";

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const LIMITS: BodyLimits = BodyLimits { max_bytes: 8 << 20, max_ratio: 100 };

    fn payload(n: usize) -> Vec<u8> {
        // Varied enough to compress like real spans (a few times), not like zeros.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b"abcdefghij0123456789 /:._-"[(x % 16 + (x >> 40) % 10) as usize]
            })
            .collect()
    }

    fn compress(coding: Coding, data: &[u8]) -> Vec<u8> {
        match coding {
            Coding::Identity => data.to_vec(),
            Coding::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Coding::Deflate => {
                let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Coding::Zstd => zstd::stream::encode_all(data, 3).unwrap(),
            Coding::Snappy => snap::raw::Encoder::new().compress_vec(data).unwrap(),
            Coding::SnappyFramed => {
                let mut e = snap::write::FrameEncoder::new(Vec::new());
                e.write_all(data).unwrap();
                e.into_inner().unwrap()
            }
            Coding::Lz4 => {
                let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
        }
    }

    const ALL: [Coding; 7] = [
        Coding::Identity,
        Coding::Gzip,
        Coding::Deflate,
        Coding::Zstd,
        Coding::Snappy,
        Coding::SnappyFramed,
        Coding::Lz4,
    ];

    async fn run(coding: Coding, raw: Vec<u8>, limits: BodyLimits) -> Result<Bytes, BodyError> {
        let budget = Budget::new(256 << 20);
        let mut reservation = budget.reservation();
        let out = decompress(coding, raw.into(), limits, &mut reservation).await;
        if let (Ok(out), false) = (&out, coding == Coding::Identity) {
            assert!(budget.in_use() >= out.len(), "the output is reserved");
        }
        drop(reservation);
        assert_eq!(budget.in_use(), 0, "released with the request");
        out
    }

    #[tokio::test]
    async fn every_coding_round_trips() {
        let data = payload(3 << 20);
        for coding in ALL {
            let out = run(coding, compress(coding, &data), LIMITS).await.unwrap();
            assert_eq!(out.len(), data.len(), "{coding:?}");
            assert!(out[..] == data[..], "{coding:?}");
        }
        // `snappy` also reads the framing format, as the Collector's HTTP server does.
        let framed = compress(Coding::SnappyFramed, &data);
        assert_eq!(run(Coding::Snappy, framed, LIMITS).await.unwrap().len(), data.len());
        // `deflate` also reads raw deflate.
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&data).unwrap();
        assert_eq!(run(Coding::Deflate, e.finish().unwrap(), LIMITS).await.unwrap().len(), data.len());
    }

    #[tokio::test]
    async fn bombs_are_refused_by_ratio_and_by_size() {
        // 64 MiB of zeros: gzip, deflate and zstd compress them by about a thousand times, lz4
        // by about 250; snappy's format cannot go past about 21, so only the size bound
        // applies to it.
        let zeros = vec![0u8; 64 << 20];
        for coding in ALL.into_iter().filter(|c| *c != Coding::Identity) {
            let raw = compress(coding, &zeros);
            let ratio = zeros.len() / raw.len();
            let result = run(coding, raw, BodyLimits { max_bytes: 128 << 20, max_ratio: 100 }).await;
            match result.map(|out| out.len()) {
                Err(BodyError::Ratio { ratio: 100, .. }) => assert!(ratio > 100, "{coding:?}"),
                Ok(len) => assert!(ratio <= 100 && len == zeros.len(), "{coding:?}: ratio {ratio}"),
                Err(err) => panic!("{coding:?}: {err}"),
            }
            let raw = compress(coding, &zeros);
            let err = run(coding, raw, BodyLimits { max_bytes: 4 << 20, max_ratio: 100_000 })
                .await
                .map(|out| out.len())
                .unwrap_err();
            assert!(matches!(err, BodyError::TooLarge { limit: 4194304, .. }), "{coding:?}: {err}");
            assert!(err.to_string().contains(" after "), "{err}");
            assert!(err.to_string().contains("--max-request-bytes"), "{err}");
        }
        // Small bodies may expand past the ratio up to the floor.
        let small = vec![0u8; RATIO_FLOOR_BYTES];
        assert_eq!(
            run(Coding::Gzip, compress(Coding::Gzip, &small), LIMITS).await.unwrap().len(),
            small.len()
        );
    }

    #[tokio::test]
    async fn corrupt_bodies_are_malformed() {
        let data = payload(100_000);
        for coding in ALL.into_iter().filter(|c| *c != Coding::Identity) {
            let mut raw = compress(coding, &data);
            let cut = raw.len() / 2;
            raw.truncate(cut);
            raw.extend_from_slice(b"garbage!garbage!");
            let err = run(coding, raw, LIMITS).await.map(|out| out.len()).unwrap_err();
            assert!(matches!(err, BodyError::Malformed { .. }), "{coding:?}: {err}");
        }
    }

    #[tokio::test]
    async fn a_spent_budget_throttles_and_is_given_back() {
        let budget = Budget::new(4 << 20);
        let mut first = budget.reservation();
        first.grow(3 << 20).await.unwrap();
        let mut second = budget.reservation();
        let err = second.grow(2 << 20).await.unwrap_err();
        assert!(matches!(err, BodyError::Overloaded { retry_after: 1, .. }), "{err}");
        drop(first);
        second.grow(2 << 20).await.unwrap();
        assert_eq!(budget.in_use(), 2 << 20);
    }

    /// A body of the given frames.
    struct Frames(std::collections::VecDeque<Bytes>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|f| Ok(http_body::Frame::data(f))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn framed(frames: Vec<Bytes>) -> Frames {
        Frames(frames.into())
    }

    #[tokio::test]
    async fn bodies_are_read_whole_however_they_are_framed() {
        let budget = Budget::new(64 << 20);
        let data = Bytes::from(payload(3 << 20));
        // One frame: handed on as it is, not copied.
        let mut r = budget.reservation();
        let one =
            collect(http_body_util::Full::new(data.clone()), Framing::Plain, LIMITS, &mut r).await.unwrap();
        assert_eq!((one.as_ptr(), one.len()), (data.as_ptr(), data.len()));
        assert_eq!(budget.in_use(), data.len());
        drop(r);
        // A gRPC message split anywhere, even inside its prefix, and a plain body in pieces.
        let mut message = vec![0u8];
        message.extend_from_slice(&((data.len() as u32).to_be_bytes()));
        message.extend_from_slice(&data);
        let message = Bytes::from(message);
        for (framing, body) in [(Framing::Grpc, &message), (Framing::Plain, &data)] {
            for cuts in [vec![3, 4, 16_384], vec![5, 1 << 20], vec![1, 2, 3, 4, 5, 6]] {
                let mut frames = Vec::new();
                let mut at = 0;
                for cut in cuts.into_iter().chain([body.len()]) {
                    frames.push(body.slice(at..cut));
                    at = cut;
                }
                let mut r = budget.reservation();
                let read = collect(framed(frames), framing, LIMITS, &mut r).await.unwrap();
                assert_eq!(read, body, "{framing:?}");
            }
        }
        // A prefix that claims more than the limit allows is refused once the bytes exceed it.
        let mut lying = vec![0u8];
        lying.extend_from_slice(&u32::MAX.to_be_bytes());
        lying.extend_from_slice(&payload(1 << 20));
        let lying = Bytes::from(lying);
        let small = BodyLimits { max_bytes: 512 << 10, ..LIMITS };
        let mut r = budget.reservation();
        let frames = vec![lying.slice(..5), lying.slice(5..)];
        assert!(matches!(
            collect(framed(frames), Framing::Grpc, small, &mut r).await,
            Err(BodyError::TooLarge { .. })
        ));
    }
}
