// SPDX-License-Identifier: MPL-2.0
//! CPU clocks shared by the benchmarks. Unlike wall time, CPU time hardly grows when other
//! processes load the machine, so it compares measurements fairly on a shared machine.

use std::time::Duration;

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; both clocks the callers pass exist on Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time used so far by all threads of this process, those that ended included
/// (`CLOCK_PROCESS_CPUTIME_ID`).
#[allow(dead_code)]
pub fn process_cpu() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time used so far by the calling thread (`CLOCK_THREAD_CPUTIME_ID`): with one ONNX
/// Runtime intra-op thread the model calls run on the caller, so this is what they cost,
/// whatever the machine's other threads do.
#[allow(dead_code)]
pub fn thread_cpu() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// How the engine benchmarks load a model: `size` x `size`, batch 1, on the CPU with
/// `threads` intra-op threads.
#[allow(dead_code)]
pub fn cpu_options(
    model: &std::path::Path,
    size: u32,
    threads: usize,
) -> gsti2i::diffusion::LoadOptions {
    gsti2i::diffusion::LoadOptions {
        model_dir: model.to_path_buf(),
        width: size,
        height: size,
        batch_size: 1,
        execution_provider: gsti2i::diffusion::ExecutionProvider::Cpu,
        intra_threads: threads,
        ..Default::default()
    }
}
