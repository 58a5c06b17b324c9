//! Command-line conventions: `--version`, shell completions and manual pages, all derived
//! from the same argument definitions as `--help`.

use std::path::Path;
use std::process::{Command, Output};

fn chirp(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_chirp"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run chirp");
    assert!(
        out.status.success(),
        "chirp {args:?} failed with {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("UTF-8 output")
}

/// The user-facing subcommands (the hidden measurement helpers are left out of docs).
const SUBCOMMANDS: [&str; 11] = [
    "echo",
    "listen",
    "send",
    "request",
    "bench",
    "bench-idle",
    "bench-sink",
    "bench-raw",
    "bench-latency",
    "completions",
    "manpage",
];

#[test]
fn version_names_the_crate_version_and_the_openssl_it_runs_on() {
    let v = text(&chirp(&["--version"]).stdout);
    let want = format!("chirp {} (OpenSSL ", env!("CARGO_PKG_VERSION"));
    assert!(
        v.starts_with(&want),
        "--version printed {v:?}, want {want:?}…"
    );
    // The runtime library's own version string, e.g. "OpenSSL 3.0.19 27 Jan 2026".
    let openssl = v.trim_end().trim_start_matches(&want);
    assert!(
        openssl.chars().next().is_some_and(|c| c.is_ascii_digit()) && openssl.ends_with(')'),
        "the OpenSSL version is a version: {v:?}"
    );
    assert_eq!(text(&chirp(&["-V"]).stdout), v, "-V is --version");
}

#[test]
fn bash_completions_are_valid_bash_and_complete_every_subcommand_and_flag() {
    let script = text(&chirp(&["completions", "bash"]).stdout);
    for sub in SUBCOMMANDS {
        assert!(script.contains(sub), "bash completion lacks {sub}");
    }
    for flag in ["--window", "--cert-chain", "--no-encryption", "--stats"] {
        assert!(script.contains(flag), "bash completion lacks {flag}");
    }
    // bash parses it (syntax only, nothing runs).
    let dir = tempdir("completions");
    let file = dir.join("chirp.bash");
    std::fs::write(&file, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output();
    let check = check.expect("bash is on every machine this runs on");
    assert!(
        check.status.success(),
        "bash -n rejects the completion script: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // And sourcing it registers the completion function for `chirp`.
    let reg = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p chirp", file.display()))
        .output()
        .unwrap();
    assert!(
        reg.status.success() && text(&reg.stdout).contains("chirp"),
        "sourcing the script registers a completion for chirp: {:?} {}",
        text(&reg.stdout),
        String::from_utf8_lossy(&reg.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn zsh_and_fish_completions_name_every_subcommand() {
    let zsh = text(&chirp(&["completions", "zsh"]).stdout);
    assert!(
        zsh.starts_with("#compdef chirp"),
        "zsh script header: {:?}",
        &zsh[..40.min(zsh.len())]
    );
    let fish = text(&chirp(&["completions", "fish"]).stdout);
    assert!(
        fish.contains("complete -c chirp"),
        "fish script registers for chirp"
    );
    for sub in SUBCOMMANDS {
        assert!(zsh.contains(sub), "zsh completion lacks {sub}");
        assert!(fish.contains(sub), "fish completion lacks {sub}");
    }
    // An unknown shell is refused with one line naming the choices.
    let bad = Command::new(env!("CARGO_BIN_EXE_chirp"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "unknown shell: {err}");
    assert!(
        err.contains("tcsh"),
        "the error names what was wrong: {err}"
    );
}

#[test]
fn manpage_writes_chirp_1_and_a_page_per_subcommand() {
    let dir = tempdir("man");
    let out = text(&chirp(&["manpage", dir.to_str().unwrap()]).stdout);
    let written: Vec<&str> = out.lines().collect();
    assert_eq!(written.len(), SUBCOMMANDS.len() + 1, "paths printed: {out}");
    let top = std::fs::read_to_string(dir.join("chirp.1")).expect("chirp.1 written");
    assert!(
        top.contains(".TH chirp 1"),
        "chirp.1 is a section-1 page: {top:.200}"
    );
    for sub in SUBCOMMANDS {
        let name = format!("chirp-{sub}");
        assert!(
            top.contains(&name.replace('-', "\\-")),
            "chirp.1 refers to {name}(1)"
        );
        let path = dir.join(format!("{name}.1"));
        assert!(
            written.contains(&path.to_str().unwrap()),
            "{} printed",
            path.display()
        );
        let page = std::fs::read_to_string(&path).expect("page written");
        assert!(
            page.contains(&format!(".TH {name} 1")),
            "{name}.1 header: {page:.200}"
        );
    }
    let send = std::fs::read_to_string(dir.join("chirp-send.1")).unwrap();
    for flag in ["window", "cert\\-chain", "async"] {
        assert!(send.contains(flag), "chirp-send(1) documents --{flag}");
    }
    // groff renders it without a warning (groff ships with man-db on these machines).
    render(
        &dir.join("chirp-send.1"),
        "chirp-send - Send messages to a node",
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Renders a page with groff (`-k`: UTF-8 input through preconv, as man does) and checks the text has `line` and groff warned of nothing.
fn render(page: &Path, line: &str) {
    let out = Command::new("groff")
        .args(["-k", "-man", "-Tutf8", "-ww", "-rLL=200n"])
        .arg(page)
        .output()
        .expect("groff (Debian's groff-base, which man-db needs) is installed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "groff: {err}"
    );
    // Strip overstrike (bold/underline) and the hyphen/minus characters groff emits.
    let mut plain = String::new();
    for c in String::from_utf8_lossy(&out.stdout).chars() {
        match c {
            '\u{8}' => {
                plain.pop();
            }
            '\u{2010}' | '\u{2212}' => plain.push('-'),
            c => plain.push(c),
        }
    }
    assert!(
        plain.contains(line),
        "rendered page lacks {line:?}:\n{plain:.600}"
    );
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chirp-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
