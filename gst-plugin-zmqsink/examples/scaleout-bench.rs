// SPDX-License-Identifier: MPL-2.0
//! Scale-out benchmark: throughput of one primary with 1 and 2 workers, and with a third,
//! artificially slow worker added, on 127.0.0.1.
//!
//! The primary (this process) dispatches pre-encoded JPEG frames as fast as the workers
//! take them (queue-policy=block) and collects the results in order. Each worker is a
//! gst-launch-1.0 process: `zmqworkersrc ! jpegdec ! i2itransform threads=1 ! zmqmsgpacksink`.
//! Throughput is counted from the frames' entry times, once the first tenth (warm-up) has
//! passed. Every run must deliver all frames in order.
//!
//!     cargo build --release -p gst-plugin-i2i -p gst-plugin-zmqsink
//!     cargo run --release -p gst-plugin-zmqsink --example scaleout-bench -- --model models/demo

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

const USAGE: &str = "\
Usage: scaleout-bench [OPTIONS]

  --model DIR        model for i2itransform (default models/demo)
  --frames N         frames per run (default 150)
  --size N           frame width and height (default 512)
  --threads N        ONNX Runtime threads per worker (default 1)
  --batch-size N     i2itransform batch size and frames per job (default 1)
  --slow-ms MS       extra time per frame of the slow worker (default 300)
  --passthrough      workers only decode and encode (no i2itransform): measures the
                     scale-out machinery itself
  --runs LIST        which runs, comma-separated from 1,2,slow (default 1,2,slow)
  --plugin-path DIRS where the workers find the plugins (default: this build, target/release)
  --pin              pin worker k to CPU k (taskset): each worker is one CPU's worth, as one
                     GPU per worker machine would be
  --repeat N         rounds of all runs, interleaved; medians are compared (default 3)
  --json             print the results as one JSON object as well
";

struct Options {
    model: String,
    frames: usize,
    size: u32,
    threads: u32,
    batch: u32,
    slow_ms: u32,
    passthrough: bool,
    runs: Vec<String>,
    json: bool,
    plugin_path: Option<String>,
    pin: bool,
    repeat: usize,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        model: "models/demo".into(),
        frames: 150,
        size: 512,
        threads: 1,
        batch: 1,
        slow_ms: 300,
        passthrough: false,
        runs: vec!["1".into(), "2".into(), "slow".into()],
        json: false,
        plugin_path: None,
        pin: false,
        repeat: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or(format!("{name}: expected a positive number, found '{v}'"))
        };
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--model" => o.model = value("--model")?,
            "--frames" => o.frames = number("--frames", value("--frames")?)? as usize,
            "--size" => o.size = number("--size", value("--size")?)? as u32,
            "--threads" => o.threads = number("--threads", value("--threads")?)? as u32,
            "--batch-size" => o.batch = number("--batch-size", value("--batch-size")?)? as u32,
            "--slow-ms" => o.slow_ms = number("--slow-ms", value("--slow-ms")?)? as u32,
            "--passthrough" => o.passthrough = true,
            "--json" => o.json = true,
            "--pin" => o.pin = true,
            "--repeat" => o.repeat = number("--repeat", value("--repeat")?)? as usize,
            "--plugin-path" => o.plugin_path = Some(value("--plugin-path")?),
            "--runs" => {
                o.runs = value("--runs")?
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .collect();
                if let Some(bad) = o
                    .runs
                    .iter()
                    .find(|r| !["1", "2", "slow"].contains(&r.as_str()))
                {
                    return Err(format!("--runs: unknown run '{bad}' (use 1, 2, slow)"));
                }
            }
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    if o.frames < 20 {
        return Err("--frames: use at least 20".into());
    }
    Ok(o)
}

/// The workers' plugin path: `--plugin-path`, else target/release, where this example's
/// build put the plugins (it runs from target/release/examples).
fn plugin_path(o: &Options) -> Result<String, String> {
    let path = match &o.plugin_path {
        Some(p) => p.clone(),
        None => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            exe.parent()
                .and_then(|p| p.parent())
                .ok_or("cannot find the target directory")?
                .to_string_lossy()
                .into_owned()
        }
    };
    let mut need = vec!["libgstzmqsink.so"];
    if !o.passthrough {
        need.push("libgsti2i.so");
    }
    let modified = |p: PathBuf| p.metadata().ok()?.modified().ok();
    for lib in need {
        let Some(dir) = path
            .split(':')
            .map(PathBuf::from)
            .find(|d| d.join(lib).exists())
        else {
            return Err(format!(
                "{lib} not found in {path}: build the plugins first (cargo build --release -p gst-plugin-i2i -p gst-plugin-zmqsink)"
            ));
        };
        // `cargo run --example` rebuilds the library in deps/ only: the workers would run
        // an older copy.
        if let (Some(used), Some(built)) = (
            modified(dir.join(lib)),
            modified(dir.join("deps").join(lib)),
        ) && built > used
        {
            return Err(format!(
                "{} is older than {}: run cargo build --release -p gst-plugin-i2i -p gst-plugin-zmqsink",
                dir.join(lib).display(),
                dir.join("deps").join(lib).display()
            ));
        }
    }
    Ok(path)
}

fn jpegs(n: usize, size: u32) -> Result<Vec<gst::Buffer>, String> {
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers={n} pattern=ball ! video/x-raw,width={size},height={size} \
         ! jpegenc quality=90 ! appsink name=out sync=false"
    ))
    .map_err(|e| e.to_string())?
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Ok(s) = sink.pull_sample() {
        out.push(s.buffer_owned().unwrap());
    }
    let _ = pipeline.set_state(gst::State::Null);
    Ok(out)
}

struct Worker(Child);

impl Worker {
    /// CPU seconds (user + system) the worker process used so far.
    fn cpu_seconds(&self) -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())) else {
            return 0.0;
        };
        // After the command name (in parentheses), utime and stime are fields 12 and 13.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return 0.0;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // Clock ticks are 1/100 s on Linux (USER_HZ).
        (ticks(11) + ticks(12)) / 100.0
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // SIGINT-like stop is not needed: the run is over; kill and reap.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_worker(
    o: &Options,
    dir: &str,
    d: &str,
    c: &str,
    name: &str,
    slow: bool,
    cpu: usize,
) -> Result<Worker, String> {
    let mut desc = format!(
        "zmqworkersrc endpoint={d} client-name={name} batch-size={} ! jpegdec",
        o.batch
    );
    if slow {
        desc += &format!(" ! identity sleep-time={}", u64::from(o.slow_ms) * 1000);
    }
    if o.passthrough {
        desc += " ! videoconvert";
    } else {
        desc += &format!(
            " ! i2itransform model={} batch-size={} threads={} width={} height={}",
            o.model, o.batch, o.threads, o.size, o.size
        );
    }
    desc += &format!(" ! zmqmsgpacksink endpoint={c} bind=false socket-type=push sync=false");
    // One registry for all runs (GStreamer replaces it atomically), not one file per run.
    let registry = std::env::temp_dir().join("scaleout-bench-registry.bin");
    let mut cmd = if o.pin {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(cpu.to_string()).arg("gst-launch-1.0");
        c
    } else {
        Command::new("gst-launch-1.0")
    };
    let child = cmd
        .arg("-q")
        .args(desc.split_whitespace())
        .env("GST_PLUGIN_PATH", dir)
        .env("GST_REGISTRY", registry)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start gst-launch-1.0: {e}"))?;
    Ok(Worker(child))
}

struct RunResult {
    name: String,
    workers: usize,
    fps: f64,
    delivered: usize,
    missing: u64,
    late: u64,
    per_worker: Vec<(String, u64)>,
    /// Worker CPU time per delivered frame (ms), start-up included.
    cpu_ms_per_frame: f64,
}

fn run(
    o: &Options,
    dir: &str,
    frames: &[gst::Buffer],
    fast: usize,
    slow: bool,
) -> Result<RunResult, String> {
    let group = format!("bench-{}-{fast}-{slow}", std::process::id());
    let desc = format!(
        "appsrc name=src is-live=false format=time block=true max-buffers=4 \
           caps=image/jpeg,width={s},height={s},framerate=0/1 \
         ! zmqdispatchsink name=d endpoint=tcp://127.0.0.1:* sync=false max-queue=8 group={group} \
         zmqcollectsrc name=c endpoint=tcp://127.0.0.1:* playout-delay=3000 max-queue=100000 group={group} \
         ! appsink name=out sync=false",
        s = o.size
    );
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| e.to_string())?
        .downcast::<gst::Pipeline>()
        .unwrap();
    let d = pipeline.by_name("d").unwrap();
    let c = pipeline.by_name("c").unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let sink = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let outs: Arc<Mutex<Vec<(u64, i64)>>> = Arc::new(Mutex::new(Vec::new()));
    let o2 = outs.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let b = sample.buffer().ok_or(gst::FlowError::Error)?;
                let ts = b
                    .iter_meta::<gst::ReferenceTimestampMeta>()
                    .next()
                    .map(|m| (m.timestamp().nseconds() / 1000) as i64)
                    .unwrap_or(0);
                o2.lock().unwrap().push((b.offset(), ts));
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline
        .set_state(gst::State::Paused)
        .map_err(|e| format!("primary: {e}"))?;
    let dep = d.property::<Option<String>>("last-endpoint").unwrap();
    let cep = c.property::<Option<String>>("last-endpoint").unwrap();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut workers = Vec::new();
    for i in 0..fast {
        let name = format!("fast{i}");
        workers.push(spawn_worker(o, dir, &dep, &cep, &name, false, i % cpus)?);
    }
    if slow {
        workers.push(spawn_worker(o, dir, &dep, &cep, "slow", true, fast % cpus)?);
    }
    let t0 = Instant::now();
    loop {
        let n = d
            .property::<gst::Structure>("stats")
            .get::<u64>("workers")
            .unwrap();
        if n as usize == workers.len() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "only {n} of {} workers joined within 60 s",
                workers.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("primary: {e}"))?;
    for i in 0..o.frames {
        let mut b = frames[i % frames.len()].copy();
        b.get_mut().unwrap().set_pts(gst::ClockTime::NONE);
        src.push_buffer(b).map_err(|e| format!("push: {e:?}"))?;
    }
    let _ = src.end_of_stream();
    let bus = pipeline.bus().unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64)) else {
            return Err("no end of stream within 600 s".into());
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                return Err(format!("primary: {} ({:?})", e.error(), e.debug()));
            }
            // Lost workers and losses: shown, they explain a slow run.
            gst::MessageView::Warning(w) => eprintln!(
                "    warning: {}",
                w.debug()
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| w.error().to_string())
            ),
            _ => {}
        }
    }
    let dstats = d.property::<gst::Structure>("stats");
    let cstats = c.property::<gst::Structure>("stats");
    let cpu: f64 = workers.iter().map(Worker::cpu_seconds).sum();
    let _ = pipeline.set_state(gst::State::Null);
    drop(workers);

    let outs = outs.lock().unwrap().clone();
    if outs.windows(2).any(|p| p[1].0 <= p[0].0) {
        return Err("output out of order".into());
    }
    let skip = o.frames / 10;
    let steady: Vec<&(u64, i64)> = outs.iter().filter(|(i, _)| *i as usize >= skip).collect();
    let fps = if steady.len() >= 2 {
        let span_us = steady.last().unwrap().1 - steady[0].1;
        (steady.len() - 1) as f64 / (span_us as f64 / 1e6)
    } else {
        0.0
    };
    let per_worker = gstzmqsink::scaleout::zmqdispatchsink::worker_list(&dstats)
        .iter()
        .map(|s| {
            (
                s.get::<String>("name").unwrap(),
                s.get::<u64>("frames").unwrap(),
            )
        })
        .collect();
    Ok(RunResult {
        name: match (fast, slow) {
            (n, false) => format!("{n} worker{}", if n == 1 { "" } else { "s" }),
            (n, true) => format!("{n} workers + 1 slow (+{} ms/frame)", o.slow_ms),
        },
        workers: fast + usize::from(slow),
        fps,
        delivered: outs.len(),
        missing: cstats.get::<u64>("missing").unwrap(),
        late: cstats.get::<u64>("dropped-late").unwrap(),
        per_worker,
        cpu_ms_per_frame: cpu * 1000.0 / outs.len().max(1) as f64,
    })
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("scaleout-bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = gst::init() {
        eprintln!("scaleout-bench: GStreamer does not initialise: {e}");
        std::process::exit(1);
    }
    if let Err(e) = gstzmqsink::plugin_register_static() {
        eprintln!("scaleout-bench: cannot register the plugin: {e}");
        std::process::exit(1);
    }
    let dir = match plugin_path(&o) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("scaleout-bench: {e}");
            std::process::exit(1);
        }
    };
    if !o.passthrough && !std::path::Path::new(&o.model).is_dir() {
        eprintln!(
            "scaleout-bench: model directory '{}' not found (scripts/setup.sh makes models/demo)",
            o.model
        );
        std::process::exit(1);
    }
    let frames = match jpegs(30, o.size) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("scaleout-bench: cannot make test frames: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "scale-out benchmark: {} frames of {}x{} per run, {}, {} ONNX Runtime thread(s) per worker, batch {}, on {} CPUs",
        o.frames,
        o.size,
        o.size,
        if o.passthrough {
            "passthrough workers".to_string()
        } else {
            format!("i2itransform {}", o.model)
        },
        o.threads,
        o.batch,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let mut results = Vec::new();
    for round in 0..o.repeat {
        println!("round {}:", round + 1);
        for r in &o.runs {
            let (fast, slow) = match r.as_str() {
                "1" => (1, false),
                "2" => (2, false),
                _ => (2, true),
            };
            match run(&o, &dir, &frames, fast, slow) {
                Ok(res) => {
                    println!(
                        "  {:<38} {:>6.2} frames/s  delivered {}/{} (missing {}, late {})  worker CPU {:.1} ms/frame  per worker: {}",
                        res.name,
                        res.fps,
                        res.delivered,
                        o.frames,
                        res.missing,
                        res.late,
                        res.cpu_ms_per_frame,
                        res.per_worker
                            .iter()
                            .map(|(n, f)| format!("{n} {f}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    results.push(res);
                }
                Err(e) => {
                    eprintln!("scaleout-bench: run '{r}' failed: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    let median = |mut v: Vec<f64>| -> Option<f64> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        Some(v[v.len() / 2])
    };
    let fps_of = |n: &str| {
        median(
            results
                .iter()
                .filter(|r| r.name == n)
                .map(|r| r.fps)
                .collect(),
        )
    };
    let one = fps_of("1 worker");
    let two = fps_of("2 workers");
    let slow_runs: Vec<&RunResult> = results.iter().filter(|r| r.name.contains("slow")).collect();
    println!("medians of {} round(s):", o.repeat);
    for (name, fps) in [("1 worker", one), ("2 workers", two)] {
        if let Some(f) = fps {
            println!("  {name:<38} {f:>6.2} frames/s");
        }
    }
    // Frames a worker still holds in its stream batch when the input ends are counted as
    // missing (see docs/scaleout.md); everything else must arrive.
    let mut ok = results
        .iter()
        .all(|r| r.delivered as u64 + r.missing == o.frames as u64 && r.late == 0);
    if let (Some(one), Some(two)) = (one, two) {
        let ratio = two / one;
        let pass = ratio >= 1.7;
        ok &= pass;
        println!(
            "2 workers / 1 worker: {ratio:.2}x (target >= 1.70): {}",
            if pass { "PASS" } else { "FAIL" }
        );
    }
    if let (Some(two), false) = (two, slow_runs.is_empty()) {
        // The fast workers' own throughput with the slow one beside them.
        let fast_fps_of = |s: &RunResult| {
            let fast_frames: u64 = s
                .per_worker
                .iter()
                .filter(|(n, _)| n != "slow")
                .map(|(_, f)| f)
                .sum();
            s.fps * fast_frames as f64 / o.frames as f64
        };
        let total = median(slow_runs.iter().map(|s| s.fps).collect()).unwrap_or(0.0);
        let fast_fps = median(slow_runs.iter().map(|s| fast_fps_of(s)).collect()).unwrap_or(0.0);
        let ratio = fast_fps / two;
        let pass = ratio >= 0.9;
        ok &= pass;
        println!(
            "with a slow worker: total {total:.2} frames/s ({:.2}x of 2 workers), the 2 fast ones {fast_fps:.2} frames/s ({ratio:.2}x of 2 workers alone; target >= 0.90): {}",
            total / two,
            if pass { "PASS" } else { "FAIL" }
        );
    }
    if o.json {
        let runs: Vec<String> = results
            .iter()
            .map(|r| {
                format!(
                    "{{\"run\":\"{}\",\"workers\":{},\"fps\":{:.3},\"delivered\":{},\"missing\":{},\"late\":{}}}",
                    r.name, r.workers, r.fps, r.delivered, r.missing, r.late
                )
            })
            .collect();
        println!("{{\"frames\":{},\"runs\":[{}]}}", o.frames, runs.join(","));
    }
    std::process::exit(if ok { 0 } else { 1 });
}
