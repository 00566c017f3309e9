//! What the server allocates for a `RECORDS` frame it refuses: a frame that announces
//! more records than it holds (here a megabyte of empty records, one short) is refused
//! without a list of its records. The list was reserved first, 24 bytes a record: about
//! 6 MB here, about 400 MB for a 64 MiB frame from a peer with the key. A global
//! allocator records the largest single allocation while the frame is served (the only
//! test in this binary, so no other test's allocations are seen).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use uplink::records::{RecordSink, kind, serve_records};
use uplink::{KEY_LEN, Key, Session};

struct Largest;

static WATCHING: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only records sizes.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if WATCHING.load(Ordering::Relaxed) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Largest = Largest;

/// Takes nothing: the frame must be refused before anything is stored.
struct NoSink;

impl RecordSink for NoSink {
    fn next_index(&mut self, _stream: &str) -> Result<u64, String> {
        Ok(0)
    }
    fn append(&mut self, _stream: &str, index: u64, _record: &[u8]) -> Result<(), String> {
        panic!("record {index} stored from a malformed frame");
    }
}

#[test]
fn a_frame_announcing_more_records_than_it_holds_is_refused_without_a_list() {
    const FRAME: usize = 1 << 20;
    let key = Key::from_bytes([9; KEY_LEN]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server_key = key.clone();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let mut session = Session::server(tcp, &server_key).unwrap();
        serve_records(&mut session, &mut NoSink).map_err(|e| e.to_string())
    });
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut client = Session::client(tcp, &key).unwrap();
    client.send(kind::OPEN, b"run-m").unwrap();
    assert_eq!(client.recv().unwrap().kind, kind::RESUME);
    // first 0, then one more empty record announced than the frame holds.
    let held = (FRAME - 12) / 4;
    let mut p = Vec::with_capacity(FRAME);
    p.extend_from_slice(&0u64.to_le_bytes());
    p.extend_from_slice(&(held as u32 + 1).to_le_bytes());
    p.resize(12 + 4 * held, 0);
    WATCHING.store(true, Ordering::SeqCst);
    client.send(kind::RECORDS, &p).unwrap();
    let outcome = server.join().unwrap();
    WATCHING.store(false, Ordering::SeqCst);
    let e = outcome.unwrap_err();
    assert!(e.contains(&format!("record {held} has no length")), "{e}");
    // The frame itself (received, and built and sent here) is the largest allocation:
    // nothing per record.
    let largest = LARGEST.load(Ordering::SeqCst);
    assert!(
        largest < 2 * FRAME,
        "largest allocation {largest} bytes while serving a {FRAME}-byte frame"
    );
}
