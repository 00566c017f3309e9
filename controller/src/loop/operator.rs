//! Operator episode control: keys typed on the controller's terminal (`--operator`).
//!
//! One command per line (a key, then Enter; the whole word works too), read by a thread
//! of its own and handed to the control thread through a channel it polls once per
//! tick, so a slow or silent terminal never delays a tick.
//!
//! ```text
//!  s  success       end the running episode now, labelled a success
//!  f  failure       end the running episode now, labelled a failure
//!  r  reset         end the running episode now, unlabelled (counts as interrupted)
//!  i  intervention  toggle the intervention mark of the transitions being recorded
//!  p  pause         start no new episode until `c` (the running one goes on)
//!  c  continue      start episodes again
//!  q  quit          end the run (safe stop), like Ctrl-C
//! ```
//!
//! What a label does to the data (see `control::Control::operator_end`): the episode's
//! last transition is the one whose next observation is the newest frame when the key
//! arrived. A success makes it terminal (`done`, `success`) and adds
//! `RunConfig::success_reward` to its reward; a failure makes it truncated (the state
//! is not terminal, so bootstrapping from it stays valid), unless the firmware ended
//! that step as terminal (it stays terminal). The episode-end record
//! says [`EndReason::Labelled`](super::log::EndReason::Labelled) and the label, and the
//! run's success rate counts labelled episodes with completed ones.
//!
//! The intervention mark does not change what the controller sends: it records that a
//! person was acting on the arm (a teleop device on the firmware's side, or a hand on
//! the arm) while the policy's commands went out, so that a trainer can tell those
//! steps apart (`intervention` column of the dataset). A teleop device whose actions
//! the controller itself sends is [`super::teleop`] (`--teleop`): those steps are
//! recorded with the device's action and marked `teleop` instead.

use super::realtime;
use crossbeam_channel::{Receiver, Sender};
use std::io::{BufRead, Read};

/// The longest line read as a command: every command is a word; a longer line (pasted
/// text) is reported and skipped, so that input cannot grow memory.
const MAX_LINE: usize = 1024;
/// Commands read ahead of the control thread at most: far more than a person types
/// between two ticks, few enough that one tick's drain stays short.
pub(crate) const MAX_QUEUED: usize = 64;

/// What the operator did in a run (`report.json`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OperatorSummary {
    /// Episodes ended with a success or failure label.
    pub labels: u32,
    /// Episodes ended unlabelled (`r`).
    pub resets: u32,
    pub intervention_toggles: u32,
    /// Commands that needed a running episode when none was.
    pub ignored: u32,
}

/// One operator command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorCommand {
    Success,
    Failure,
    Reset,
    ToggleIntervention,
    Pause,
    Continue,
    Quit,
}

/// The help line printed at start and after an unknown command.
pub const HELP: &str = "operator keys (then Enter): s success, f failure, r reset episode, \
     i toggle intervention, p pause, c continue, q quit";

impl OperatorCommand {
    /// Parses one line: a key or its word, case-insensitive, surrounding blanks ignored.
    /// `Ok(None)` for a blank line.
    pub fn parse(line: &str) -> Result<Option<OperatorCommand>, String> {
        let word = line.trim().to_ascii_lowercase();
        Ok(Some(match word.as_str() {
            "" => return Ok(None),
            "s" | "success" => OperatorCommand::Success,
            "f" | "fail" | "failure" => OperatorCommand::Failure,
            "r" | "reset" => OperatorCommand::Reset,
            "i" | "intervention" => OperatorCommand::ToggleIntervention,
            "p" | "pause" => OperatorCommand::Pause,
            "c" | "continue" | "resume" => OperatorCommand::Continue,
            "q" | "quit" => OperatorCommand::Quit,
            _ => {
                return Err(format!(
                    "unknown operator command {:?}; {HELP}",
                    line.trim()
                ));
            }
        }))
    }
}

/// Reads commands from `input` (stdin in the binary) until it closes; the receiver
/// is what the control thread polls. Unknown lines are reported on stderr and skipped.
pub fn spawn_reader<R: BufRead + Send + 'static>(
    input: R,
) -> std::io::Result<Receiver<OperatorCommand>> {
    // Bounded: the reader waits while the control thread is behind. A person types a
    // few commands a minute, but a pipe or a pasted block can feed thousands a second,
    // and an unbounded queue grew without limit (each tick drains it whole).
    let (tx, rx): (Sender<OperatorCommand>, _) = crossbeam_channel::bounded(MAX_QUEUED);
    realtime::spawn_in_run("operator", move || {
        let mut input = input;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match (&mut input)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut buf)
            {
                Ok(0) => {
                    note!(
                        "operator console: input closed; commands are no longer read (Ctrl-C still stops the run)"
                    );
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    note!(
                        "operator console: reading input failed ({e}); commands are no longer read (Ctrl-C still stops the run)"
                    );
                    break;
                }
            }
            if buf.len() > MAX_LINE && !buf.ends_with(b"\n") {
                note!("operator console: a line of over {MAX_LINE} bytes skipped");
                skip_line(&mut input);
                continue;
            }
            // Bytes that are not UTF-8 (an 8-bit terminal) make an unknown command, not
            // the end of the console.
            let line = String::from_utf8_lossy(&buf);
            match OperatorCommand::parse(&line) {
                Ok(Some(c)) => {
                    if tx.send(c).is_err() {
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) => note!("{e}"),
            }
        }
    })?;
    Ok(rx)
}

/// Reads and drops the rest of a line (to its newline or the end of the input).
fn skip_line<R: BufRead>(input: &mut R) {
    let mut rest = Vec::new();
    loop {
        rest.clear();
        match input.take(4096).read_until(b'\n', &mut rest) {
            Ok(0) | Err(_) => return,
            Ok(_) if rest.ends_with(b"\n") => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_words_parse() {
        for (line, want) in [
            ("s", OperatorCommand::Success),
            (" Success \n", OperatorCommand::Success),
            ("f", OperatorCommand::Failure),
            ("fail", OperatorCommand::Failure),
            ("r", OperatorCommand::Reset),
            ("I", OperatorCommand::ToggleIntervention),
            ("p", OperatorCommand::Pause),
            ("resume", OperatorCommand::Continue),
            ("q", OperatorCommand::Quit),
        ] {
            assert_eq!(OperatorCommand::parse(line), Ok(Some(want)), "{line:?}");
        }
        assert_eq!(OperatorCommand::parse("  "), Ok(None));
        let err = OperatorCommand::parse("x").unwrap_err();
        assert!(err.contains("\"x\"") && err.contains("s success"), "{err}");
    }

    /// Every command the reader forwards from `input`, in order.
    fn commands_in(input: Vec<u8>) -> Vec<OperatorCommand> {
        spawn_reader(std::io::Cursor::new(input))
            .unwrap()
            .iter()
            .collect()
    }

    const I_S_Q: [OperatorCommand; 3] = [
        OperatorCommand::ToggleIntervention,
        OperatorCommand::Success,
        OperatorCommand::Quit,
    ];

    #[test]
    fn the_reader_forwards_commands_in_order_and_skips_unknown_lines() {
        assert_eq!(commands_in(b"i\n\nbogus\ns\nq\n".to_vec()), I_S_Q);
    }

    /// Commands fed faster than the control thread takes them wait in the input: the
    /// queue holds at most `MAX_QUEUED` (it grew without limit from a pipe).
    #[test]
    fn a_flood_of_commands_is_held_back_by_the_queue() {
        /// "p\n" without end.
        struct Flood;
        impl Read for Flood {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = if i % 2 == 0 { b'p' } else { b'\n' };
                }
                Ok(buf.len() - buf.len() % 2)
            }
        }
        let rx = spawn_reader(std::io::BufReader::new(Flood)).unwrap();
        // (A guard, not a timing: the reader fills the queue at once.)
        let start = std::time::Instant::now();
        while rx.len() < MAX_QUEUED {
            assert!(start.elapsed().as_secs() < 60, "the queue never filled");
            std::thread::yield_now();
        }
        // The reader goes on reading only as commands are taken.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(rx.len(), MAX_QUEUED);
        for _ in 0..3 * MAX_QUEUED {
            assert_eq!(rx.recv().unwrap(), OperatorCommand::Pause);
        }
        assert!(rx.len() <= MAX_QUEUED);
    }

    #[test]
    fn bytes_that_are_not_utf8_and_long_lines_do_not_end_the_console() {
        let mut input = b"i\n\xff\xfe\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 5000));
        input.extend_from_slice(b"\ns\r\nq\n");
        assert_eq!(commands_in(input), I_S_Q);
    }
}
