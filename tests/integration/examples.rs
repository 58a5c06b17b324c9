//! The examples run against each other (each echo with each sender), as the README shows.
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/integration-<hash> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples").join(name);
    if !path.exists() {
        // `cargo test` builds the examples; `cargo test --test integration` does not.
        // Build them into the same target directory and profile so the test does not
        // depend on how it was invoked.
        build_examples(profile_dir);
    }
    path
}

fn build_examples(profile_dir: &std::path::Path) {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let target_dir = profile_dir.parent().unwrap();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--examples", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .env("CARGO_TARGET_DIR", target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo to build the examples");
        assert!(status.success(), "cargo build --examples failed: {status}");
    });
}

#[test]
fn examples_work_pairwise() {
    for echo in ["pool_echo", "queue_echo"] {
        let path = example(echo);
        assert!(
            path.exists(),
            "{} was not built by cargo build --examples",
            path.display()
        );
        let mut child = Command::new(&path)
            .arg("0")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .expect("listening line")
            .to_string();
        for sender in ["pool_send", "queue_send", "pool_request"] {
            let mut s = Command::new(example(sender))
                .env_remove("RUST_LOG")
                .args([format!("127.0.0.1:{port}"), "0".into()])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while s.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "{sender} against {echo} hangs");
                std::thread::park_timeout(Duration::from_millis(10));
            }
            let out = s.wait_with_output().unwrap();
            assert!(out.status.success(), "{sender} against {echo}");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "hello\n",
                "{sender} against {echo}"
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
