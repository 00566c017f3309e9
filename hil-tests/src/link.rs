//! Byte transports for the simulated firmware and the test client: a pseudo-terminal
//! pair the firmware opens itself, or a serial device opened with `serialport`.
//!
//! A pty behaves like a serial line to the program on the other side (the controller
//! opens `/dev/pts/N` exactly as it would open `/dev/ttyACM0`), without hardware.
//! Both ends are put in raw mode (`cfmakeraw`): no echo, no line editing, no CR/LF
//! translation, no signal characters — otherwise a `0x03` in a frame would become
//! Ctrl-C and a `0x0a` would be rewritten.

use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use nix::sys::time::TimeSpec;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A bidirectional byte link with timed reads.
pub trait Port: Send {
    /// Reads what is available, waiting at most `timeout` for the first byte.
    /// Returns `Ok(0)` when nothing arrived in time.
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize>;
    /// Writes all of `data`. A firmware's UART does not block forever when nobody
    /// reads: implementations may drop bytes after a bounded wait (and count them).
    fn write_all(&mut self, data: &[u8]) -> io::Result<()>;
    /// Bytes [`Self::write_all`] dropped so far because nobody read them in time.
    fn dropped_bytes(&self) -> u64 {
        0
    }
}

fn set_raw(fd: RawFd) -> io::Result<()> {
    let mut t = tcgetattr(fd).map_err(io::Error::from)?;
    cfmakeraw(&mut t);
    tcsetattr(fd, SetArg::TCSANOW, &t).map_err(io::Error::from)
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    Ok(())
}

/// Waits until `fd` is readable (or writable) or `timeout` passes; true if ready.
/// `ppoll` takes the timeout to the nanosecond: `poll`'s whole milliseconds either
/// busy-spun through every wait under 1 ms (rounded down) or overslept by up to 1 ms,
/// half a period at 500 Hz (rounded up).
fn wait_fd(fd: RawFd, flags: PollFlags, timeout: Duration) -> io::Result<bool> {
    let mut fds = [PollFd::new(fd, flags)];
    match ppoll(&mut fds, Some(TimeSpec::from(timeout)), None) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A pseudo-terminal pair in raw mode.
///
/// The firmware side keeps the slave open too, so that the master never reports a
/// hang-up while no client is connected and a client can disconnect and reconnect.
/// A client should discard stale input after opening (the firmware keeps talking while
/// nobody listens; `serialport::SerialPort::clear(ClearBuffer::Input)` does it).
pub struct Pty {
    master: File,
    slave: File,
    path: PathBuf,
}

impl Pty {
    pub fn open() -> io::Result<Pty> {
        use nix::fcntl::OFlag;
        use std::os::unix::fs::OpenOptionsExt;
        // Both ends close-on-exec from their creation: a child process (a controller
        // spawned by a test) that inherited them would keep the pty alive after the
        // firmware closed it, so the child could never see the link go away. openpty
        // sets no such flag, and setting it afterwards left a window in which a test on
        // another thread spawning its controller handed it both ends.
        let pt = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
            .map_err(io::Error::from)?;
        nix::pty::grantpt(&pt).map_err(io::Error::from)?;
        nix::pty::unlockpt(&pt).map_err(io::Error::from)?;
        let path = PathBuf::from(nix::pty::ptsname_r(&pt).map_err(io::Error::from)?);
        // SAFETY: posix_openpt returned a fresh descriptor that nothing else owns.
        let master = unsafe { File::from_raw_fd(pt.into_raw_fd()) };
        // std opens with O_CLOEXEC; O_NOCTTY keeps the pty from becoming our terminal.
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY)
            .open(&path)?;
        set_raw(master.as_raw_fd())?;
        set_raw(slave.as_raw_fd())?;
        set_nonblocking(master.as_raw_fd())?;
        Ok(Pty {
            master,
            slave,
            path,
        })
    }

    /// The slave device path (`/dev/pts/N`) to give the controller.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The firmware's end of the link.
    pub fn into_port(self) -> PtyPort {
        PtyPort {
            master: self.master,
            _slave: self.slave,
            dropped_bytes: 0,
        }
    }
}

/// The master side of a [`Pty`].
pub struct PtyPort {
    master: File,
    _slave: File,
    /// Bytes dropped because the slave side's buffer stayed full (nobody reading).
    pub dropped_bytes: u64,
}

/// How long a write waits for a full pty buffer to drain before dropping bytes.
const WRITE_STALL_LIMIT: Duration = Duration::from_millis(200);

impl Port for PtyPort {
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        if !wait_fd(self.master.as_raw_fd(), PollFlags::POLLIN, timeout)? {
            return Ok(0);
        }
        match self.master.read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            // EIO: no slave open at the moment (cannot happen while we hold one, but a
            // pty opened elsewhere may behave so); treat as "nothing to read".
            Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => {
                std::thread::sleep(timeout.min(Duration::from_millis(10)));
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        let deadline = Instant::now() + WRITE_STALL_LIMIT;
        while !data.is_empty() {
            match self.master.write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero()
                        || !wait_fd(self.master.as_raw_fd(), PollFlags::POLLOUT, left)?
                    {
                        self.dropped_bytes += data.len() as u64;
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes
    }
}

/// A serial device (or a pty slave) opened with the `serialport` crate.
pub struct SerialLink {
    port: Box<dyn serialport::SerialPort>,
}

impl SerialLink {
    /// Opens `path` at `baud` (8N1, no flow control) and discards stale input.
    pub fn open(path: impl AsRef<Path>, baud: u32) -> io::Result<SerialLink> {
        let path = path.as_ref().to_string_lossy().into_owned();
        let port = serialport::new(&path, baud)
            .timeout(Duration::from_millis(10))
            .open()
            .map_err(|e| io::Error::other(format!("{path}: {e}")))?;
        port.clear(serialport::ClearBuffer::Input)
            .map_err(|e| io::Error::other(format!("{path}: {e}")))?;
        Ok(SerialLink { port })
    }
}

impl Port for SerialLink {
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        self.port
            .set_timeout(timeout.max(Duration::from_millis(1)))
            .map_err(io::Error::other)?;
        match self.port.read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        // The timeout also bounds writes (a device that stops draining).
        self.port
            .set_timeout(Duration::from_secs(1))
            .map_err(io::Error::other)?;
        Write::write_all(&mut self.port, data)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends of a pty are close-on-exec (set at creation: see [`Pty::open`]), and the
    /// path names the slave the pair was made with: bytes written to it reach the master.
    #[test]
    fn a_pty_is_close_on_exec_and_linked_to_its_path() {
        use nix::fcntl::{FcntlArg, FdFlag, fcntl};
        let pty = Pty::open().unwrap();
        for fd in [pty.master.as_raw_fd(), pty.slave.as_raw_fd()] {
            let flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).unwrap());
            assert!(flags.contains(FdFlag::FD_CLOEXEC), "fd {fd}: {flags:?}");
        }
        let mut client = std::fs::OpenOptions::new()
            .write(true)
            .open(pty.path())
            .unwrap();
        client.write_all(b"hello").unwrap();
        let mut port = pty.into_port();
        let mut buf = [0u8; 16];
        let mut got = Vec::new();
        let start = Instant::now();
        while got.len() < 5 && start.elapsed() < Duration::from_secs(5) {
            let n = port
                .read_timeout(&mut buf, Duration::from_millis(100))
                .unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"hello");
    }

    /// What nobody read within the stall limit is dropped and counted, so the run's
    /// report can say so (the count was kept and never read).
    #[test]
    fn bytes_nobody_reads_are_dropped_and_counted() {
        let mut port = Pty::open().unwrap().into_port();
        let start = Instant::now();
        port.write_all(&[0x55; 1 << 20]).unwrap();
        assert!(start.elapsed() >= WRITE_STALL_LIMIT);
        let dropped = Port::dropped_bytes(&port);
        assert!(dropped > 0 && dropped < 1 << 20, "{dropped}");
    }
}
