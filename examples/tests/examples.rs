// SPDX-License-Identifier: MPL-2.0
//! The two programs in examples/ run as their headers say: test frames through
//! `i2itransform` on the demo model, the prompt changed while the pipeline plays (the
//! transform reports the new prompt applied), stats read off the bus, exit 0.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECOND_PROMPT: &str = "an oil painting of a harbour at night";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// A plugin folder with this build's libgsti2i.so only (the newest of target/PROFILE and
/// its deps/), as an application sees installed plugins; None when it is not built.
fn plugin_dir() -> Option<PathBuf> {
    static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(copy_plugin).clone()
}

fn copy_plugin() -> Option<PathBuf> {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent()?;
    let profile = deps.parent()?;
    let (_, lib) = [deps.join("libgsti2i.so"), profile.join("libgsti2i.so")]
        .into_iter()
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _)| *t)?;
    let dir = profile.parent()?.join("examples-test-plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = dir.join(format!(".libgsti2i.so.{}", std::process::id()));
    std::fs::copy(&lib, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("libgsti2i.so")).unwrap();
    Some(dir)
}

/// Runs `cmd` with the plugin and the demo model; its output, or None when skipped.
fn run(test: &str, mut cmd: Command) -> Option<String> {
    let model = root().join("models/demo");
    let Some(plugins) = plugin_dir().filter(|_| model.is_dir()) else {
        eprintln!("SKIPPED {test}: needs libgsti2i.so and models/demo (bash scripts/setup.sh)");
        return None;
    };
    let mut child = cmd
        .arg(&model)
        .arg("40")
        .current_dir(root())
        .env("GST_PLUGIN_PATH", &plugins)
        .env("GST_REGISTRY", plugins.join(format!("registry-{test}.bin")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example starts");
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{test}: {}\n{stdout}\n{stderr}",
        out.status
    );
    Some(stdout)
}

/// The prompt changed while frames flowed, the transform applied it, stats came.
fn check(out: &str) {
    let changed = out.find("prompt changed").expect(out);
    let applied = out
        .find(&format!("now \"{SECOND_PROMPT}\""))
        .unwrap_or_else(|| panic!("the new prompt was not applied:\n{out}"));
    assert!(changed < applied, "{out}");
    // The last stats (at the end of the stream): every frame in, and out or dropped.
    let last = out.lines().rfind(|l| l.starts_with("stats: ")).expect(out);
    let n: Vec<u64> = last
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(n[0] == 40 && n[1] + n[2] == 40, "{last}\n{out}");
}

#[test]
fn the_rust_example_changes_the_prompt_while_it_plays() {
    let test = "the_rust_example_changes_the_prompt_while_it_plays";
    if let Some(out) = run(test, Command::new(env!("CARGO_BIN_EXE_live-prompt"))) {
        check(&out);
    }
}

#[test]
fn the_python_example_changes_the_prompt_while_it_plays() {
    let test = "the_python_example_changes_the_prompt_while_it_plays";
    // The system interpreter has gi; the project's .venv has not (docs/transport.md).
    let python = "/usr/bin/python3";
    let has_gi = Command::new(python)
        .args(["-c", "import gi; gi.require_version('Gst', '1.0')"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_gi {
        eprintln!(
            "SKIPPED {test}: {python} has no gi (sudo apt install python3-gi gir1.2-gstreamer-1.0)"
        );
        return;
    }
    let mut cmd = Command::new(python);
    cmd.arg(root().join("examples/live_prompt.py"));
    if let Some(out) = run(test, cmd) {
        check(&out);
    }
}
