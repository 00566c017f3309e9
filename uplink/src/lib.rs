//! `uplink`: the authenticated, framed TCP link between the robot's controller and the
//! trainer (issue 6). Transitions go up, bundles come down; no other host may inject
//! either.
//!
//! # Handshake (shared key `K`, 32 bytes, the same file on both hosts)
//!
//! ```text
//!  controller (client)                                   trainer (server)
//!    ── Hello  "EXPOUPL1" │ version u16 │ client nonce [32] ──────────►
//!    ◄── Challenge  server nonce [32] │ HMAC(K, "server" ‖ cn ‖ sn) ──   the server proves K
//!    ── Proof  HMAC(K, "client" ‖ sn ‖ cn) ──────────────────────────►   the client proves K
//!    both: session key S = HMAC(K, "session" ‖ cn ‖ sn)
//! ```
//!
//! A side that cannot prove `K` is dropped before any message is read from it, and
//! fresh nonces on both sides make a recorded handshake useless. The key never crosses
//! the wire.
//!
//! # Frames (after the handshake, both directions)
//!
//! ```text
//!  len u32 │ kind u8 │ seq u64 │ payload (len − 41 bytes) │ tag [32]
//!  └─ little endian; len counts kind, seq, payload and tag
//!  tag = HMAC(S, direction u8 ‖ seq ‖ kind ‖ payload)      direction: 0 up, 1 down
//! ```
//!
//! `seq` counts frames per direction from 0 and must arrive in order: a dropped,
//! replayed, reordered or reflected frame fails its tag or its sequence check, and so
//! does any changed byte. The link authenticates; it does not encrypt (transitions and
//! bundles are not secret; bundles are also signed by the trainer's ed25519 key and
//! verified by the controller before use).

pub mod records;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

type HmacSha256 = Hmac<Sha256>;

/// First bytes of a client's `Hello`.
pub const MAGIC: &[u8; 8] = b"EXPOUPL1";
/// Protocol version; both sides must speak the same one.
pub const VERSION: u16 = 1;
/// Bytes of a nonce, a key and a tag.
pub const NONCE_LEN: usize = 32;
pub const KEY_LEN: usize = 32;
pub const TAG_LEN: usize = 32;
/// Frame header after the length: kind (1) + seq (8).
const HEADER_LEN: usize = 9;
/// Largest frame: a bundle at the `paper` preset's sizes is about 30 MB of ONNX; 64 MiB
/// leaves room and still bounds what a peer can make us allocate.
pub const MAX_FRAME: usize = 64 << 20;

/// Which way a frame travels (part of every tag, so a frame cannot be reflected).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Controller to trainer.
    Up = 0,
    /// Trainer to controller.
    Down = 1,
}

/// Why the link failed. Every variant names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link I/O: {0}")]
    Io(io::Error),
    /// A read that waited out the stream's read timeout (which its owner sets): said
    /// as such, not as the OS's "resource temporarily unavailable".
    #[error("the peer sent nothing within this link's read timeout ({0})")]
    Silent(io::Error),
    /// A write that waited out the stream's write timeout: the peer takes nothing.
    #[error("the peer took nothing within this link's write timeout ({0})")]
    Stalled(io::Error),
    #[error("peer is not an EXPO uplink (bad magic)")]
    Magic,
    #[error("protocol version mismatch: ours {ours}, peer's {theirs}")]
    Version { ours: u16, theirs: u16 },
    #[error("authentication failed: the peer does not hold our key")]
    Auth,
    /// The client closed the link after the server's challenge instead of proving the
    /// key: what a client with another key does (it refuses the challenge).
    #[error(
        "the peer hung up after our challenge instead of proving the key: it holds another key (or it stopped)"
    )]
    Abandoned,
    /// The server hung up on our hello without a challenge. A trainer does so for a
    /// wrong magic or protocol version, and when it drops a handshake (its deadline,
    /// too many at once, shutting down); it says nothing to a peer that has not proved
    /// the key, and its log says which.
    #[error(
        "the peer closed the link before its challenge: not an EXPO trainer, one of another uplink protocol version than ours ({VERSION}), or one dropping the handshake (shutting down, too many at once); its log says which"
    )]
    Closed,
    /// An end of stream where a frame would begin: the peer hung up (a trainer
    /// stopping, a robot's run ending, a port scan after its connect).
    #[error("the peer closed the link")]
    Hangup,
    /// An end of stream inside a frame: the connection was cut (or the peer died) while
    /// the frame was on its way, so what it carried never arrived.
    #[error("the link was cut inside a frame: {got} of its {len} bytes arrived")]
    Cut { got: usize, len: usize },
    #[error("frame of {0} bytes is outside 41..={MAX_FRAME}")]
    FrameSize(usize),
    #[error("frame {seq}: bad tag (tampered, replayed or from another session)")]
    Tag { seq: u64 },
    #[error("frame out of order: expected sequence {expected}, got {got}")]
    Sequence { expected: u64, got: u64 },
    #[error("{path}: {message}")]
    Key { path: PathBuf, message: String },
}

// By hand rather than `#[from]`, which would also make the I/O error the `source()`:
// the message already includes it, and an error chain would print it twice.
impl From<io::Error> for LinkError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Whether an I/O error is a socket timeout's (`EAGAIN` on Linux, `TimedOut` elsewhere).
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A failed read: [`LinkError::Silent`] where it timed out.
fn read_error(e: io::Error) -> LinkError {
    if timed_out(&e) {
        LinkError::Silent(e)
    } else {
        LinkError::Io(e)
    }
}

/// A failed write: [`LinkError::Stalled`] where it timed out.
fn write_error(e: io::Error) -> LinkError {
    if timed_out(&e) {
        LinkError::Stalled(e)
    } else {
        LinkError::Io(e)
    }
}

/// The shared secret of one robot–trainer pair.
#[derive(Clone)]
pub struct Key([u8; KEY_LEN]);

/// First line of a key file written by [`Key::write`]: it tells the key apart from a
/// bundle signing key, which is also 64 hex digits (and whose files start `# EXPO
/// bundle`: `shared_model::manifest` refuses this header in its place, and this crate
/// refuses that one here).
pub const KEY_FILE_HEADER: &str =
    "# EXPO uplink key (shared secret of a robot and its trainer): keep it private";

/// The largest key file read: the header, 64 hex digits and room for comments.
const MAX_KEY_FILE: u64 = 4096;

/// Never prints the secret.
impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A fresh random key.
    pub fn generate() -> Result<Key, LinkError> {
        let mut k = [0u8; KEY_LEN];
        getrandom::fill(&mut k).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Key(k))
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key(bytes)
    }

    /// Writes the key as hex after [`KEY_FILE_HEADER`], readable by its owner only;
    /// refuses to overwrite an existing file.
    pub fn write(&self, path: &Path) -> Result<(), LinkError> {
        let err = |message: String| LinkError::Key {
            path: path.to_path_buf(),
            message,
        };
        if path.exists() {
            return Err(err("already exists; not overwriting a key".into()));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path).map_err(|e| err(e.to_string()))?;
        let written = writeln!(f, "{KEY_FILE_HEADER}\n{hex}").and_then(|()| f.sync_all());
        if let Err(e) = written {
            // Half a key (a full disk) must not stay: the next keygen refused to
            // overwrite it, and a read took it for damage.
            drop(f);
            let _ = std::fs::remove_file(path);
            return Err(err(e.to_string()));
        }
        Ok(())
    }

    /// Reads a key written by [`Key::write`] (or a bare line of hex, as written before
    /// the header). Refuses a bundle signing or verification key by its header, and a
    /// bare one by its `.pub` name (`trainer keygen`'s public key, which is no secret:
    /// a link keyed with it is open to anyone who has the file); and a file others may
    /// read (`shared_model::manifest::owner_only`).
    pub fn read(path: &Path) -> Result<Key, LinkError> {
        let err = |message: String| LinkError::Key {
            path: path.to_path_buf(),
            message,
        };
        // A regular file of a key's size at most: a FIFO blocked the read for good, and
        // `/dev/zero` filled the memory.
        let meta = std::fs::metadata(path).map_err(|e| {
            err(if e.kind() == std::io::ErrorKind::NotFound {
                "no such key file: `trainer uplink-keygen --out FILE` writes one, and the \
                 robot and its trainer each need a copy of the same file"
                    .into()
            } else {
                e.to_string()
            })
        })?;
        if !meta.is_file() {
            return Err(err("not a regular file".into()));
        }
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| std::io::Read::read_to_end(&mut f.take(MAX_KEY_FILE + 1), &mut bytes))
            .map_err(|e| err(e.to_string()))?;
        if bytes.len() as u64 > MAX_KEY_FILE {
            return Err(err(format!(
                "more than the {MAX_KEY_FILE} bytes a key file may have"
            )));
        }
        let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8 text".into()))?;
        let public_name = path.extension().is_some_and(|e| e == "pub");
        if text.contains("# EXPO bundle") || (public_name && !text.contains(KEY_FILE_HEADER)) {
            return Err(err(
                "this is a bundle signing or verification key (`trainer keygen`), not an \
                 uplink key: pass the file written by `trainer uplink-keygen`"
                    .into(),
            ));
        }
        let hex: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .concat();
        let hex = hex.trim();
        if let Some((i, c)) = hex.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
            return Err(err(format!(
                "expected {} hex digits, found {c:?} at character {}",
                2 * KEY_LEN,
                hex[..i].chars().count() + 1
            )));
        }
        if hex.len() != 2 * KEY_LEN {
            return Err(err(format!(
                "expected {} hex digits, found {}",
                2 * KEY_LEN,
                hex.len()
            )));
        }
        shared_model::manifest::owner_only(path).map_err(err)?;
        let mut k = [0u8; KEY_LEN];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex");
        }
        Ok(Key(k))
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; TAG_LEN] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Constant-time check of `tag` against the HMAC of `parts`.
fn verify(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.verify_slice(tag).is_ok()
}

fn nonce() -> Result<[u8; NONCE_LEN], LinkError> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(n)
}

/// Fills `buf`, the part of a frame (or hello) after its first `before` bytes. Unlike
/// `read_exact`, an end of stream says where it came: at the frame's start a hang-up
/// ([`LinkError::Hangup`]), inside it a cut ([`LinkError::Cut`], the bytes that arrived).
fn read_whole<S: Read>(stream: &mut S, buf: &mut [u8], before: usize) -> Result<(), LinkError> {
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) if before + got == 0 => return Err(LinkError::Hangup),
            Ok(0) => {
                return Err(LinkError::Cut {
                    got: before + got,
                    len: before + buf.len(),
                });
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_error(e)),
        }
    }
    Ok(())
}

/// One received frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// An authenticated connection. `S` is the stream (a `TcpStream` in use; any
/// `Read + Write` in tests).
pub struct Session<S> {
    stream: S,
    key: [u8; KEY_LEN],
    send_dir: Direction,
    send_seq: u64,
    recv_seq: u64,
}

impl<S: Read + Write> Session<S> {
    /// The controller's side of the handshake.
    pub fn client(mut stream: S, key: &Key) -> Result<Session<S>, LinkError> {
        let cn = nonce()?;
        let mut hello = Vec::with_capacity(8 + 2 + NONCE_LEN);
        hello.extend_from_slice(MAGIC);
        hello.extend_from_slice(&VERSION.to_le_bytes());
        hello.extend_from_slice(&cn);
        stream.write_all(&hello).map_err(write_error)?;
        stream.flush().map_err(write_error)?;
        let mut challenge = [0u8; NONCE_LEN + TAG_LEN];
        stream
            .read_exact(&mut challenge)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => LinkError::Closed,
                _ => read_error(e),
            })?;
        let (sn, server_tag) = challenge.split_at(NONCE_LEN);
        if !verify(&key.0, &[b"server", &cn, sn], server_tag) {
            return Err(LinkError::Auth);
        }
        stream
            .write_all(&mac(&key.0, &[b"client", sn, &cn]))
            .map_err(write_error)?;
        stream.flush().map_err(write_error)?;
        Ok(Session::new(stream, key, &cn, sn, Direction::Up))
    }

    /// The trainer's side of the handshake.
    pub fn server(mut stream: S, key: &Key) -> Result<Session<S>, LinkError> {
        let mut hello = [0u8; 8 + 2 + NONCE_LEN];
        read_whole(&mut stream, &mut hello, 0)?;
        if &hello[..8] != MAGIC {
            return Err(LinkError::Magic);
        }
        let theirs = u16::from_le_bytes([hello[8], hello[9]]);
        if theirs != VERSION {
            return Err(LinkError::Version {
                ours: VERSION,
                theirs,
            });
        }
        let cn = &hello[10..];
        let sn = nonce()?;
        let mut challenge = Vec::with_capacity(NONCE_LEN + TAG_LEN);
        challenge.extend_from_slice(&sn);
        challenge.extend_from_slice(&mac(&key.0, &[b"server", cn, &sn]));
        stream.write_all(&challenge).map_err(write_error)?;
        stream.flush().map_err(write_error)?;
        let mut proof = [0u8; TAG_LEN];
        stream.read_exact(&mut proof).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => LinkError::Abandoned,
            _ => read_error(e),
        })?;
        if !verify(&key.0, &[b"client", &sn, cn], &proof) {
            return Err(LinkError::Auth);
        }
        Ok(Session::new(stream, key, cn, &sn, Direction::Down))
    }

    fn new(stream: S, key: &Key, cn: &[u8], sn: &[u8], send_dir: Direction) -> Session<S> {
        Session {
            stream,
            key: mac(&key.0, &[b"session", cn, sn]),
            send_dir,
            send_seq: 0,
            recv_seq: 0,
        }
    }

    /// Sends one frame; returns its sequence number.
    pub fn send(&mut self, kind: u8, payload: &[u8]) -> Result<u64, LinkError> {
        let len = HEADER_LEN + payload.len() + TAG_LEN;
        if len > MAX_FRAME {
            return Err(LinkError::FrameSize(len));
        }
        let seq = self.send_seq;
        let dir = [self.send_dir as u8];
        let tag = mac(&self.key, &[&dir, &seq.to_le_bytes(), &[kind], payload]);
        let mut frame = Vec::with_capacity(4 + len);
        frame.extend_from_slice(&(len as u32).to_le_bytes());
        frame.push(kind);
        frame.extend_from_slice(&seq.to_le_bytes());
        frame.extend_from_slice(payload);
        frame.extend_from_slice(&tag);
        self.stream.write_all(&frame).map_err(write_error)?;
        self.stream.flush().map_err(write_error)?;
        self.send_seq += 1;
        Ok(seq)
    }

    /// Receives the next frame, checking its size, tag and sequence number. After an
    /// error the session is unusable: drop it and reconnect.
    pub fn recv(&mut self) -> Result<Frame, LinkError> {
        let mut len = [0u8; 4];
        read_whole(&mut self.stream, &mut len, 0)?;
        let len = u32::from_le_bytes(len) as usize;
        if !(HEADER_LEN + TAG_LEN..=MAX_FRAME).contains(&len) {
            return Err(LinkError::FrameSize(len));
        }
        let mut body = vec![0u8; len];
        read_whole(&mut self.stream, &mut body, 4)?;
        let kind = body[0];
        let seq = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
        let (payload, tag) = body[HEADER_LEN..].split_at(len - HEADER_LEN - TAG_LEN);
        let recv_dir = match self.send_dir {
            Direction::Up => Direction::Down,
            Direction::Down => Direction::Up,
        };
        if !verify(
            &self.key,
            &[&[recv_dir as u8], &seq.to_le_bytes(), &[kind], payload],
            tag,
        ) {
            return Err(LinkError::Tag { seq });
        }
        if seq != self.recv_seq {
            return Err(LinkError::Sequence {
                expected: self.recv_seq,
                got: seq,
            });
        }
        self.recv_seq += 1;
        Ok(Frame {
            kind,
            seq,
            payload: payload.to_vec(),
        })
    }

    /// The underlying stream (e.g. to set timeouts).
    pub fn stream(&self) -> &S {
        &self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::thread;

    fn key(b: u8) -> Key {
        Key::from_bytes([b; KEY_LEN])
    }

    /// A server thread that authenticates one client with `server_key`, then echoes
    /// frames back (kind + 1) until the link fails, and returns how it ended.
    fn echo_server(server_key: Key) -> (u16, thread::JoinHandle<Result<usize, LinkError>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let h = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut s = Session::server(stream, &server_key)?;
            let mut n = 0;
            loop {
                match s.recv() {
                    Ok(f) => {
                        s.send(f.kind + 1, &f.payload)?;
                        n += 1;
                    }
                    Err(LinkError::Hangup) => return Ok(n),
                    Err(e) => return Err(e),
                }
            }
        });
        (port, h)
    }

    #[test]
    fn authenticated_frames_round_trip() {
        let (port, server) = echo_server(key(7));
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut c = Session::client(stream, &key(7)).unwrap();
        for i in 0..5u8 {
            let payload = vec![i; 1000 * i as usize];
            c.send(10, &payload).unwrap();
            let f = c.recv().unwrap();
            assert_eq!((f.kind, f.seq, f.payload), (11, i as u64, payload));
        }
        drop(c);
        assert_eq!(server.join().unwrap().unwrap(), 5);
    }

    #[test]
    fn a_client_without_the_key_is_refused_and_learns_nothing() {
        let (port, server) = echo_server(key(7));
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // The wrong key already fails on the server's challenge, client side.
        assert!(matches!(
            Session::client(stream, &key(8)),
            Err(LinkError::Auth)
        ));
        // The server never reaches its frame loop: it reports the failed handshake
        // (the client hung up instead of proving the key).
        assert!(matches!(server.join().unwrap(), Err(LinkError::Abandoned)));
    }

    /// A peer that says nothing within the read timeout is named silent (the error was
    /// the OS's "Resource temporarily unavailable (os error 11)").
    #[test]
    fn a_silent_peer_is_named_silent() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut s = Session::server(stream, &key(7)).unwrap();
            // Holds the link open, saying nothing, until the client is done.
            let _ = s.recv();
        });
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let same_socket = stream.try_clone().unwrap();
        let mut c = Session::client(stream, &key(7)).unwrap();
        same_socket
            .set_read_timeout(Some(std::time::Duration::from_millis(50)))
            .unwrap();
        let e = c.recv().unwrap_err();
        assert!(matches!(e, LinkError::Silent(_)), "{e:?}");
        assert!(
            e.to_string().starts_with("the peer sent nothing within"),
            "{e}"
        );
        // Both handles on the socket closed: the server's wait ends.
        drop((c, same_socket));
        server.join().unwrap();
    }

    /// A trainer that hangs up on our hello (what one of another protocol version does)
    /// is reported as such, not as a bare end of file.
    #[test]
    fn a_server_that_hangs_up_on_the_hello_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut hello = [0u8; 8 + 2 + NONCE_LEN];
            s.read_exact(&mut hello).unwrap();
        });
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let e = Session::client(stream, &key(7)).err().unwrap();
        server.join().unwrap();
        assert!(matches!(e, LinkError::Closed), "{e:?}");
        assert!(e.to_string().contains("protocol version"), "{e}");
    }

    #[test]
    fn a_forged_proof_is_refused_by_the_server() {
        let (port, server) = echo_server(key(7));
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&VERSION.to_le_bytes());
        hello.extend_from_slice(&[1u8; NONCE_LEN]);
        stream.write_all(&hello).unwrap();
        let mut challenge = [0u8; NONCE_LEN + TAG_LEN];
        stream.read_exact(&mut challenge).unwrap();
        stream.write_all(&[0u8; TAG_LEN]).unwrap();
        assert!(matches!(server.join().unwrap(), Err(LinkError::Auth)));
    }

    #[test]
    fn wrong_magic_and_version_are_named() {
        for (magic, version, want) in [(b"HTTP/1.1", VERSION, "magic"), (MAGIC, 9, "version")] {
            let (port, server) = echo_server(key(7));
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut hello = magic.to_vec();
            hello.extend_from_slice(&version.to_le_bytes());
            hello.extend_from_slice(&[0u8; NONCE_LEN]);
            stream.write_all(&hello).unwrap();
            let err = server.join().unwrap().unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    /// An in-memory pipe pair for tampering with bytes in flight.
    fn sessions() -> (Session<Pipe>, Session<Pipe>) {
        let (a, b) = (Pipe::default(), Pipe::default());
        let (cn, sn) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN]);
        (
            Session::new(a, &key(3), &cn, &sn, Direction::Up),
            Session::new(b, &key(3), &cn, &sn, Direction::Down),
        )
    }

    #[derive(Default)]
    struct Pipe {
        buf: std::collections::VecDeque<u8>,
    }
    impl Read for Pipe {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            // An empty pipe is an end of stream, as a closed socket's.
            if self.buf.is_empty() {
                return Ok(0);
            }
            let n = out.len().min(self.buf.len());
            for (o, b) in out.iter_mut().zip(self.buf.drain(..n)) {
                *o = b;
            }
            Ok(n)
        }
    }
    impl Write for Pipe {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.buf.extend(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Moves everything `from` wrote into `to`'s read buffer, through `edit`.
    fn deliver(from: &mut Session<Pipe>, to: &mut Session<Pipe>, edit: impl Fn(&mut Vec<u8>)) {
        let mut bytes: Vec<u8> = from.stream.buf.drain(..).collect();
        edit(&mut bytes);
        to.stream.buf.extend(bytes);
    }

    /// An end of stream between frames is a hang-up, one inside a frame a cut, each
    /// named (both were "link I/O: failed to fill whole buffer").
    #[test]
    fn an_end_of_stream_says_where_it_came() {
        let (mut up, mut down) = sessions();
        let e = down.recv().unwrap_err();
        assert!(matches!(e, LinkError::Hangup), "{e:?}");
        assert_eq!(e.to_string(), "the peer closed the link");
        up.send(3, b"transitions").unwrap();
        deliver(&mut up, &mut down, |b| b.truncate(2));
        let e = down.recv().unwrap_err();
        assert!(matches!(e, LinkError::Cut { got: 2, len: 4 }), "{e:?}");
        let (mut up, mut down) = sessions();
        up.send(3, b"transitions").unwrap();
        deliver(&mut up, &mut down, |b| b.truncate(20));
        let e = down.recv().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the link was cut inside a frame: 20 of its {} bytes arrived",
                4 + HEADER_LEN + 11 + TAG_LEN
            )
        );
    }

    #[test]
    fn every_changed_byte_is_caught() {
        let (mut up, _) = sessions();
        up.send(3, b"transitions").unwrap();
        let frame: Vec<u8> = up.stream.buf.drain(..).collect();
        // From byte 4: a changed length is a size error or a short read instead.
        for i in 4..frame.len() {
            let (_, mut down) = sessions();
            let mut f = frame.clone();
            f[i] ^= 0x20;
            down.stream.buf.extend(f);
            assert!(
                matches!(down.recv(), Err(LinkError::Tag { .. })),
                "byte {i} changed unnoticed"
            );
        }
        // Unchanged, it is accepted.
        let (_, mut down) = sessions();
        down.stream.buf.extend(frame);
        assert_eq!(down.recv().unwrap().payload, b"transitions");
    }

    #[test]
    fn replayed_reordered_and_reflected_frames_are_refused() {
        let (mut up, mut down) = sessions();
        up.send(3, b"a").unwrap();
        let first: Vec<u8> = up.stream.buf.iter().copied().collect();
        deliver(&mut up, &mut down, |_| {});
        assert_eq!(down.recv().unwrap().seq, 0);
        // Replay of frame 0.
        down.stream.buf.extend(first.iter().copied());
        assert!(matches!(
            down.recv(),
            Err(LinkError::Sequence {
                expected: 1,
                got: 0
            })
        ));
        // Reordered: frame 1 delivered before frame 0 (or frame 0 dropped), refused as
        // out of sequence; a check that took any newer number let a dropped frame pass.
        let (mut up, mut down) = sessions();
        up.send(3, b"a").unwrap();
        up.stream.buf.clear();
        up.send(3, b"b").unwrap();
        deliver(&mut up, &mut down, |_| {});
        assert!(matches!(
            down.recv(),
            Err(LinkError::Sequence {
                expected: 0,
                got: 1
            })
        ));
        // Reflection: the controller's own frame sent back to it.
        let (mut up, _) = sessions();
        up.send(3, b"a").unwrap();
        let own: Vec<u8> = up.stream.buf.drain(..).collect();
        up.stream.buf.extend(own);
        assert!(matches!(up.recv(), Err(LinkError::Tag { .. })));
    }

    #[test]
    fn oversized_and_undersized_lengths_are_refused_before_allocating() {
        for len in [0u32, 40, (MAX_FRAME + 1) as u32, u32::MAX] {
            let (_, mut down) = sessions();
            down.stream.buf.extend(len.to_le_bytes());
            assert!(matches!(down.recv(), Err(LinkError::FrameSize(_))), "{len}");
        }
    }

    #[test]
    fn keys_round_trip_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/uplink.key");
        // Not made or not copied yet: where it comes from.
        let e = Key::read(&path).unwrap_err().to_string();
        assert!(
            e.contains("uplink.key") && e.contains("`trainer uplink-keygen --out FILE`"),
            "{e}"
        );
        let k = Key::generate().unwrap();
        k.write(&path).unwrap();
        assert_eq!(Key::read(&path).unwrap().0, k.0);
        assert!(
            k.write(&path)
                .unwrap_err()
                .to_string()
                .contains("not overwriting")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A key file from before the header: a bare line of hex.
        let bare = dir.path().join("bare.key");
        let hex: String = k.0.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&bare, hex + "\n").unwrap();
        #[cfg(unix)]
        {
            // Written by hand, others may read it: refused until chmod 600.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&bare, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = Key::read(&bare).unwrap_err().to_string();
            assert!(
                e.contains("bare.key") && e.contains("others may read") && e.contains("chmod 600"),
                "{e}"
            );
            std::fs::set_permissions(&bare, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert_eq!(Key::read(&bare).unwrap().0, k.0);
        std::fs::write(&path, "abc").unwrap();
        let e = Key::read(&path).unwrap_err().to_string();
        assert!(
            e.contains("uplink.key") && e.contains("64 hex digits, found 3"),
            "{e}"
        );
        // 64 characters, one of them not hex: named with its place.
        std::fs::write(&path, format!("{}g{}", "a".repeat(40), "b".repeat(23))).unwrap();
        let e = Key::read(&path).unwrap_err().to_string();
        assert!(e.contains("found 'g' at character 41"), "{e}");
        // Read capped, regular files only: a FIFO blocked the read for good, a huge
        // file (`/dev/zero`) was read whole.
        std::fs::write(&path, "#\n".repeat(3000)).unwrap();
        let e = Key::read(&path).unwrap_err().to_string();
        assert!(e.contains("more than the 4096 bytes"), "{e}");
        #[cfg(unix)]
        {
            let fifo = dir.path().join("fifo.key");
            let made = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap();
            assert!(made.success());
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(Key::read(&fifo).err().map(|e| e.to_string()));
            });
            // (A guard, not a timing: the old read never returned.)
            let e = rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("reading a FIFO as a key blocked")
                .expect("a FIFO taken for a key");
            assert!(e.contains("not a regular file"), "{e}");
        }
    }

    /// The uplink key and a bundle signing key are both 64 hex digits: each is refused
    /// in the other's role, by name.
    #[test]
    fn uplink_and_bundle_keys_are_refused_in_each_others_role() {
        let dir = tempfile::tempdir().unwrap();
        let uplink = dir.path().join("uplink.key");
        Key::generate().unwrap().write(&uplink).unwrap();
        let (secret, public) =
            shared_model::manifest::generate_key_pair(&dir.path().join("expo")).unwrap();
        // Also a public key written before the header (a bare line of hex), by its
        // name: it was taken for the link's shared secret.
        let bare_public = dir.path().join("old.pub");
        let text = std::fs::read_to_string(&public).unwrap();
        let hex: String = text.lines().filter(|l| !l.starts_with('#')).collect();
        std::fs::write(&bare_public, hex + "\n").unwrap();
        for bundle_key in [&secret, &public, &bare_public] {
            let e = Key::read(bundle_key).unwrap_err().to_string();
            assert!(
                e.contains("bundle signing") && e.contains("uplink-keygen"),
                "{e}"
            );
        }
        let e = shared_model::manifest::read_signing_key(&uplink)
            .unwrap_err()
            .to_string();
        assert!(e.contains("uplink's shared key"), "{e}");
        let e = shared_model::manifest::Trust::from_public_key_file(&uplink)
            .unwrap_err()
            .to_string();
        assert!(e.contains("uplink's shared key"), "{e}");
    }
}
