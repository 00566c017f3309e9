//! A minimal controller-side client for tests: framing, sequence numbers, handshake,
//! and waiting for a message with a (generous) timeout. The real controller has its own
//! loop; this one only has to be obviously correct.

use crate::link::Port;
use firmware_config::protocol::{
    FrameDecoder, FrameEncoder, FrameError, HandshakeError, Hello, Message, SeqTracker,
};
use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

pub use firmware_config::protocol::Frame;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("link: {0}")]
    Io(io::Error),
    #[error("no {waiting_for} within {timeout:?}")]
    Timeout {
        waiting_for: &'static str,
        timeout: Duration,
    },
    #[error("handshake refused: {0}")]
    Handshake(HandshakeError),
}

// By hand rather than `#[from]`, which would also make the inner error the
// `source()`: the message already includes it, and an error chain would print it twice.
impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<HandshakeError> for ClientError {
    fn from(e: HandshakeError) -> Self {
        Self::Handshake(e)
    }
}

/// The controller's end of the link, for tests.
pub struct Client {
    port: Box<dyn Port>,
    decoder: FrameDecoder,
    encoder: FrameEncoder,
    start: Instant,
    inbox: VecDeque<Result<Frame, FrameError>>,
    /// Every frame error seen, in order.
    pub errors: Vec<FrameError>,
    /// The firmware's sequence numbers.
    pub seq: SeqTracker,
}

impl Client {
    pub fn new(port: Box<dyn Port>) -> Client {
        Client {
            port,
            decoder: FrameDecoder::new(),
            encoder: FrameEncoder::new(),
            start: Instant::now(),
            inbox: VecDeque::new(),
            errors: Vec::new(),
            seq: SeqTracker::new(),
        }
    }

    /// Sends `message` stamped with our sequence number and monotonic µs clock.
    pub fn send(&mut self, message: Message) -> io::Result<()> {
        let now = self.start.elapsed().as_micros() as u32;
        let wire = self.encoder.to_wire(now, message);
        self.port.write_all(&wire)
    }

    /// The next frame, waiting at most `timeout`; frame errors on the way are
    /// recorded in [`Client::errors`] and skipped.
    pub fn recv(&mut self, timeout: Duration) -> io::Result<Option<Frame>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left)? {
                Some(Ok(f)) => return Ok(Some(f)),
                Some(Err(_)) => {}
                None => return Ok(None),
            }
        }
    }

    /// The next frame or frame error, waiting at most `timeout`. Errors are also
    /// recorded in [`Client::errors`].
    pub fn next_event(
        &mut self,
        timeout: Duration,
    ) -> io::Result<Option<Result<Frame, FrameError>>> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 512];
        loop {
            if let Some(e) = self.inbox.pop_front() {
                return Ok(Some(e));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let n = self.port.read_timeout(&mut buf, left)?;
            let (inbox, errors, seq) = (&mut self.inbox, &mut self.errors, &mut self.seq);
            self.decoder.feed(&buf[..n], |r| {
                match &r {
                    Ok(f) => {
                        if matches!(f.message, Message::Hello(_)) {
                            // A Hello starts the peer's sequence over.
                            seq.reset();
                        }
                        seq.observe(f.seq);
                    }
                    Err(e) => errors.push(*e),
                }
                inbox.push_back(r);
            });
        }
    }

    /// Receives until a frame matches `want`, dropping the others; fails after
    /// `timeout`.
    pub fn recv_until(
        &mut self,
        timeout: Duration,
        waiting_for: &'static str,
        mut want: impl FnMut(&Message) -> bool,
    ) -> Result<Frame, ClientError> {
        self.recv_map(timeout, waiting_for, |f| {
            want(&f.message).then(|| f.clone())
        })
    }

    /// Receives until `pick` returns `Some` for a frame, dropping the others; fails
    /// after `timeout`.
    pub fn recv_map<T>(
        &mut self,
        timeout: Duration,
        waiting_for: &'static str,
        mut pick: impl FnMut(&Frame) -> Option<T>,
    ) -> Result<T, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left)? {
                Some(f) => {
                    if let Some(t) = pick(&f) {
                        return Ok(t);
                    }
                }
                None => {
                    return Err(ClientError::Timeout {
                        waiting_for,
                        timeout,
                    });
                }
            }
        }
    }

    /// Sends our `Hello`, waits for the firmware's and checks it against ours.
    pub fn handshake(&mut self, ours: Hello, timeout: Duration) -> Result<Hello, ClientError> {
        self.send(Message::Hello(ours))?;
        let theirs = self.recv_map(timeout, "Hello", |f| match f.message {
            Message::Hello(h) => Some(h),
            _ => None,
        })?;
        ours.check_peer(&theirs)?;
        Ok(theirs)
    }

    pub fn decoder_stats(&self) -> firmware_config::protocol::DecoderStats {
        self.decoder.stats()
    }
}
