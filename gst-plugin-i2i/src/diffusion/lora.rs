// SPDX-License-Identifier: MPL-2.0
//! LoRA styles switched live: a UNet exported with the LoRA matrices of its projections as
//! inputs (`P.lora_A.weight` `[in, r]`, `P.lora_B.weight` `[r, out]`, the way Olive exports
//! multi-LoRA models, docs/models.md "LoRA models") computes `x W + b + (x A) B`; the engine
//! binds the tensors of the active adapter files (`runtime::adapter_file`) as ordinary
//! inputs on every UNet call, so a style changes with no session reload and works with
//! IoBinding (ONNX Runtime's own active adapters do not).
//!
//! Several LoRAs at once are bound side by side along the rank (`A = [A_1 | A_2]`,
//! `B = [s_1 B_1 ; s_2 B_2]`, i.e. `W + sum s_i A_i B_i`); a LoRA that does not touch P
//! gives zero blocks; no LoRA is zeros of rank 1. A change with `transition-frames` binds
//! the old list at `(1 - t)` times its scales beside the new at `t` times theirs.
//! The rules are those of tests/python/reference_style.py (`lora_slots`, `check_adapter`,
//! `lora_feeds`, `fade_active`; the list syntax, `parse_lora_list`, is i2i_core::settings::lora).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use i2i_core::settings::blend::Fade;

use crate::runtime::adapter_file::{self, AdapterFile, FLOAT16, FLOAT32, type_name};
use crate::runtime::error::EngineError;
use crate::runtime::graph::{Elem, Feed, Graph};

const A_SUFFIX: &str = ".lora_A.weight";
const B_SUFFIX: &str = ".lora_B.weight";

pub use i2i_core::settings::lora::{
    format_lora_list as format_list, parse_lora_list as parse_list,
};

/// One projection with LoRA inputs.
#[derive(Debug, Clone)]
struct Slot {
    module: String,
    a_name: String,
    b_name: String,
    inp: usize,
    out: usize,
    elem: Elem,
    /// The rank if the graph fixes it (then every binding has exactly that rank).
    fixed_rank: Option<usize>,
}

/// An adapter file checked against the UNet: its parameters and rank.
#[derive(Debug)]
struct Lora {
    file: Arc<AdapterFile>,
    rank: usize,
}

type Active = Vec<(Arc<Lora>, f64)>;

/// A LoRA change fading in over `transition-frames`.
#[derive(Debug)]
struct LoraFade {
    from: Active,
    to: Active,
    fade: Fade,
}

/// The LoRA inputs of a UNet and what is bound to them.
#[derive(Debug)]
pub struct UnetLora {
    file: PathBuf,
    slots: Vec<Slot>,
    /// The list asked for (what [`UnetLora::list`] reports).
    list: Vec<(PathBuf, f32)>,
    /// What the next calls bind (the target, or the fade's present mix).
    active: Active,
    fade: Option<LoraFade>,
    /// The checked files of the list bound now (checked again only when read again).
    bound: HashMap<PathBuf, Arc<Lora>>,
    /// Where the parsed files come from.
    adapters: AdapterCache,
    /// The files are read by others (see [`AdapterCache`]): [`UnetLora::ready`] asks a
    /// loader thread for what is not in memory instead of this thread reading it.
    shared: bool,
    /// Per slot: A `[in, R]` then B `[R, out]`, row-major; R the bound rank.
    feeds: Vec<(Vec<f32>, Vec<f32>)>,
    rank: usize,
    /// Changes whenever the feeds do (the bound tensors are uploaded again then only).
    key: u64,
}

/// A LoRA list checked and read, ready to be bound ([`UnetLora::commit`]).
pub struct Prepared {
    list: Vec<(PathBuf, f32)>,
    active: Active,
    files: Vec<(PathBuf, Arc<Lora>)>,
}

impl UnetLora {
    /// The LoRA inputs of `graph` (None when it has none). A `lora_A` input without its
    /// `lora_B`, or shapes other than `[in, r]` / `[r, out]` with fixed in and out, are
    /// refused naming the input.
    pub fn bind(graph: &Graph) -> Result<Option<UnetLora>, EngineError> {
        let mut slots = Vec::new();
        for a in &graph.inputs {
            let Some(module) = a.name.strip_suffix(A_SUFFIX) else {
                continue;
            };
            let b_name = format!("{module}{B_SUFFIX}");
            let Some(b) = graph.input(&b_name) else {
                return Err(EngineError::tensor(
                    &graph.file,
                    &a.name,
                    format!("an input {b_name} beside it (a UNet with LoRA inputs)"),
                    "none",
                ));
            };
            let (Some(inp), Some(out)) = (a.dim(0), b.dim(1)) else {
                return Err(EngineError::tensor(
                    &graph.file,
                    &a.name,
                    "[in, r] and lora_B [r, out] with fixed in and out",
                    format!("{a} and {b}"),
                ));
            };
            if a.rank() != 2 || b.rank() != 2 || !a.elem.is_float() || b.elem != a.elem {
                return Err(EngineError::tensor(
                    &graph.file,
                    &a.name,
                    "float [in, r] and lora_B of the same type [r, out]",
                    format!("{a} and {b}"),
                ));
            }
            let fixed_rank = a.dim(1).or(b.dim(0));
            slots.push(Slot {
                module: module.to_string(),
                a_name: a.name.clone(),
                b_name,
                inp,
                out,
                elem: a.elem,
                fixed_rank,
            });
        }
        if slots.iter().any(|s| s.fixed_rank.is_some_and(|r| r == 0)) {
            return Err(EngineError::tensor(
                &graph.file,
                "lora_A",
                "a rank of at least 1",
                "0",
            ));
        }
        if slots.is_empty() {
            return Ok(None);
        }
        let mut l = UnetLora {
            file: graph.file.clone(),
            slots,
            list: Vec::new(),
            active: Vec::new(),
            fade: None,
            bound: HashMap::new(),
            adapters: AdapterCache::default(),
            shared: false,
            feeds: Vec::new(),
            rank: 0,
            key: 0,
        };
        l.rebuild()
            .map_err(|e| EngineError::tensor(&l.file, "lora_A", "", e))?;
        Ok(Some(l))
    }

    /// The names of the LoRA inputs (for the check that every input is fed).
    pub fn input_names(&self) -> impl Iterator<Item = &str> {
        self.slots
            .iter()
            .flat_map(|s| [s.a_name.as_str(), s.b_name.as_str()])
    }

    /// The number of projections with LoRA inputs.
    pub fn projections(&self) -> usize {
        self.slots.len()
    }

    /// The list asked for last.
    pub fn list(&self) -> &[(PathBuf, f32)] {
        &self.list
    }

    /// Takes the parsed files from `adapters` from now on, read there by other threads:
    /// a file not in memory yet is asked of a loader thread by [`UnetLora::ready`].
    pub fn share_adapters(&mut self, adapters: &AdapterCache) {
        self.adapters = adapters.clone();
        self.shared = true;
    }

    /// Whether every file of `list` is in memory (read, well or not), so that
    /// [`UnetLora::prepare`] does not touch the file system. With shared adapters, the
    /// files that are not are handed to a loader thread (the switch waits for a later
    /// call); otherwise `prepare` reads them itself and this is always true.
    pub fn ready(&self, list: &[(PathBuf, f32)]) -> bool {
        if !self.shared {
            return true;
        }
        let missing: Vec<PathBuf> = list
            .iter()
            .map(|(p, _)| p)
            .filter(|p| !self.bound.contains_key(*p) && self.adapters.get(p).is_none())
            .cloned()
            .collect();
        if missing.is_empty() {
            return true;
        }
        // Without a loader thread the next call asks again.
        let _ = self.adapters.load_in_background(missing);
        false
    }

    /// Reads and checks the files of `list` against the UNet; changes nothing. The error
    /// names the file and its first mismatch. With shared adapters the files come from
    /// memory (see [`UnetLora::ready`]).
    pub fn prepare(&self, list: &[(PathBuf, f32)]) -> Result<Prepared, EngineError> {
        let mut files = Vec::new();
        let mut active = Vec::new();
        for (path, scale) in list {
            let lora = self.load(path)?;
            files.push((path.clone(), lora.clone()));
            active.push((lora, f64::from(*scale)));
        }
        let total: usize = active.iter().map(|(l, _)| l.rank).sum();
        if let Some(r) = self.slots.iter().find_map(|s| s.fixed_rank)
            && total > r
        {
            return Err(EngineError::argument(
                "lora",
                format!(
                    "LoRAs of rank {r} at most in all ({} fixes the rank of its LoRA inputs)",
                    self.file.display()
                ),
                format!("rank {total} ({})", format_list(list)),
            ));
        }
        Ok(Prepared {
            list: list.to_vec(),
            active,
            files,
        })
    }

    /// Binds a prepared list from the next call: at once, or faded in over
    /// `transition_frames` frames.
    pub fn commit(&mut self, p: Prepared, transition_frames: u32) {
        let from = std::mem::take(&mut self.active);
        self.bound = p.files.into_iter().collect();
        self.list = p.list;
        if transition_frames == 0 || from.is_empty() && p.active.is_empty() {
            self.fade = None;
            self.active = p.active;
        } else {
            self.fade = Some(LoraFade {
                from,
                to: p.active,
                fade: Fade::new(transition_frames.saturating_add(1)),
            });
            self.active = self
                .fade
                .as_ref()
                .map(|f| fade_active(&f.from, &f.to, 0.0))
                .unwrap_or_default();
        }
        // The shapes were checked by `prepare`; an error here would be a bug, reported
        // at the next call by the graph's shape check.
        let _ = self.rebuild();
    }

    /// Advances a fade by the `frames` frames of one model call (they share one mix).
    pub fn step(&mut self, frames: usize) {
        let Some(f) = self.fade.as_mut() else { return };
        let mut t = f.fade.t();
        for _ in 0..frames.max(1) {
            t = f.fade.step();
        }
        self.active = fade_active(&f.from, &f.to, t);
        if f.fade.finished() {
            self.fade = None;
        }
        let _ = self.rebuild();
    }

    /// The checked file at `path`: from the shared cache as last read there (no look at
    /// the file system), else read here (the direct engine, or a file a loader dropped in
    /// the instant since [`UnetLora::ready`]).
    fn load(&self, path: &Path) -> Result<Arc<Lora>, EngineError> {
        let in_memory = if self.shared {
            self.adapters.get(path)
        } else {
            None
        };
        let file = match (in_memory, self.bound.get(path)) {
            (Some(f), _) => f?,
            (None, Some(l)) if self.shared => return Ok(l.clone()),
            (None, _) => self.adapters.load(path)?,
        };
        if let Some(l) = self.bound.get(path)
            && Arc::ptr_eq(&l.file, &file)
        {
            return Ok(l.clone());
        }
        let rank = self
            .check(&file, path)
            .map_err(|e| EngineError::invalid(path, e))?;
        Ok(Arc::new(Lora { file, rank }))
    }

    /// Refuses an adapter that does not fit the UNet, naming the first mismatch; returns
    /// its rank (the reference's `check_adapter`).
    fn check(&self, file: &AdapterFile, path: &Path) -> Result<usize, String> {
        let unet = self.file.display();
        let mut rank = 0;
        for p in &file.parameters {
            let name = &p.name;
            let (module, is_a) = if let Some(m) = name.strip_suffix(A_SUFFIX) {
                (m, true)
            } else if let Some(m) = name.strip_suffix(B_SUFFIX) {
                (m, false)
            } else {
                return Err(format!(
                    "parameter {name} is not a LoRA matrix (expected NAME{A_SUFFIX} or NAME{B_SUFFIX})"
                ));
            };
            let Some(slot) = self.slots.iter().find(|s| s.module == module) else {
                return Err(format!(
                    "parameter {name}: the UNet ({unet}) has no input of that name"
                ));
            };
            let (want, axis_io, axis_r) = if is_a {
                (slot.inp, 0, 1)
            } else {
                (slot.out, 1, 0)
            };
            if p.dims.len() != 2 || p.dims[axis_io] != want {
                let expect = if is_a {
                    format!("[{want}, r]")
                } else {
                    format!("[r, {want}]")
                };
                return Err(format!(
                    "parameter {name}: shape {:?}, the UNet takes {expect}",
                    p.dims
                ));
            }
            let elem = match slot.elem {
                Elem::F16 => FLOAT16,
                _ => FLOAT32,
            };
            if p.data_type != elem {
                return Err(format!(
                    "parameter {name}: {}, the UNet takes {}",
                    type_name(p.data_type),
                    type_name(elem)
                ));
            }
            let other = if is_a {
                format!("{module}{B_SUFFIX}")
            } else {
                format!("{module}{A_SUFFIX}")
            };
            let Some(o) = file.get(&other) else {
                return Err(format!("parameter {name} has no {other} beside it"));
            };
            let r = p.dims[axis_r];
            if is_a && o.dims.first() != Some(&r) {
                return Err(format!(
                    "{name} has rank {r}, {other} {}",
                    o.dims.first().copied().unwrap_or(0)
                ));
            }
            rank = rank.max(r);
        }
        if rank == 0 {
            return Err(format!("{}: no LoRA parameters", path.display()));
        }
        Ok(rank)
    }

    /// The feeds of the active list (the reference's `lora_feeds`).
    fn rebuild(&mut self) -> Result<(), String> {
        let total: usize = self.active.iter().map(|(l, _)| l.rank).sum();
        let fixed = self.slots.iter().find_map(|s| s.fixed_rank);
        let rank = fixed.unwrap_or(total.max(1));
        if total > rank {
            return Err(format!("rank {total} is above the graph's {rank}"));
        }
        self.feeds.resize_with(self.slots.len(), Default::default);
        for (slot, (a, b)) in self.slots.iter().zip(self.feeds.iter_mut()) {
            a.clear();
            a.resize(slot.inp * rank, 0.0);
            b.clear();
            b.resize(rank * slot.out, 0.0);
            let mut at = 0;
            for (lora, scale) in &self.active {
                let pa = lora.file.get(&slot.a_name);
                let pb = lora.file.get(&slot.b_name);
                if let (Some(pa), Some(pb)) = (pa, pb) {
                    let r = pa.dims[1];
                    for i in 0..slot.inp {
                        a[i * rank + at..i * rank + at + r]
                            .copy_from_slice(&pa.data[i * r..(i + 1) * r]);
                    }
                    let s = *scale as f32;
                    for (dst, src) in b[at * slot.out..(at + r) * slot.out]
                        .iter_mut()
                        .zip(&pb.data)
                    {
                        *dst = src * s;
                    }
                }
                at += lora.rank;
            }
        }
        self.rank = rank;
        self.key = self.key.wrapping_add(1);
        Ok(())
    }

    /// The shapes of the bound tensors: per slot `[in, R]` and `[R, out]`.
    pub fn shapes(&self) -> Vec<([i64; 2], [i64; 2])> {
        let r = self.rank as i64;
        self.slots
            .iter()
            .map(|s| ([s.inp as i64, r], [r, s.out as i64]))
            .collect()
    }

    /// The feeds for one UNet call, `shapes` from [`UnetLora::shapes`].
    pub fn feeds<'a>(
        &'a self,
        shapes: &'a [([i64; 2], [i64; 2])],
        out: &mut Vec<(&'a str, &'a [i64], Feed<'a>)>,
    ) {
        for ((slot, (a, b)), (sa, sb)) in self.slots.iter().zip(&self.feeds).zip(shapes) {
            out.push((slot.a_name.as_str(), &sa[..], Feed::Keyed(a, self.key)));
            out.push((slot.b_name.as_str(), &sb[..], Feed::Keyed(b, self.key)));
        }
    }
}

/// A file's size and modification time when read (read again when they change).
type Stamp = (u64, Option<SystemTime>);

/// What reading one file gave: its parameters, or the error naming the file.
type Loaded = Result<Arc<AdapterFile>, EngineError>;

/// Parsed adapter files shared by the threads that read them and the inference thread
/// that binds them, keyed by path (and checked against size + modification time when
/// read again). `i2itransform` reads a new `lora` list where it is set (the property
/// setter's thread, the settings pad's streaming thread, or a loader thread for anything
/// else) and its engine, given the cache with [`Engine::share_adapters`], takes the parsed
/// files from here: the inference thread never touches the file system for a switch, a
/// 100 MB LoRA costs it nothing but the binding.
///
/// [`Engine::share_adapters`]: super::Engine::share_adapters
#[derive(Clone, Debug, Default)]
pub struct AdapterCache {
    inner: Arc<Mutex<CacheInner>>,
}

#[derive(Debug, Default)]
struct CacheInner {
    entries: HashMap<PathBuf, Entry>,
    /// Files a loader thread reads now (asked once, not once a batch).
    loading: HashSet<PathBuf>,
    /// Files read so far (for tests and benchmarks).
    reads: u64,
    tick: u64,
}

#[derive(Debug)]
struct Entry {
    /// None: the file could not be looked at (missing); looked at again next time.
    stamp: Option<Stamp>,
    file: Loaded,
    used: u64,
}

/// Files no engine binds that the cache keeps (a show switches among a few styles).
const KEEP_UNUSED: usize = 4;

impl AdapterCache {
    /// The file at `path`, read and parsed unless it was already with the same size and
    /// modification time. Reads on the calling thread: never call it on the inference
    /// thread. A missing or damaged file gives the error the engine reports, naming it.
    pub fn load(&self, path: &Path) -> Loaded {
        let stamp = std::fs::metadata(path).map(|m| (m.len(), m.modified().ok()));
        {
            let mut c = self.inner.lock().unwrap();
            c.tick += 1;
            let tick = c.tick;
            if let (Ok(stamp), Some(e)) = (&stamp, c.entries.get_mut(path))
                && e.stamp.as_ref() == Some(stamp)
            {
                e.used = tick;
                return e.file.clone();
            }
        }
        let (stamp, loaded) = match stamp {
            Err(e) => (
                None,
                Err(EngineError::missing(
                    path,
                    format!("a LoRA adapter file ({e})"),
                )),
            ),
            Ok(stamp) => (
                Some(stamp),
                adapter_file::read(path)
                    .map(Arc::new)
                    .map_err(|e| EngineError::invalid(path, e)),
            ),
        };
        let file = loaded;
        let mut c = self.inner.lock().unwrap();
        c.reads += 1;
        c.tick += 1;
        let used = c.tick;
        c.entries.insert(
            path.to_path_buf(),
            Entry {
                stamp,
                file: file.clone(),
                used,
            },
        );
        c.forget_unused();
        file
    }

    /// Reads the files of a `lora` list (`FILE[:SCALE],...`) that are new or changed, on
    /// the calling thread; a list that does not parse is left to whoever applies it.
    pub fn load_list(&self, text: &str) {
        if let Ok(list) = parse_list(text) {
            for (path, _) in list {
                let _ = self.load(&path);
            }
        }
    }

    /// Reads `paths` on a loader thread of their own (one at a time, each asked once
    /// while it is read); returns at once.
    pub fn load_in_background(&self, paths: Vec<PathBuf>) -> std::io::Result<()> {
        let todo: Vec<PathBuf> = {
            let mut c = self.inner.lock().unwrap();
            paths
                .into_iter()
                .filter(|p| c.loading.insert(p.clone()))
                .collect()
        };
        if todo.is_empty() {
            return Ok(());
        }
        let (cache, asked) = (self.clone(), todo.clone());
        let spawned = std::thread::Builder::new()
            .name("i2i-lora-load".into())
            .spawn(move || {
                for p in todo {
                    let _ = cache.load(&p);
                    cache.inner.lock().unwrap().loading.remove(&p);
                }
            });
        if spawned.is_err() {
            // No thread: the paths are asked again at the next batch.
            let mut c = self.inner.lock().unwrap();
            for p in &asked {
                c.loading.remove(p);
            }
        }
        spawned.map(|_| ())
    }

    /// The file at `path` as last read, without looking at the file system.
    fn get(&self, path: &Path) -> Option<Loaded> {
        let mut c = self.inner.lock().unwrap();
        c.tick += 1;
        let tick = c.tick;
        c.entries.get_mut(path).map(|e| {
            e.used = tick;
            e.file.clone()
        })
    }

    /// How many files were read (successfully or not) since the cache was made.
    pub fn reads(&self) -> u64 {
        self.inner.lock().unwrap().reads
    }
}

impl CacheInner {
    /// Drops the least recently used files beyond [`KEEP_UNUSED`] that nobody holds (an
    /// engine holds the files it binds, and those it is about to).
    fn forget_unused(&mut self) {
        let mut unused: Vec<(u64, PathBuf)> = self
            .entries
            .iter()
            .filter(|(_, e)| !matches!(&e.file, Ok(f) if Arc::strong_count(f) > 1))
            .map(|(p, e)| (e.used, p.clone()))
            .collect();
        if unused.len() <= KEEP_UNUSED {
            return;
        }
        unused.sort();
        for (_, p) in &unused[..unused.len() - KEEP_UNUSED] {
            self.entries.remove(p);
        }
    }
}

/// The (adapter, scale) list bound at fade position t (the reference's `fade_active`).
fn fade_active(from: &Active, to: &Active, t: f64) -> Active {
    if t >= 1.0 {
        return to.clone();
    }
    if t <= 0.0 {
        return from.clone();
    }
    from.iter()
        .map(|(l, s)| (l.clone(), (1.0 - t) * s))
        .chain(to.iter().map(|(l, s)| (l.clone(), t * s)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(rank: i64) -> Vec<u8> {
        let a: Vec<u8> = (0..2 * rank)
            .flat_map(|v| (v as f32).to_le_bytes())
            .collect();
        adapter_file::write_bytes(&[
            ("p.lora_A.weight", &[2, rank], FLOAT32, &a),
            ("p.lora_B.weight", &[rank, 2], FLOAT32, &a),
        ])
    }

    #[test]
    fn the_cache_reads_a_file_once_until_it_changes() {
        let dir = std::env::temp_dir().join(format!("i2i-adapter-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.onnx_adapter");
        let cache = AdapterCache::default();
        // Missing: the engine's error, looked at again next time.
        let e = cache.load(&path).unwrap_err().to_string();
        assert!(e.contains("a.onnx_adapter"), "{e}");
        assert!(cache.get(&path).is_some_and(|f| f.is_err()));
        std::fs::write(&path, adapter(1)).unwrap();
        let first = cache.load(&path).unwrap();
        assert_eq!(first.get("p.lora_A.weight").unwrap().dims, vec![2, 1]);
        let reads = cache.reads();
        assert!(Arc::ptr_eq(&first, &cache.load(&path).unwrap()));
        cache.load_list(&format!("{}:0.5", path.display()));
        assert_eq!(cache.reads(), reads, "unchanged: not read again");
        // Another size: read again.
        std::fs::write(&path, adapter(3)).unwrap();
        let second = cache.load(&path).unwrap();
        assert_eq!(second.get("p.lora_A.weight").unwrap().dims, vec![2, 3]);
        assert_eq!(cache.reads(), reads + 1);
        // Damaged: the reader's error, naming the file.
        let cut = dir.join("cut.onnx_adapter");
        std::fs::write(&cut, &adapter(1)[..20]).unwrap();
        let e = cache.load(&cut).unwrap_err().to_string();
        assert!(e.contains("cut.onnx_adapter"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_somebody_holds_are_kept_and_others_beyond_a_few_dropped() {
        let dir = std::env::temp_dir().join(format!("i2i-adapter-keep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cache = AdapterCache::default();
        let paths: Vec<PathBuf> = (0..KEEP_UNUSED + 3)
            .map(|i| {
                let p = dir.join(format!("{i}.onnx_adapter"));
                std::fs::write(&p, adapter(1)).unwrap();
                p
            })
            .collect();
        let held = cache.load(&paths[0]).unwrap();
        for p in &paths[1..] {
            cache.load(p).unwrap();
        }
        assert!(cache.get(&paths[0]).is_some(), "held: kept");
        assert!(cache.get(&paths[1]).is_none(), "the oldest unused: dropped");
        assert!(cache.get(paths.last().unwrap()).is_some());
        drop(held);
        // A loader thread reads what is asked, once.
        cache.load_in_background(vec![paths[1].clone()]).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while cache.get(&paths[1]).is_none() {
            assert!(std::time::Instant::now() < deadline, "loader thread");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
