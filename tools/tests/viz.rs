//! `tools viz` (feature `viz`; scripts/test builds the workspace's tests with it,
//! scripts/test-features): the commands as a user types them, the result checked by `tools viz
//! verify` (the rerun CLI of the matching rerun-sdk wheel).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tools");

fn tools(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tools {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn dataset_recording_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("arm");
    let rrd = tmp.path().join("arm.rrd");
    let (data_s, rrd_s) = (data.to_str().unwrap(), rrd.to_str().unwrap());
    tools(&[
        "dataset",
        "generate",
        "--task",
        "arm-reach",
        "--episodes",
        "2",
        "--out",
        data_s,
    ]);
    let said = tools(&["viz", "dataset", data_s, "--out", rrd_s]);
    assert!(
        said.contains("2 episodes") && said.contains("scene"),
        "{said}"
    );
    let listed = tools(&["viz", "verify", rrd_s]);
    assert!(listed.contains("verified by rerun 0.36.3"), "{listed}");
    for entity in [
        "/scene/robot/links",
        "/scene/obstacle/discs",
        "/next.reward",
    ] {
        assert!(listed.contains(entity), "{entity} missing:\n{listed}");
    }
    // Neither --out nor --connect: refused by the argument parser.
    let out = Command::new(BIN)
        .args(["viz", "dataset", data_s])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // A task whose scene needs another observation size: refused, not drawn without it.
    let out = Command::new(BIN)
        .args(["viz", "dataset", data_s, "--task", "maze", "--out", rrd_s])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("--task maze draws its scene from 6 observation values, the dataset has 10"),
        "{said}"
    );
    // An --out that is not an .rrd file (here the dataset's own info.json) is refused
    // and left as it was.
    let info = data.join("meta/info.json");
    let before = std::fs::read(&info).unwrap();
    let out = Command::new(BIN)
        .args(["viz", "dataset", data_s, "--out", info.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("must end in .rrd"), "{said}");
    assert_eq!(std::fs::read(&info).unwrap(), before);
    // A recording that is not there is named as such.
    let missing = tmp.path().join("missing.rrd");
    let out = Command::new(BIN)
        .args(["viz", "verify", missing.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("missing.rrd: no such recording"), "{said}");
}
