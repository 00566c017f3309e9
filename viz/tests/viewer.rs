//! A viewer that stays connected without reading does not hold up the end of a
//! recording (the controller writes its report and exits after it).

use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;
use viz::{Recorder, Target};

#[test]
fn a_viewer_that_never_answers_is_given_up_on() {
    // The kernel completes connections into the listen backlog, so the SDK connects;
    // nothing ever answers it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let rec = Recorder::open("viewer-test", &Target::Connect(addr.clone())).unwrap();
    rec.rec
        .log("x", &rerun::Scalars::single(1.0))
        .expect("logging only queues");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(rec.finish_within(Duration::from_millis(500))));
    // A bound far above the timeout, so that a finish that waits for ever fails here
    // instead of hanging the test binary.
    let finished = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("finish waited for the viewer without a limit");
    let e = format!("{:#}", finished.unwrap_err());
    assert!(
        e.contains(&addr) && e.contains("did not take the recording within 0.5 s"),
        "{e}"
    );
    drop(listener);
}
