//! Batch operations on BPF hash maps through bpf(2): `BPF_MAP_LOOKUP_BATCH`,
//! `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH` (Linux 5.6+; LRU hash
//! maps included). aya 0.14 does not wrap them.
//!
//! Why: walking the connection table one entry at a time costs two
//! syscalls per entry (get-next-key, then lookup), seconds for a full
//! 1M-entry table on a machine whose syscalls are expensive. A batch moves
//! thousands of entries per syscall.
//!
//! Safety rests on one check: [`BatchMap::new`] asks the kernel for the
//! map's type, key size and value size and refuses a map that is not a
//! (non-per-CPU) hash map with exactly `size_of::<K>()` and
//! `size_of::<V>()`, so the kernel never writes past the buffers this
//! module hands it.

use std::{
    io,
    marker::PhantomData,
    mem,
    os::fd::{AsFd, AsRawFd},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{MapData, MapType},
    Pod,
};

// enum bpf_cmd in include/uapi/linux/bpf.h.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries asked for per lookup syscall: large enough that the syscall
/// cost vanishes, small enough that the buffers stay in cache (16 bytes of
/// key and 8 of value each for the connection table).
const LOOKUP_CHUNK: usize = 8192;

/// The kernel's `ENOTSUPP` (not in libc: it is not a userspace errno).
const ENOTSUPP: i32 = 524;

/// The `batch` member of `union bpf_attr`. The kernel accepts a shorter
/// attribute than its union and treats the rest as zero.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A hash map whose entries are `K -> V`, checked against the kernel's
/// description of it, with batch operations.
pub struct BatchMap<K, V> {
    map: MapData,
    max_entries: u32,
    _types: PhantomData<fn(K) -> V>,
}

/// True for the errors a kernel without batch operations (or without them
/// for this map type) returns: callers fall back to one entry at a time.
pub fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(ENOTSUPP)
    )
}

impl<K: Pod + Default, V: Pod + Default> BatchMap<K, V> {
    /// Takes `map` (usually a duplicate of another handle's fd, see
    /// `MapData::from_fd`) after checking its shape.
    pub fn new(map: MapData) -> Result<Self> {
        let info = map.info().context("reading the map's description")?;
        let kind = info.map_type().context("reading the map's type")?;
        if !matches!(kind, MapType::Hash | MapType::LruHash) {
            bail!("batch operations here are for (LRU) hash maps, not {kind:?}");
        }
        if info.key_size() as usize != mem::size_of::<K>()
            || info.value_size() as usize != mem::size_of::<V>()
        {
            bail!(
                "map entries are {} + {} bytes, the types {} + {}",
                info.key_size(),
                info.value_size(),
                mem::size_of::<K>(),
                mem::size_of::<V>()
            );
        }
        Ok(Self {
            max_entries: info.max_entries(),
            map,
            _types: PhantomData,
        })
    }

    /// The map's capacity (`max_entries`).
    pub fn capacity(&self) -> u32 {
        self.max_entries
    }

    fn fd(&self) -> u32 {
        self.map.fd().as_fd().as_raw_fd() as u32
    }

    /// Calls `f` on every entry; returns how many there were. Entries the
    /// data path adds or evicts meanwhile may or may not be seen, as with
    /// any walk of a live hash map; no entry is seen twice.
    pub fn for_each(&self, mut f: impl FnMut(&K, &V)) -> io::Result<u64> {
        let mut chunk = LOOKUP_CHUNK;
        let mut keys = vec![K::default(); chunk];
        let mut values = vec![V::default(); chunk];
        // The kernel's resume token: a bucket index for hash maps. Sized
        // for any map type's token (at most a key) and 8-byte aligned.
        let token_words = mem::size_of::<K>().div_ceil(8).max(1);
        let mut in_token = vec![0u64; token_words];
        let mut out_token = vec![0u64; token_words];
        let mut first = true;
        let mut total = 0u64;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { in_token.as_ptr() as u64 },
                out_batch: out_token.as_mut_ptr() as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: chunk as u32,
                map_fd: self.fd(),
                ..Default::default()
            };
            let done = match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
                Ok(()) => false,
                // The end of the map; `count` entries came with it.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
                // A bucket holds more entries than the buffers: grow them
                // and ask for the same bucket again.
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && attr.count == 0 => {
                    chunk *= 2;
                    keys.resize(chunk, K::default());
                    values.resize(chunk, V::default());
                    continue;
                }
                Err(e) => return Err(e),
            };
            let n = (attr.count as usize).min(chunk);
            for (key, value) in keys[..n].iter().zip(&values[..n]) {
                f(key, value);
            }
            total += n as u64;
            if done {
                return Ok(total);
            }
            std::mem::swap(&mut in_token, &mut out_token);
            first = false;
        }
    }

    /// Inserts or replaces `keys[i] -> values[i]` (for tests and the
    /// benchmark, which fill a table the way the data path would).
    pub fn update(&self, keys: &[K], values: &[V]) -> io::Result<()> {
        if keys.len() != values.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "as many values as keys",
            ));
        }
        let mut done = 0;
        while done < keys.len() {
            let mut attr = BatchAttr {
                keys: keys[done..].as_ptr() as u64,
                values: values[done..].as_ptr() as u64,
                count: u32::try_from(keys.len() - done).unwrap_or(u32::MAX),
                map_fd: self.fd(),
                ..Default::default()
            };
            bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
            if attr.count == 0 {
                return Err(io::Error::other("the kernel updated no entry"));
            }
            done += attr.count as usize;
        }
        Ok(())
    }

    /// Deletes `keys`; returns how many were deleted. Keys that are not in
    /// the map (evicted meanwhile) are skipped, not counted.
    pub fn delete(&self, keys: &[K]) -> io::Result<u64> {
        let mut next = 0;
        let mut deleted = 0u64;
        while next < keys.len() {
            let mut attr = BatchAttr {
                keys: keys[next..].as_ptr() as u64,
                count: u32::try_from(keys.len() - next).unwrap_or(u32::MAX),
                map_fd: self.fd(),
                ..Default::default()
            };
            // The kernel stops at the first key it cannot delete and
            // reports how many it deleted before it.
            let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
            let n = (attr.count as usize).min(keys.len() - next);
            deleted += n as u64;
            next += n;
            match result {
                Ok(()) if n == 0 => break,
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => next += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `batch` attribute of the size passed; the
    // buffers it points at are live for the call and sized for `count`
    // entries of the map's key and value sizes (checked in BatchMap::new).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            mem::size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
