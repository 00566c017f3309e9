//! Validates robot config files: `cargo run -p firmware-config --example check_robot -- FILE...`.
//! Prints each file's handshake values, or the error (file, line, field) and exits 1.

fn main() {
    let mut failed = false;
    for path in std::env::args().skip(1) {
        match firmware_config::RobotConfig::load(&path) {
            Ok(c) => println!(
                "{path}: ok: robot '{}', {} Hz, obs {}, act {}, {} joints",
                c.robot,
                c.control_hz,
                c.observation.dim,
                c.action.dim,
                c.joints.len()
            ),
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    std::process::exit(failed as i32);
}
