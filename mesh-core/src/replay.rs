//! A request body that can be sent again: it streams through while keeping a copy
//! of what passed, up to a cap, so a retry or hedge can replay it.
//!
//! Every attempt of a call gets a copy of the one [`ReplayBody`], so the copies'
//! shared state also holds what else the attempts share: the [`AttemptLog`] of
//! the endpoints they went to. One allocation per call carries both.
//!
//! A body that grows past the cap (or announces a larger size) is still streamed
//! once, in full, but stops being replayable: [`ReplayBody::is_replayable`] turns
//! false, and a copy that would need bytes no longer kept fails rather than send a
//! body that differs from the original. A body is therefore never sent a second
//! time unless it was kept whole.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;

use crate::retry::AttemptLog;

/// A boxed error, as bodies and tower boundaries carry them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A copy of a request body that can be read again (see the module docs). Copies
/// share the original body, the kept bytes and the call's [`AttemptLog`]; each
/// copy reads from the start.
#[derive(Debug)]
pub struct ReplayBody<B> {
    shared: Arc<Call<B>>,
    /// Index of the next chunk this copy reads.
    next: usize,
    trailers_sent: bool,
}

/// What the copies of one call's body share.
#[derive(Debug)]
struct Call<B> {
    body: Mutex<Shared<B>>,
    log: AttemptLog,
}

#[derive(Debug)]
struct Shared<B> {
    /// The original body, until it ends.
    body: Option<B>,
    /// Chunks kept, in order, while the total stays within the cap.
    kept: Kept,
    kept_len: usize,
    cap: usize,
    /// Chunks read from the original so far (kept or not).
    read: usize,
    /// More than `cap` bytes passed: nothing is kept any more.
    overflowed: bool,
    /// The original body failed: no copy can be completed.
    failed: bool,
    /// Boxed: few request bodies end in trailers, and this state is made (and
    /// moved into its allocation) for every call; inline, a `HeaderMap` made
    /// that move a third longer.
    trailers: Option<Box<HeaderMap>>,
    hint: SizeHint,
}

/// A copy of the body needed bytes that were not kept (the body was larger than the
/// replay buffer), or the original body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotReplayable;

impl std::fmt::Display for NotReplayable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body cannot be sent again: it was larger than the replay buffer (MESH_SERVICE_<NAME>_REPLAY_BUFFER) or failed while being read")
    }
}

impl std::error::Error for NotReplayable {}

/// Chunks kept for replay. Most bodies are one chunk (a `Full` body, a small
/// streamed one): that one is kept inline, so keeping it allocates nothing.
#[derive(Debug, Default)]
struct Kept {
    first: Option<Bytes>,
    more: Vec<Bytes>,
}

impl Kept {
    fn get(&self, index: usize) -> Option<&Bytes> {
        match index {
            0 => self.first.as_ref(),
            n => self.more.get(n - 1),
        }
    }

    fn push(&mut self, chunk: Bytes) {
        match self.first {
            None => self.first = Some(chunk),
            Some(_) => self.more.push(chunk),
        }
    }
}

impl<B> ReplayBody<B>
where
    B: Body<Data = Bytes>,
{
    /// Wraps `body`, keeping up to `cap` bytes for replay. A body whose size hint
    /// already exceeds `cap` is never replayable and nothing of it is kept.
    pub fn new(body: B, cap: usize) -> Self {
        let hint = body.size_hint();
        let ended = body.is_end_stream();
        let too_big = hint.lower() > cap as u64;
        ReplayBody {
            shared: Arc::new(Call {
                body: Mutex::new(Shared {
                    body: (!ended).then_some(body),
                    kept: Kept::default(),
                    kept_len: 0,
                    cap,
                    read: 0,
                    overflowed: too_big,
                    failed: false,
                    trailers: None,
                    hint,
                }),
                log: AttemptLog::default(),
            }),
            next: 0,
            trailers_sent: false,
        }
    }

    /// The endpoints this call's attempts went to: whatever sends an attempt
    /// records its endpoint here, and the retry layer reads it to tell later
    /// attempts which endpoints to avoid (shared by every copy, so a hedge
    /// started while the first attempt is in flight sees its endpoint).
    pub fn attempt_log(&self) -> &AttemptLog {
        &self.shared.log
    }

    /// Whether a fresh copy would send the body byte for byte: nothing of it was
    /// read yet (an attempt that could not connect), or nothing passed the cap;
    /// and the original has not failed.
    pub fn is_replayable(&self) -> bool {
        let shared = self.shared.body.lock();
        !shared.failed && (shared.read == 0 || !shared.overflowed)
    }

    /// A copy reading from the start, or `None` when the body cannot be replayed.
    pub fn try_clone(&self) -> Option<Self> {
        self.is_replayable().then(|| ReplayBody {
            shared: self.shared.clone(),
            next: 0,
            trailers_sent: false,
        })
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut shared = this.shared.body.lock();
        // Replay what was kept.
        if let Some(chunk) = shared.kept.get(this.next) {
            if !shared.overflowed {
                let chunk = chunk.clone();
                this.next += 1;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
        }
        // Bytes another copy read and that were not kept: this copy cannot go on.
        if this.next < shared.read {
            return Poll::Ready(Some(Err(NotReplayable.into())));
        }
        if shared.failed {
            return Poll::Ready(Some(Err(NotReplayable.into())));
        }
        let Some(body) = shared.body.as_mut() else {
            if this.trailers_sent {
                return Poll::Ready(None);
            }
            this.trailers_sent = true;
            return Poll::Ready(
                shared
                    .trailers
                    .as_deref()
                    .cloned()
                    .map(|t| Ok(Frame::trailers(t))),
            );
        };
        match Pin::new(body).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.body = None;
                this.trailers_sent = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                shared.failed = true;
                shared.body = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        shared.read += 1;
                        this.next += 1;
                        if !shared.overflowed && shared.kept_len + data.len() <= shared.cap {
                            shared.kept_len += data.len();
                            shared.kept.push(data.clone());
                        } else if !shared.overflowed {
                            // Too large to keep: free what was kept, stream on.
                            shared.overflowed = true;
                            shared.kept = Kept::default();
                        }
                        Frame::data(data)
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => {
                            shared.trailers = Some(Box::new(trailers.clone()));
                            shared.body = None;
                            this.trailers_sent = true;
                            Frame::trailers(trailers)
                        }
                        // Other frame kinds do not exist in http-body 1; drop them.
                        Err(_) => return Poll::Ready(None),
                    },
                };
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.shared.body.lock();
        shared.body.is_none()
            && !shared.failed
            && self.next >= shared.read
            && (self.trailers_sent || shared.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.shared.body.lock().hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Stream = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>,
    >;

    fn chunked(chunks: &[&'static [u8]]) -> Stream {
        let frames: Vec<_> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn read<B: Body<Data = Bytes> + Unpin>(body: B) -> Result<Vec<u8>, B::Error> {
        Ok(body.collect().await?.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn body_within_the_cap_replays_byte_identical() {
        let body = ReplayBody::new(chunked(&[b"hello ", b"streaming ", b"world"]), 64);
        let copy = body.try_clone().unwrap();
        assert_eq!(read(body).await.unwrap(), b"hello streaming world");
        assert!(copy.is_replayable());
        assert_eq!(read(copy).await.unwrap(), b"hello streaming world");
    }

    #[tokio::test]
    async fn trailers_are_replayed_after_the_kept_bytes() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"payload"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let body: Stream = StreamBody::new(futures_util::stream::iter(frames));
        let body = ReplayBody::new(body, 64);
        let copy = body.try_clone().unwrap();
        for body in [body, copy] {
            let collected = body.collect().await.unwrap();
            assert_eq!(collected.trailers(), Some(&trailers));
            assert_eq!(collected.to_bytes(), "payload");
        }
    }

    #[tokio::test]
    async fn a_copy_made_mid_stream_replays_then_continues_the_original() {
        let mut first = ReplayBody::new(chunked(&[b"a", b"b", b"c"]), 64);
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "a");
        drop(first.try_clone()); // copies made and dropped change nothing
        let second = first.try_clone().unwrap();
        drop(first);
        assert_eq!(read(second).await.unwrap(), b"abc");
    }

    #[tokio::test]
    async fn body_over_the_cap_streams_once_and_is_not_replayable() {
        let body = ReplayBody::new(chunked(&[b"0123456789", b"0123456789"]), 15);
        let early_copy = body.try_clone().unwrap();
        assert_eq!(read(body).await.unwrap().len(), 20);
        assert!(!early_copy.is_replayable());
        assert!(early_copy.try_clone().is_none());
        // A copy taken before the overflow fails rather than send a different body.
        assert!(read(early_copy).await.is_err());
    }

    #[tokio::test]
    async fn body_over_the_cap_can_be_sent_by_a_later_copy_while_none_was_read() {
        // An attempt that never connected read nothing: the next one sends it all.
        let body = ReplayBody::new(http_body_util::Full::new(Bytes::from(vec![7u8; 100])), 64);
        let unsent = body.try_clone().unwrap();
        drop(unsent);
        let second = body.try_clone().unwrap();
        assert_eq!(read(second).await.unwrap().len(), 100);
        assert!(!body.is_replayable(), "once read, it cannot be sent again");
        assert!(body.try_clone().is_none());
    }

    #[tokio::test]
    async fn empty_body_is_replayable_and_ends_at_once() {
        let body = ReplayBody::new(http_body_util::Empty::<Bytes>::new(), 64);
        assert!(body.is_end_stream());
        let copy = body.try_clone().unwrap();
        assert!(copy.is_end_stream());
        assert!(read(copy).await.unwrap().is_empty());
    }
}
