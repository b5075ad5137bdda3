//! Maglev lookup-table construction.
//!
//! Implements the table population of Eisenbud et al., "Maglev: A Fast and
//! Reliable Software Network Load Balancer", NSDI 2016, section 3.4, with a
//! weighting scheme added on top.
//!
//! # Why Maglev
//!
//! The data plane picks a backend with one array lookup:
//! `table[flow_hash % M]`. The table has to satisfy two goals that pull in
//! opposite directions:
//!
//! * **Balance**: every backend owns (almost exactly) its fair share of the
//!   `M` slots, so it receives its fair share of new flows.
//! * **Minimal disruption**: when a backend is added or removed, as few slots
//!   as possible change owner, so established flows on *other* backends are
//!   not sent elsewhere (on a node without connection-tracking state for the
//!   flow, e.g. after a failover, a moved slot means a broken connection).
//!
//! Ring-based consistent hashing gets disruption right but needs many virtual
//! nodes to balance; `hash % N` balances but reshuffles everything. Maglev
//! gives each backend its own pseudo-random *preference list* over all slots,
//! a permutation `(offset + j * skip) mod M` with `offset`/`skip` derived from
//! two independent hashes of the backend's identity. Backends then take turns
//! claiming their most preferred slot that is still free until the table is
//! full. Because every backend keeps the same preference list whatever the
//! rest of the set looks like, removing a backend mostly just hands its slots
//! to whoever preferred them next; only a small number of other slots change
//! owner because the turn sequence shifts (the paper's evaluation quantifies
//! this; the tests below measure it: about 0.3-0.6% of the table when one of
//! 10-100 equal backends goes away).
//!
//! `M` must be prime: `skip` is in `1..M`, so `skip` and `M` are coprime and
//! the preference list really visits every slot. That is what guarantees a
//! backend whose turn comes up always finds a free slot, and that the table
//! ends up completely filled. `M` should also be much larger than the number
//! of backends (the paper recommends `M > 100 * N`): the larger `M`, the
//! fewer slots change owner on a membership change.
//!
//! # Agreement between load balancer nodes
//!
//! Several LB nodes must build *identical* tables from the same backend set:
//! when the router's ECMP hashing moves a flow to another LB node (an LB
//! node was added, removed or restarted), that node must pick the same
//! backend. Therefore:
//!
//! * the hashes are SipHash-1-3 with fixed, compiled-in keys (see
//!   [`OFFSET_HASH_KEYS`] and [`SKIP_HASH_KEYS`]), fed with the backend's raw
//!   identity bytes (no length prefix), so they do not depend on the process,
//!   platform or Rust version;
//! * the input is sorted by identity before anything else happens, so the
//!   order in which a caller lists backends (e.g. the order of a config file
//!   or of a map iteration) cannot influence the result;
//! * every tie is broken by that sorted position.
//!
//! # Weights
//!
//! The paper only notes that weights can be supported by changing how often a
//! backend gets a turn. Done naively (e.g. "weight `w` = `w` turns per
//! round"), shares are only approximately proportional and a backend with a
//! large weight makes every round expensive. Instead, the build is split in
//! two:
//!
//! 1. **How many slots**: the exact share `M * w / W` (`W` = sum of weights)
//!    is apportioned with the largest-remainder (Hamilton) method. Every
//!    backend gets its exact share rounded down or up, i.e. it is off by less
//!    than one slot, whatever `M` and the weights are. Consequence: a backend
//!    whose weight is tiny compared to the others (exact share below one
//!    slot) may legitimately get no slot at all. A weight of 0 always means
//!    no slot; such a backend is still a member of the set (it is validated
//!    and its identity is reserved), it just takes no new flows (draining).
//! 2. **When to take them**: turns are played in rounds. A heaviest backend
//!    (weight `w_max`) acts in every round, a backend of weight `w` in a
//!    fraction `w / w_max` of them, evenly spread: its `k`-th turn (1-based)
//!    is in round `floor((k - 1/2) * w_max / w)`. Within a round, backends
//!    act in sorted order. All backends thus run out of turns at about the
//!    same round. With equal weights every backend acts in every round: that
//!    is *exactly* the paper's round robin (a test compares the tables with
//!    the paper's pseudocode), down to the `M mod N` extra slots going to
//!    the first backends of the last round. With unequal weights it is the
//!    "adjusted turn frequency" the paper suggests. Pacing matters for
//!    disruption: if heavy backends took all their turns first, they would
//!    grab the light backends' preferred slots, and a change to one heavy
//!    backend would ripple through everybody else's slots. (In essence this
//!    is the usual credit scheme, where each round a backend earns `w` and
//!    spends `w_max` per turn, in closed form per backend: a huge weight
//!    ratio does not mean iterating over rounds in which most backends do
//!    nothing.)
//!
//! The arithmetic is done in 64 and 128 bits, so weights anywhere in the
//! `u32` range are fine.
//!
//! # Cost
//!
//! Preference lists are never materialised: each backend keeps the position
//! of its next preferred slot and advances it with an addition and a
//! conditional subtraction (a conditional move: the wrap is unpredictable).
//! Taken slots are tracked in a bitset of `M / 8` bytes, which stays in
//! cache. The expected number of probes is about `M ln M`, dominated by the
//! end of the build: with `F` slots free a turn costs about `M / F` probes,
//! so for `M` = 65537 the last 1% of the slots would cost 70% of all
//! probes. The last `sqrt(M / 3)` turns therefore use an exact shortcut
//! (`Endgame`): the distance of every free slot along the backend's
//! permutation is computed with the modular inverse of `skip`, `O(F)` per
//! turn. Unequal weights add the turn order, handed to the fill one round
//! at a time rather than listed (a list is a `u32` per slot, and its page
//! faults alone made a one-weight change up to 0.3 ms slower than an
//! equal-weight build): with few (weight, quota) classes and no huge
//! weight ratio, one pass over the backends per round or a copy; with many
//! classes and few rounds, a bitset of the acting backends per round; else
//! a counting sort of the turns by round, `O(M + rounds)`. Overall
//! `O(N log N + M log M)` with a small constant.
//!
//! Time is not probes, though: measured, the first 90% of the turns took
//! 60% of the build (N = 1000, M = 65537) with only a third of the probes,
//! because the loop that probes until a free slot exits on a random bit
//! and the branch predictor misses it about once per turn. The first 90%
//! of the turns are therefore played round by round (`speculate`): each
//! backend's candidate is found without a branch on the bit, two
//! independent searches interleaved, and the round is then played in
//! order, a candidate an earlier turn took meaning "search on" (rare). The
//! result is the same table, bit for bit (tests pin the output of the
//! plain version); the build takes about 1.02 ms for 1000 backends and
//! `M` = 65537 on one 2.2 GHz EPYC (Zen 2) core, 1.3 ms without it.
//!
//! On a CPU with AVX-512F the three phases run sixteen 32-bit lanes at a
//! time (`vector`, chosen at run time): the first 70% of the turns search
//! sixteen backends side by side, the turns up to the endgame search
//! sixteen permutation entries per step two turns at once, and the endgame
//! (grown to the last `sqrt(2 * M)` turns, since its distances got cheaper
//! too) computes sixteen distances at a time. Same tables again, bit for
//! bit: the proptests run both sets of loops against the plain probing,
//! and the pinned tables are checked with both. Measured on one 2.3 GHz
//! Xeon (Sapphire Rapids) core, timed in turn with the scalar loops by
//! `cargo xtask bench`: 0.79 against 1.08 ms (N = 1000, `M` = 65537) and
//! 9.0 against 14.8 ms (`M` = 655373).

use std::fmt;
use std::hash::Hasher;

use siphasher::sip::SipHasher13;

#[cfg(target_arch = "x86_64")]
mod vector;

/// Slot value meaning "no backend can take new flows" (the data path
/// reads the same constant).
pub use lb_common::NO_BACKEND;

/// Default table size: prime, and more than 100 times a few hundred backends.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// Smallest accepted table size (the smallest prime for which the skip range
/// `1..M` has more than one value).
pub const MIN_TABLE_SIZE: u32 = 3;

/// Largest accepted table size: the largest prime below 2^24. A table of that
/// size is 64 MiB of `u32` slots, which is already far more than an LB needs,
/// and the bound keeps every intermediate value comfortably within `u32`.
pub const MAX_TABLE_SIZE: u32 = 16_777_213;

/// SipHash-1-3 keys for the `offset` hash (`h1` in the paper).
///
/// Changing these (or [`SKIP_HASH_KEYS`]) reshuffles every table of the
/// fleet: during a rolling upgrade, nodes with old and new keys would send
/// the same flow to different backends. Treat them as part of the wire
/// format. They must differ from the skip keys so that `offset` and `skip`
/// are independent.
///
/// The values are the ASCII of "maglev-o" and "ffset-k1".
pub const OFFSET_HASH_KEYS: (u64, u64) = (0x6d61_676c_6576_2d6f, 0x6666_7365_742d_6b31);

/// SipHash-1-3 keys for the `skip` hash (`h2` in the paper). See
/// [`OFFSET_HASH_KEYS`] for why they must never change.
///
/// The values are the ASCII of "maglev-s" and "kip-key2".
pub const SKIP_HASH_KEYS: (u64, u64) = (0x6d61_676c_6576_2d73, 0x6b69_702d_6b65_7932);

/// A backend as Maglev sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Value written into the table's slots (the backend's index in the BPF
    /// backend array).
    pub id: u32,
    /// Stable identity hashed for offset and skip (e.g. the backend's address
    /// and port as bytes). Two LB nodes given the same identities build the
    /// same table.
    pub identity: Vec<u8>,
    /// Relative weight. 0 = member of the set but gets no slots (draining).
    pub weight: u32,
}

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaglevError {
    /// The table size is not a prime number.
    TableSizeNotPrime(u32),
    /// The table size is below [`MIN_TABLE_SIZE`] or not larger than the
    /// number of backends; `min` is the smallest size that would be accepted
    /// (sizes must also be prime).
    TableSizeTooSmall {
        /// The rejected size.
        size: u32,
        /// The smallest size that would be accepted.
        min: u32,
    },
    /// The table size is above [`MAX_TABLE_SIZE`].
    TableSizeTooLarge {
        /// The rejected size.
        size: u32,
        /// [`MAX_TABLE_SIZE`].
        max: u32,
    },
    /// Two backends have the same identity (they would get the same
    /// preference list).
    DuplicateIdentity(Vec<u8>),
    /// Two backends have the same id.
    DuplicateId(u32),
    /// A backend uses [`NO_BACKEND`] as its id, which the data plane would
    /// read as "no backend".
    ReservedId(u32),
}

impl fmt::Display for MaglevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TableSizeNotPrime(size) => write!(
                f,
                "Maglev table size {size} is not prime (a prime size is needed for every \
                 backend's permutation to visit every slot)"
            ),
            Self::TableSizeTooSmall { size, min } => write!(
                f,
                "Maglev table size {size} is too small: it must be a prime of at least {min} \
                 (at least {MIN_TABLE_SIZE} and larger than the number of backends)"
            ),
            Self::TableSizeTooLarge { size, max } => write!(
                f,
                "Maglev table size {size} is too large: the maximum is {max}"
            ),
            Self::DuplicateIdentity(identity) => {
                write!(f, "several Maglev backends have the identity 0x")?;
                for byte in identity {
                    write!(f, "{byte:02x}")?;
                }
                write!(f, " (identities must be unique)")
            }
            Self::DuplicateId(id) => write!(
                f,
                "several Maglev backends have the id {id} (ids must be unique)"
            ),
            Self::ReservedId(id) => write!(
                f,
                "Maglev backend id {id} is reserved: it is the NO_BACKEND marker"
            ),
        }
    }
}

impl std::error::Error for MaglevError {}

/// Whether `n` is a prime number. Deterministic trial division; at most
/// about 22 000 divisions for any `u32`.
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d: u64 = 5;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// Checks that `size` is usable as a table size, independently of the
/// number of backends: prime, and within
/// [`MIN_TABLE_SIZE`]`..=`[`MAX_TABLE_SIZE`].
pub fn validate_table_size(size: u32) -> Result<(), MaglevError> {
    if size > MAX_TABLE_SIZE {
        return Err(MaglevError::TableSizeTooLarge {
            size,
            max: MAX_TABLE_SIZE,
        });
    }
    if !is_prime(size) {
        return Err(MaglevError::TableSizeNotPrime(size));
    }
    if size < MIN_TABLE_SIZE {
        return Err(MaglevError::TableSizeTooSmall {
            size,
            min: MIN_TABLE_SIZE,
        });
    }
    Ok(())
}

/// Builds the table: Vec of length `size`, each slot a backend `id`, or all
/// [`NO_BACKEND`] when no backend has weight > 0.
///
/// The result depends only on the *set* of backends and on `size`, not on
/// the order of `backends`. `size` must be prime, within
/// [`MIN_TABLE_SIZE`]`..=`[`MAX_TABLE_SIZE`] and larger than
/// `backends.len()` (weight-0 backends included); identities and ids must be
/// unique and no id may be [`NO_BACKEND`].
pub fn build_table(backends: &[MaglevBackend], size: u32) -> Result<Vec<u32>, MaglevError> {
    build_table_with(backends, size, Kernels::detect(size))
}

/// [`build_table`] with the portable scalar loops, whatever the CPU: the
/// same table, bit for bit. `build_table` runs them too on a CPU without
/// AVX-512F; the benchmark compares both.
pub fn build_table_scalar(backends: &[MaglevBackend], size: u32) -> Result<Vec<u32>, MaglevError> {
    build_table_with(backends, size, Kernels::for_isa(Isa::Scalar, size))
}

/// Whether [`build_table`] runs the AVX-512 loops on this CPU.
pub fn uses_avx512() -> bool {
    Isa::detect() != Isa::Scalar
}

/// `build_table` with the given kernels.
fn build_table_with(
    backends: &[MaglevBackend],
    size: u32,
    kernels: Kernels,
) -> Result<Vec<u32>, MaglevError> {
    validate_table_size(size)?;
    if backends.len() >= size as usize {
        return Err(MaglevError::TableSizeTooSmall {
            size,
            min: u32::try_from(backends.len()).map_or(u32::MAX, |n| n.saturating_add(1)),
        });
    }

    // Sorted by identity through a 16-byte prefix key: comparing two u128
    // is one instruction where comparing two slices is a call to memcmp, and
    // it made the sort of 1000 backends 3 times faster. Byte strings compare
    // like their zero-padded 16-byte prefixes read big-endian, except when
    // those are equal (one string a prefix of the other up to zeros, or
    // longer ones): then the whole identities decide.
    let mut keyed: Vec<(u128, &MaglevBackend)> = backends
        .iter()
        .map(|b| (sort_key(&b.identity), b))
        .collect();
    keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.identity.cmp(&b.1.identity)));
    let sorted: Vec<&MaglevBackend> = keyed.into_iter().map(|(_, b)| b).collect();
    if let Some(pair) = sorted
        .windows(2)
        .find(|pair| pair[0].identity == pair[1].identity)
    {
        return Err(MaglevError::DuplicateIdentity(pair[0].identity.clone()));
    }
    let mut ids: Vec<u32> = sorted.iter().map(|b| b.id).collect();
    if ids.contains(&NO_BACKEND) {
        return Err(MaglevError::ReservedId(NO_BACKEND));
    }
    ids.sort_unstable();
    if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(MaglevError::DuplicateId(pair[0]));
    }

    let active: Vec<&MaglevBackend> = sorted.into_iter().filter(|b| b.weight > 0).collect();
    if active.is_empty() {
        return Ok(vec![NO_BACKEND; size as usize]);
    }

    let cursors: Vec<Cursor> = active.iter().map(|b| Cursor::new(b, size)).collect();
    let rounds = if active.iter().all(|b| b.weight == active[0].weight) {
        // Equal weights: the schedule is plain round robin (what `Schedule`
        // would give, without computing it).
        Rounds::round_robin(cursors.len(), size)
    } else {
        Schedule::new(active.iter().map(|b| b.weight).collect(), size).rounds(size)
    };
    Ok(fill(cursors, rounds, size, kernels))
}

/// The first 16 bytes of `identity`, zero-padded, as a big-endian number.
fn sort_key(identity: &[u8]) -> u128 {
    let mut prefix = [0u8; 16];
    let len = identity.len().min(16);
    prefix[..len].copy_from_slice(&identity[..len]);
    u128::from_be_bytes(prefix)
}

/// A backend's position in its permutation `(offset + j * skip) mod M`.
/// `repr(C)`: `vector` gathers its fields as 32-bit words.
#[derive(Clone, Copy)]
#[repr(C)]
struct Cursor {
    /// Next slot to try (the permutation's `j`-th entry, `j` implicit).
    next: u32,
    skip: u32,
    /// `M - skip`: from position `p >= back`, the next entry wraps around.
    back: u32,
    id: u32,
}

impl Cursor {
    fn new(backend: &MaglevBackend, size: u32) -> Self {
        let h1 = sip13(OFFSET_HASH_KEYS, &backend.identity);
        let h2 = sip13(SKIP_HASH_KEYS, &backend.identity);
        let size64 = u64::from(size);
        // Both values are < size <= MAX_TABLE_SIZE, so the casts are lossless.
        let skip = (h2 % (size64 - 1) + 1) as u32;
        Cursor {
            next: (h1 % size64) as u32,
            skip,
            back: size - skip,
            id: backend.id,
        }
    }

    /// Returns the current entry and moves to the next one:
    /// `(next + skip) mod M` without a division. Written so that the
    /// compiler emits a conditional move (the wrap is unpredictable) and the
    /// loop-carried dependency is only two instructions long.
    #[inline(always)]
    fn step(&mut self) -> u32 {
        let slot = self.next;
        self.next = if slot >= self.back {
            slot - self.back
        } else {
            slot + self.skip
        };
        slot
    }
}

/// SipHash-1-3 of the raw bytes (no length prefix, unlike `Hash for [u8]`).
fn sip13(keys: (u64, u64), bytes: &[u8]) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(keys.0, keys.1);
    hasher.write(bytes);
    hasher.finish()
}

/// Plays the turns of `rounds` (indices into `cursors`) in order: each
/// turn claims the backend's next preferred free slot. `rounds` must yield
/// exactly `size` turns, so a free slot exists at every turn; as `size` is
/// prime and skip is in `1..size`, a backend's permutation visits every
/// slot, so every search ends. Whole rounds are speculated while they fit
/// in the first `kernels.speculation` turns; the last `kernels.endgame`
/// turns are played by `Endgame` (same result, lower cost).
fn fill(mut cursors: Vec<Cursor>, mut rounds: Rounds, size: u32, kernels: Kernels) -> Vec<u32> {
    let isa = kernels.isa;
    // Every slot gets overwritten; NO_BACKEND is only a safe default.
    let mut table = vec![NO_BACKEND; size as usize];
    let mut taken = vec![0u64; (size as usize).div_ceil(64)];
    let probing = (size - kernels.endgame.min(size)) as usize;
    let speculating = kernels.speculation.min(probing);
    let mut candidates = Vec::new();
    let mut done = 0;
    // The round that would cross `speculating`, to play turn by turn.
    let mut unfinished = Vec::new();
    while let Some(round) = rounds.next_round() {
        if done + round.len() > speculating {
            unfinished.extend_from_slice(round);
            break;
        }
        isa.speculate(&mut cursors, round, &mut taken, &mut table, &mut candidates);
        done += round.len();
    }
    let mut last = Vec::with_capacity(size as usize - probing);
    let mut play_or_keep = |round: &[u32]| {
        let playing = (probing - done).min(round.len());
        isa.play(&mut cursors, &round[..playing], &mut taken, &mut table);
        done += playing;
        last.extend_from_slice(&round[playing..]);
    };
    play_or_keep(&unfinished);
    while let Some(round) = rounds.next_round() {
        play_or_keep(round);
    }
    let modulus = Modulus::new(size);
    let skips: Vec<u32> = last.iter().map(|&t| cursors[t as usize].skip).collect();
    let inverses = modulus.inverses(&skips);
    let mut endgame = Endgame::new(&taken, size, isa);
    for (&turn, &inverse) in last.iter().zip(&inverses) {
        let cursor = &mut cursors[turn as usize];
        if let Some(slot) = endgame.take_turn(cursor, inverse, size) {
            table[slot as usize] = cursor.id;
        }
    }
    table
}

/// How `fill` plays its turns: with which loops, and where each phase ends.
#[derive(Clone, Copy, Debug)]
struct Kernels {
    isa: Isa,
    /// Number of first turns speculated (at most, whole rounds).
    speculation: usize,
    /// Number of last turns played by `Endgame`.
    endgame: u32,
}

impl Kernels {
    /// The fastest this CPU runs for a table of `size` slots.
    fn detect(size: u32) -> Self {
        Kernels::for_isa(Isa::detect(), size)
    }

    fn for_isa(isa: Isa, size: u32) -> Self {
        Kernels {
            isa,
            speculation: speculation_turns(isa, size),
            endgame: endgame_turns(isa, size),
        }
    }
}

/// The loops `fill` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    /// Plain Rust, one slot per step: runs everywhere, and is the reference
    /// the others are tested against.
    Scalar,
    /// Sixteen lanes at a time (`vector`), with the proof that the CPU
    /// runs AVX-512F.
    #[cfg(target_arch = "x86_64")]
    Avx512(vector::Avx512),
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = vector::Avx512::detect() {
            return Isa::Avx512(cpu);
        }
        Isa::Scalar
    }

    /// Plays the turns of one round (distinct backends).
    fn speculate(
        self,
        cursors: &mut [Cursor],
        round: &[u32],
        taken: &mut [u64],
        table: &mut [u32],
        candidates: &mut Vec<(u32, u32)>,
    ) {
        match self {
            Isa::Scalar => speculate(cursors, round, taken, table, candidates),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(cpu) => cpu.speculate(cursors, round, taken, table),
        }
    }

    /// Plays `turns` (distinct backends) one after the other.
    fn play(self, cursors: &mut [Cursor], turns: &[u32], taken: &mut [u64], table: &mut [u32]) {
        match self {
            Isa::Scalar => {
                for &turn in turns {
                    play(&mut cursors[turn as usize], taken, table);
                }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(cpu) => cpu.play(cursors, turns, taken, table),
        }
    }
}

/// The turns (backend indices) in order, one round at a time. A backend
/// acts at most once per round, which lets `fill` speculate a whole round.
///
/// Streamed, not listed up front, except for huge weight ratios with many
/// distinct weights: the list is a `u32` per slot (256 KiB for `M` =
/// 65537, written and read once), and with the table beside it, whether
/// the allocator handed out fresh pages decided: measured, from 0.03 to
/// 0.3 ms over an equal-weight build with one weight changed (N = 1000),
/// about 100 page faults per build in the slow case. Streamed, the same
/// build is within 2-3% of the equal-weight one.
enum Rounds {
    /// Equal weights: backends 0, 1, ... n - 1 in every round, the last
    /// round cut where the table is full (`left` turns to go).
    RoundRobin { everyone: Vec<u32>, left: usize },
    /// Unequal weights, few classes (see `Scan`).
    Scanned(Scan),
    /// Unequal weights, few rounds (see `Marked`).
    Marked(Marked),
    /// Unequal weights, sorted up front (`Schedule::rounds_by_sort`): the
    /// turns, the end of each round in them and how many were handed out.
    Listed {
        turns: Vec<u32>,
        ends: Vec<u32>,
        round: usize,
    },
}

impl Rounds {
    fn round_robin(n: usize, size: u32) -> Self {
        Rounds::RoundRobin {
            // Backend indices are below the table size, a u32: lossless.
            everyone: (0..n as u32).collect(),
            left: size as usize,
        }
    }

    /// `(turns, round ends)` as `Schedule::rounds_by_sort` gives them.
    fn listed((turns, ends): (Vec<u32>, Vec<u32>)) -> Self {
        Rounds::Listed {
            turns,
            ends,
            round: 0,
        }
    }

    /// The next round's turns, `None` once all are handed out.
    fn next_round(&mut self) -> Option<&[u32]> {
        match self {
            Rounds::RoundRobin { everyone, left } => {
                let len = everyone.len().min(*left);
                *left -= len;
                everyone.get(..len).filter(|round| !round.is_empty())
            }
            Rounds::Scanned(scan) => scan.next_round(),
            Rounds::Marked(marked) => marked.next_round(),
            Rounds::Listed { turns, ends, round } => {
                let end = *ends.get(*round)? as usize;
                let start = round.checked_sub(1).map_or(0, |r| ends[r] as usize);
                *round += 1;
                Some(&turns[start..end])
            }
        }
    }

    /// All turns, and the end of each round in them.
    #[cfg(test)]
    fn collect(mut self) -> (Vec<u32>, Vec<u32>) {
        let (mut turns, mut ends) = (Vec::new(), Vec::new());
        while let Some(round) = self.next_round() {
            turns.extend_from_slice(round);
            ends.push(turns.len() as u32);
        }
        (turns, ends)
    }
}

/// Arithmetic modulo the table size without a division per operation
/// (Barrett reduction): a 64-bit division costs 20 to 40 cycles on current
/// cores, a multiplication 3, and the endgame does one reduction per free
/// slot per turn.
#[derive(Clone, Copy)]
struct Modulus {
    size: u64,
    /// floor((2^64 - 1) / size).
    reciprocal: u64,
}

impl Modulus {
    fn new(size: u32) -> Self {
        Modulus::of(u64::from(size))
    }

    /// Division by any `divisor > 0`.
    fn of(divisor: u64) -> Self {
        Modulus {
            size: divisor,
            reciprocal: u64::MAX / divisor,
        }
    }

    /// `(x / size, x mod size)`. The estimated quotient
    /// `x * reciprocal / 2^64` is the exact one or one less, so one
    /// conditional correction fixes both.
    #[inline(always)]
    fn div_rem(self, x: u64) -> (u64, u64) {
        // The high half of a 64x64-bit product fits in 64 bits.
        let quotient = ((u128::from(x) * u128::from(self.reciprocal)) >> 64) as u64;
        let rest = x - quotient * self.size;
        if rest >= self.size {
            (quotient + 1, rest - self.size)
        } else {
            (quotient, rest)
        }
    }

    /// `x mod size`.
    #[inline(always)]
    fn reduce(self, x: u64) -> u64 {
        self.div_rem(x).1
    }

    #[inline(always)]
    fn mul(self, a: u32, b: u32) -> u32 {
        // The result is < size <= MAX_TABLE_SIZE: lossless cast.
        self.reduce(u64::from(a) * u64::from(b)) as u32
    }

    /// The inverses of all `values` (each in `1..size`) with one extended
    /// Euclid and three multiplications per value (Montgomery's trick),
    /// instead of one Euclid, a dozen divisions, per value.
    fn inverses(self, values: &[u32]) -> Vec<u32> {
        // prefix[i] = values[0] * ... * values[i - 1].
        let mut prefix = Vec::with_capacity(values.len() + 1);
        let mut product = 1u32;
        prefix.push(product);
        for &value in values {
            product = self.mul(product, value);
            prefix.push(product);
        }
        // The size is prime and every value in 1..size, so the product is
        // invertible. Walking back, `inverse` is (values[0..i])^-1.
        let mut inverse = inverse_mod(product, self.size as u32);
        let mut inverses = vec![0u32; values.len()];
        for i in (0..values.len()).rev() {
            inverses[i] = self.mul(inverse, prefix[i]);
            inverse = self.mul(inverse, values[i]);
        }
        inverses
    }
}

/// Interleaved candidate searches in `speculate_chunk`: one waits on each
/// bit's load, three or four were measured 75% slower than two (the
/// compiler no longer keeps their cursors in registers).
const STREAMS: usize = 2;

/// Plays one turn: the backend takes its next preferred free slot.
#[inline(always)]
fn play(cursor: &mut Cursor, taken: &mut [u64], table: &mut [u32]) {
    // A local copy lets the position stay in a register while probing.
    let mut local = *cursor;
    loop {
        let slot = local.step();
        let word = &mut taken[(slot / 64) as usize];
        let bit = 1u64 << (slot % 64);
        if *word & bit == 0 {
            *word |= bit;
            table[slot as usize] = local.id;
            break;
        }
    }
    *cursor = local;
}

/// Number of first turns speculated (at most, whole rounds).
///
/// Scalar: past 90% of the table a turn probes 10 slots or more, the one
/// mispredicted exit matters less and candidates collide more often:
/// measured, 85% was as fast, 92% and 94% 2-3% slower (N = 1000, M =
/// 65537). AVX-512: sixteen turns search side by side until the last of
/// them finds a slot, and the last waits for the slowest of sixteen
/// geometric draws, so past about 70% the pairs of `vector::play` (each
/// turn sixteen entries per step) do better: measured, 60% and 70% equally
/// fast, 50% 2%, 80% 5% and 30% 10% slower (N = 1000, M = 65537 and
/// 655373).
fn speculation_turns(isa: Isa, size: u32) -> usize {
    match isa {
        Isa::Scalar => size as usize * 9 / 10,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(_) => size as usize * 7 / 10,
    }
}

/// Plays the turns of one round (distinct backends): same result as
/// playing them one by one, fewer mispredicted branches (see
/// `speculate_chunk`).
fn speculate(
    cursors: &mut [Cursor],
    round: &[u32],
    taken: &mut [u64],
    table: &mut [u32],
    candidates: &mut Vec<(u32, u32)>,
) {
    if round.len() < 2 * STREAMS {
        // Too short for two streams of two turns (with weights, a round
        // may hold only the heaviest backends).
        for &turn in round {
            play(&mut cursors[turn as usize], taken, table);
        }
    } else {
        speculate_chunk(cursors, round, taken, table, candidates);
    }
}

/// Plays the turns of `chunk` (distinct backends) in two passes.
///
/// Why: in a turn-by-turn search, the loop that probes a backend's next
/// preferred slot exits on a random bit, and the branch predictor misses
/// about once per turn (20 to 30 cycles each, half the build time). Here,
/// a first pass finds each turn's candidate, its first preferred slot free
/// at the start of the chunk, without a branch on the bit: it probes one
/// slot per iteration and moves on to the next turn with a conditional
/// move, for two independent parts of the chunk at once (one would wait on
/// each bit's load). A second pass then plays the turns in order: a
/// candidate is the turn's true choice unless an earlier turn of the chunk
/// took it (the slots before it in the backend's permutation were already
/// taken at the start of the chunk and slots are never freed); only then
/// does the turn search on from its candidate.
fn speculate_chunk(
    cursors: &mut [Cursor],
    chunk: &[u32],
    taken: &mut [u64],
    table: &mut [u32],
    candidates: &mut Vec<(u32, u32)>,
) {
    // (candidate slot, the backend's next entry after it) per turn.
    candidates.clear();
    candidates.resize(chunk.len(), (0, 0));
    let is_free = |taken: &[u64], slot: u32| taken[(slot / 64) as usize] & (1 << (slot % 64)) == 0;
    let starts: [usize; STREAMS] = std::array::from_fn(|i| chunk.len() * i / STREAMS);
    let mut streams = starts.map(|start| (start, cursors[chunk[start] as usize]));
    let ends: [usize; STREAMS] = std::array::from_fn(|i| chunk.len() * (i + 1) / STREAMS);
    // One probe per stream per iteration, while each stream has a next turn
    // whose cursor can be loaded ahead.
    while streams.iter().zip(&ends).all(|(s, &end)| s.0 + 1 < end) {
        for (position, cursor) in &mut streams {
            let ahead = cursors[chunk[*position + 1] as usize];
            let slot = cursor.next;
            let free = is_free(taken, slot);
            cursor.step();
            candidates[*position] = (slot, cursor.next);
            *cursor = std::hint::select_unpredictable(free, ahead, *cursor);
            *position += usize::from(free);
        }
    }
    // The rest of each stream, turn by turn.
    for ((mut position, mut cursor), end) in streams.into_iter().zip(ends) {
        while position < end {
            loop {
                let slot = cursor.step();
                if is_free(taken, slot) {
                    candidates[position] = (slot, cursor.next);
                    break;
                }
            }
            position += 1;
            if let Some(&backend) = chunk.get(position).filter(|_| position < end) {
                cursor = cursors[backend as usize];
            }
        }
    }
    for (&turn, &(slot, next)) in chunk.iter().zip(candidates.iter()) {
        claim_candidate(&mut cursors[turn as usize], slot, next, taken, table);
    }
}

/// Plays a speculated turn: `slot` is the first entry of the cursor's
/// permutation that was free when its chunk was searched, `after` the entry
/// after it. The turn takes it unless an earlier turn of the chunk did;
/// then it searches on from it (the entries before it were taken already,
/// and slots are never freed).
#[inline(always)]
fn claim_candidate(
    cursor: &mut Cursor,
    slot: u32,
    after: u32,
    taken: &mut [u64],
    table: &mut [u32],
) {
    let word = &mut taken[(slot / 64) as usize];
    let bit = 1u64 << (slot % 64);
    if *word & bit == 0 {
        *word |= bit;
        table[slot as usize] = cursor.id;
        cursor.next = after;
    } else {
        cursor.next = slot;
        play(cursor, taken, table);
    }
}

/// Number of final turns played by `Endgame` for a table of `size` slots.
///
/// With `F` free slots left, probing costs about `size / F` probes per turn
/// (for `size` = 65537, filling the last 1% of the slots takes about 70% of
/// all probes), while `Endgame` costs `F` modular multiplications, about 3
/// times as expensive as a probe when each took a 64-bit division: the
/// break-even point was `F = sqrt(size / 3)`. Without the divisions
/// (Shoup's multiplication, inverses in one batch) larger endgames were
/// measured no faster: `sqrt(size)` 1%, `sqrt(2 * size)` 5% and
/// `sqrt(4 * size)` 13% slower (N = 1000), so the scalar threshold stays.
/// With AVX-512 both sides get cheaper (sixteen distances at a time,
/// sixteen probes at a time); measured, `sqrt(4 * size / 3)` to
/// `sqrt(2 * size)` equally fast, `sqrt(10 * size / 3)` 1-2% and
/// `sqrt(32 * size / 3)` 6% slower.
fn endgame_turns(isa: Isa, size: u32) -> u32 {
    match isa {
        Isa::Scalar => (size / 3).isqrt(),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(_) => (u64::from(size) * 2).isqrt() as u32,
    }
}

/// The end of the build, when few slots are free: instead of walking a
/// backend's permutation until it hits one of them, compute for every free
/// slot how many steps away it is in the permutation and take the nearest.
/// Slots the backend already walked past are all taken (slots are never
/// freed), so the nearest free slot is exactly the one probing would find.
struct Endgame {
    free: Vec<u32>,
    isa: Isa,
}

impl Endgame {
    fn new(taken: &[u64], size: u32, isa: Isa) -> Self {
        let mut free = Vec::new();
        for (base, &word) in (0u32..).step_by(64).zip(taken) {
            let mut free_bits = !word;
            while free_bits != 0 {
                let slot = base + free_bits.trailing_zeros();
                if slot < size {
                    free.push(slot);
                }
                free_bits &= free_bits - 1;
            }
        }
        Endgame { free, isa }
    }

    /// Takes the free slot that `cursor`'s permutation reaches first,
    /// advances the cursor past it and returns it (`None` only if no slot is
    /// free, which `fill`'s turn count rules out).
    /// `inverse` is the inverse of `cursor.skip` modulo `size`.
    fn take_turn(&mut self, cursor: &mut Cursor, inverse: u32, size: u32) -> Option<u32> {
        // inverse < size, so the quotient fits in 32 bits.
        let scaled = ((u64::from(inverse) << 32) / u64::from(size)) as u32;
        let index = self.nearest(cursor.next, inverse, scaled, size)?;
        let slot = self.free.swap_remove(index);
        cursor.next = slot;
        cursor.step();
        Some(slot)
    }

    /// The index in `free` of the slot a permutation now at `next` reaches
    /// first.
    fn nearest(&self, next: u32, inverse: u32, scaled: u32, size: u32) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if let Isa::Avx512(cpu) = self.isa {
            return cpu.nearest_free(&self.free, next, inverse, scaled, size);
        }
        let mut nearest: Option<(u32, usize)> = None;
        for (index, &slot) in self.free.iter().enumerate() {
            let steps = steps_to(slot, next, inverse, scaled, size);
            if nearest.is_none_or(|(best, _)| steps < best) {
                nearest = Some((steps, index));
            }
        }
        nearest.map(|(_, index)| index)
    }
}

/// Steps from `next` to `slot` in a permutation of step `skip`:
/// `(slot - next) / skip mod size`, with `inverse` the inverse of `skip`
/// and `scaled = floor(inverse * 2^32 / size)`. Computed as in Shoup's
/// modular multiplication: `distance * scaled / 2^32` is the quotient of
/// `distance * inverse / size` or one less (for `distance < 2^32`), so one
/// conditional subtraction corrects the rest: two multiplications, no
/// division, and the rest (below `2 * size`) needs only 32 bits.
#[inline(always)]
fn steps_to(slot: u32, next: u32, inverse: u32, scaled: u32, size: u32) -> u32 {
    let distance = if slot >= next {
        slot - next
    } else {
        slot + (size - next)
    };
    let quotient = ((u64::from(distance) * u64::from(scaled)) >> 32) as u32;
    let rest = distance
        .wrapping_mul(inverse)
        .wrapping_sub(quotient.wrapping_mul(size));
    if rest >= size {
        rest - size
    } else {
        rest
    }
}

/// The inverse of `value` modulo the prime `size` (`0 < value < size`), by
/// the extended Euclidean algorithm.
fn inverse_mod(value: u32, size: u32) -> u32 {
    let (mut r0, mut r1) = (i64::from(size), i64::from(value));
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    // |t0| < size, so the result is in 0..size: lossless cast.
    t0.rem_euclid(i64::from(size)) as u32
}

/// The turn schedule: how many turns each backend gets and in which rounds.
///
/// Turn `k` (1-based) of a backend of weight `w` happens in round
/// `floor((2k - 1) * max_weight / (2w))`: the middle of the `k`-th of its
/// periods of `max_weight / w` rounds. A heaviest backend acts in every
/// round, no backend acts twice in a round, and within a round backends act
/// in index (sorted identity) order. With equal weights every backend acts in
/// every round: the paper's round robin.
struct Schedule {
    weights: Vec<u32>,
    quotas: Vec<u32>,
    max_weight: u32,
    /// The round of any turn that would come later (only a turn granted by
    /// rounding a share up can, see `new`). Rounds run from 0 to it.
    overflow_round: u32,
}

impl Schedule {
    /// `weights` must be non-empty and all > 0.
    fn new(weights: Vec<u32>, size: u32) -> Self {
        let quotas = apportion(&weights, size);
        let max_weight = weights.iter().copied().max().unwrap_or(1);
        let total_weight: u128 = weights.iter().map(|&w| u128::from(w)).sum();
        // Turn k <= size * w / W (not a rounded-up one) is in a round
        // <= (size * w / W - 1/2) * max_weight / w < size * max_weight / W,
        // which is at most `size`: the cast is lossless.
        let last_round = (u128::from(size) * u128::from(max_weight) / total_weight.max(1)) as u32;
        Schedule {
            weights,
            quotas,
            max_weight,
            overflow_round: last_round + 1,
        }
    }

    fn rounds_of(&self, index: usize) -> TurnRounds {
        TurnRounds::new(
            self.weights[index],
            self.max_weight,
            self.quotas[index],
            self.overflow_round,
        )
    }

    /// The turns in order (backend indices). Its length is the sum of the
    /// quotas, i.e. `size`.
    #[cfg(test)]
    fn turns(&self, size: u32) -> Vec<u32> {
        self.rounds(size).collect().0
    }

    /// The turns round by round: streamed by `Scan` or `Marked` when one
    /// applies, else sorted up front.
    fn rounds(&self, size: u32) -> Rounds {
        if let Some(scan) = Scan::new(self, size) {
            Rounds::Scanned(scan)
        } else if let Some(marked) = Marked::new(self, size) {
            Rounds::Marked(marked)
        } else {
            Rounds::listed(self.rounds_by_sort(size))
        }
    }

    /// `rounds` by a counting sort of the turns on their round, which
    /// leaves the round ends in `starts` (every round's start has moved to
    /// the next one's).
    fn rounds_by_sort(&self, size: u32) -> (Vec<u32>, Vec<u32>) {
        let mut starts = vec![0u32; self.overflow_round as usize + 2];
        for index in 0..self.weights.len() {
            for round in self.rounds_of(index) {
                starts[round as usize + 1] += 1;
            }
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut order = vec![0u32; size as usize];
        for (backend, index) in (0u32..).zip(0..self.weights.len()) {
            for round in self.rounds_of(index) {
                let start = &mut starts[round as usize];
                order[*start as usize] = backend;
                *start += 1;
            }
        }
        starts.truncate(self.overflow_round as usize + 1);
        (order, starts)
    }
}

/// `Schedule`'s rounds one at a time, for the common case of few distinct
/// weights and no huge weight ratio: backends with the same weight and
/// quota (a class) act in the same rounds, so a round is one pass over the
/// backends that keeps those of the acting classes, in order. A round in
/// which every class acts is every backend, and one in which a single
/// class acts is that class's backends: both are handed out as they are,
/// without a pass (with a weight change of one backend, the rounds are all
/// of one or the other kind). The counting sort's scattered writes cost
/// 15% of a build with weights 1..10 (N = 1000, M = 65537).
struct Scan {
    /// Each class's rounds.
    classes: Vec<std::iter::Peekable<TurnRounds>>,
    /// Each backend's class.
    class_of: Vec<u32>,
    /// The bits of all classes.
    every_class: u64,
    /// Backends 0, 1, ... n - 1.
    everyone: Vec<u32>,
    /// Each class's backends, in order.
    members: Vec<Vec<u32>>,
    /// A mixed round (one spare entry: every backend is written, the next
    /// one over it unless it acts).
    round_turns: Vec<u32>,
    /// The next round.
    round: u32,
    overflow_round: u32,
}

impl Scan {
    /// `None` when there are more than 64 classes or the passes would cost
    /// more than 4 turns' worth each.
    fn new(schedule: &Schedule, size: u32) -> Option<Self> {
        let rounds = schedule.overflow_round as usize + 1;
        let n = schedule.weights.len();
        if rounds.saturating_mul(n) > 4 * size as usize {
            return None;
        }
        let mut classes: Vec<(u32, u32)> = Vec::new();
        let mut class_of = Vec::with_capacity(n);
        for (&weight, &quota) in schedule.weights.iter().zip(&schedule.quotas) {
            let class = match classes.iter().position(|&c| c == (weight, quota)) {
                Some(class) => class,
                None if classes.len() < 64 => {
                    classes.push((weight, quota));
                    classes.len() - 1
                }
                None => return None,
            };
            class_of.push(class as u32);
        }
        let mut members: Vec<Vec<u32>> = vec![Vec::new(); classes.len()];
        for (backend, &class) in (0u32..).zip(&class_of) {
            members[class as usize].push(backend);
        }
        Some(Scan {
            every_class: u64::MAX >> (64 - classes.len()),
            classes: classes
                .iter()
                .map(|&(weight, quota)| {
                    TurnRounds::new(weight, schedule.max_weight, quota, schedule.overflow_round)
                        .peekable()
                })
                .collect(),
            class_of,
            everyone: (0u32..).take(n).collect(),
            members,
            round_turns: vec![0; n + 1],
            round: 0,
            overflow_round: schedule.overflow_round,
        })
    }

    fn next_round(&mut self) -> Option<&[u32]> {
        if self.round > self.overflow_round {
            return None;
        }
        let round = self.round;
        self.round += 1;
        let mut acting = 0u64;
        for (class, turns) in self.classes.iter_mut().enumerate() {
            // A class acts at most once per round (see `Schedule`).
            if turns.next_if_eq(&round).is_some() {
                acting |= 1 << class;
            }
        }
        if acting == self.every_class {
            return Some(&self.everyone);
        }
        if acting.count_ones() == 1 {
            return Some(&self.members[acting.trailing_zeros() as usize]);
        }
        let mut len = 0;
        if acting != 0 {
            for (backend, &class) in (0u32..).zip(&self.class_of) {
                self.round_turns[len] = backend;
                len += ((acting >> class) & 1) as usize;
            }
        }
        Some(&self.round_turns[..len])
    }
}

/// `Schedule`'s rounds when there are many classes (e.g. a weight per
/// backend) but few rounds: which backends act in a round is a bitset over
/// the backends, one per round, all set up front (a pass over each
/// backend's turns) and read in order. One bit per backend and round
/// instead of the counting sort's list of `u32` turns, one pass over the
/// turns instead of two: 16 KiB instead of 256 KiB for N = 1000 with
/// weights 1..1000 and M = 65537, whose page faults cost more than the
/// passes.
struct Marked {
    /// Round `r`'s bits are `bits[r * words..(r + 1) * words]`.
    bits: Vec<u64>,
    words: usize,
    /// The current round's turns.
    round_turns: Vec<u32>,
    /// The next round.
    round: usize,
}

impl Marked {
    /// `None` when the bitsets would take more than `size` bytes.
    fn new(schedule: &Schedule, size: u32) -> Option<Self> {
        let rounds = schedule.overflow_round as usize + 1;
        let n = schedule.weights.len();
        let words = n.div_ceil(64);
        if rounds.saturating_mul(words) > size as usize / 8 {
            return None;
        }
        let mut bits = vec![0u64; rounds * words];
        for index in 0..n {
            let (word, bit) = (index / 64, 1u64 << (index % 64));
            for round in schedule.rounds_of(index) {
                bits[round as usize * words + word] |= bit;
            }
        }
        Some(Marked {
            bits,
            words,
            round_turns: vec![0; n],
            round: 0,
        })
    }

    fn next_round(&mut self) -> Option<&[u32]> {
        let start = self.round * self.words;
        let row = self.bits.get(start..start + self.words)?;
        self.round += 1;
        let mut len = 0;
        for (base, &word) in (0u32..).step_by(64).zip(row) {
            let mut acting = word;
            while acting != 0 {
                self.round_turns[len] = base + acting.trailing_zeros();
                len += 1;
                acting &= acting - 1;
            }
        }
        Some(&self.round_turns[..len])
    }
}

/// Splits `size` slots proportionally to `weights` (largest remainder
/// method): each result is `size * w / W` rounded down or up, the results sum
/// to `size`, and leftover slots go to the largest remainders, ties to the
/// lowest index. `weights` must not all be 0.
fn apportion(weights: &[u32], size: u32) -> Vec<u32> {
    // Exact in 64 bits: fewer than 2^32 weights below 2^32 sum to less
    // than 2^64, and `size * w` is below 2^64 too.
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    // All divisions are by `total`: one reciprocal, no `div` per backend.
    let by_total = Modulus::of(total);
    let mut quotas = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    let mut assigned: u64 = 0;
    for (index, &weight) in (0u32..).zip(weights) {
        let (quota, remainder) = by_total.div_rem(u64::from(size) * u64::from(weight));
        // quota <= size because weight <= total: lossless cast.
        quotas.push(quota as u32);
        assigned += quota;
        remainders.push((remainder, index));
    }
    // The remainders sum to a multiple of `total` below `len * total`, so
    // fewer than `len` slots are left over. They go to the `leftover`
    // first in this order: a selection, not a sort.
    let leftover = (u64::from(size) - assigned) as usize;
    if let Some(last) = leftover.checked_sub(1) {
        remainders.select_nth_unstable_by(last, |a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, index) in &remainders[..leftover] {
            quotas[index as usize] += 1;
        }
    }
    quotas
}

/// The rounds of a backend's `quota` turns (see `Schedule`), clamped to
/// `overflow_round`. Computed incrementally, without a division per turn.
struct TurnRounds {
    remaining: u32,
    round: u64,
    rem: u64,
    step: u64,
    step_rem: u64,
    denominator: u64,
    overflow_round: u64,
}

impl TurnRounds {
    /// Requires `0 < weight <= max_weight`.
    fn new(weight: u32, max_weight: u32, quota: u32, overflow_round: u32) -> Self {
        let max_weight = u64::from(max_weight);
        let denominator = 2 * u64::from(weight.max(1));
        // The numerator starts at max_weight and grows by 2 * max_weight per
        // turn; rounds stay below 2^32 * quota < 2^57.
        TurnRounds {
            remaining: quota,
            round: max_weight / denominator,
            rem: max_weight % denominator,
            step: (2 * max_weight) / denominator,
            step_rem: (2 * max_weight) % denominator,
            denominator,
            overflow_round: u64::from(overflow_round),
        }
    }
}

impl Iterator for TurnRounds {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // Clamped to overflow_round, a u32: lossless cast.
        let current = self.round.min(self.overflow_round) as u32;
        self.rem += self.step_rem;
        let carry = self.rem >= self.denominator;
        self.rem -= if carry { self.denominator } else { 0 };
        self.round += self.step + u64::from(carry);
        Some(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};
    use std::collections::HashMap;

    /// Deterministic proptest configuration: fixed seed, no regression files.
    fn config(cases: u32) -> Config {
        Config {
            cases,
            rng_seed: RngSeed::Fixed(0x6d61_676c_6576),
            failure_persistence: None,
            ..Config::default()
        }
    }

    /// Backend `n`: id `n`, identity 10.0.x.y:8080 as bytes.
    fn backend(n: u32, weight: u32) -> MaglevBackend {
        let mut identity = vec![10, 0, (n >> 8) as u8, n as u8];
        identity.extend_from_slice(&8080u16.to_be_bytes());
        MaglevBackend {
            id: n,
            identity,
            weight,
        }
    }

    fn equal_backends(n: u32) -> Vec<MaglevBackend> {
        (0..n).map(|i| backend(i, 1)).collect()
    }

    fn slot_counts(table: &[u32]) -> HashMap<u32, usize> {
        let mut counts = HashMap::new();
        for &id in table {
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }

    /// Checks every backend's share against its weight share; returns the
    /// worst relative deviation |actual - expected| / expected.
    fn check_shares(backends: &[MaglevBackend], size: u32) -> f64 {
        let table = build_table(backends, size).expect("valid input");
        let counts = slot_counts(&table);
        let total: f64 = backends.iter().map(|b| f64::from(b.weight)).sum();
        let mut worst = 0.0f64;
        for b in backends {
            let expected = f64::from(size) * f64::from(b.weight) / total;
            let actual = counts.get(&b.id).copied().unwrap_or(0) as f64;
            let deviation = (actual - expected).abs();
            assert!(
                deviation <= 0.01 * expected,
                "backend {} (weight {}): {actual} slots, expected {expected:.1}",
                b.id,
                b.weight
            );
            // Stronger property of the apportionment: off by less than a slot.
            assert!(deviation < 1.0, "backend {}: {actual} vs {expected}", b.id);
            worst = worst.max(deviation / expected);
        }
        worst
    }

    /// Slots that changed owner between `before` and `after` although they
    /// did not belong to `removed` before.
    fn collateral_moves(before: &[u32], after: &[u32], removed: u32) -> usize {
        before
            .iter()
            .zip(after)
            .filter(|&(&b, &a)| b != removed && b != a)
            .count()
    }

    /// Every set of loops this CPU runs, the scalar reference first.
    pub(super) fn isas() -> Vec<Isa> {
        let detected = Isa::detect();
        if detected == Isa::Scalar {
            eprintln!("note: this CPU has no AVX-512F, only the scalar loops are tested");
            vec![Isa::Scalar]
        } else {
            vec![Isa::Scalar, detected]
        }
    }

    /// `fill` without its shortcuts: every turn probes until it finds a
    /// free slot.
    fn fill_turn_by_turn(mut cursors: Vec<Cursor>, turns: &[u32], size: u32) -> Vec<u32> {
        let mut table = vec![NO_BACKEND; size as usize];
        for &turn in turns {
            let cursor = &mut cursors[turn as usize];
            loop {
                let slot = cursor.step();
                if table[slot as usize] == NO_BACKEND {
                    table[slot as usize] = cursor.id;
                    break;
                }
            }
        }
        table
    }

    /// The paper's population pseudocode (section 3.4, Pseudocode 1) written
    /// plainly, equal weights only: `build_table` must reproduce it.
    fn paper_reference(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
        let mut sorted: Vec<&MaglevBackend> = backends.iter().collect();
        sorted.sort_by(|a, b| a.identity.cmp(&b.identity));
        let mut cursors: Vec<Cursor> = sorted.iter().map(|b| Cursor::new(b, size)).collect();
        let mut table = vec![NO_BACKEND; size as usize];
        let mut filled = 0;
        loop {
            for cursor in &mut cursors {
                loop {
                    let slot = cursor.next;
                    cursor.next = (cursor.next + cursor.skip) % size;
                    if table[slot as usize] == NO_BACKEND {
                        table[slot as usize] = cursor.id;
                        break;
                    }
                }
                filled += 1;
                if filled == size {
                    return table;
                }
            }
        }
    }

    #[test]
    fn primality() {
        let sieve_limit = 10_000usize;
        let mut composite = vec![false; sieve_limit];
        for i in 2..sieve_limit {
            if !composite[i] {
                for j in (i * i..sieve_limit).step_by(i) {
                    composite[j] = true;
                }
            }
            assert_eq!(is_prime(i as u32), !composite[i], "{i}");
        }
        assert!(!is_prime(0));
        assert!(!is_prime(1));
        for p in [65537, 655_373, MAX_TABLE_SIZE, 2_147_483_647, 4_294_967_291] {
            assert!(is_prime(p), "{p}");
        }
        for c in [65536, 65539 * 3, 4_294_967_295, 65521 * 65519] {
            assert!(!is_prime(c), "{c}");
        }
        assert!(!is_prime(65521 * 65521));
    }

    #[test]
    fn table_size_validation() {
        assert_eq!(validate_table_size(65537), Ok(()));
        assert_eq!(validate_table_size(655_373), Ok(()));
        assert_eq!(validate_table_size(DEFAULT_TABLE_SIZE), Ok(()));
        assert_eq!(validate_table_size(MAX_TABLE_SIZE), Ok(()));
        assert_eq!(validate_table_size(3), Ok(()));
        for size in [0, 1, 4, 65536, 655_372] {
            assert_eq!(
                validate_table_size(size),
                Err(MaglevError::TableSizeNotPrime(size))
            );
        }
        assert_eq!(
            validate_table_size(2),
            Err(MaglevError::TableSizeTooSmall { size: 2, min: 3 })
        );
        for size in [MAX_TABLE_SIZE + 1, 16_777_259, u32::MAX] {
            assert_eq!(
                validate_table_size(size),
                Err(MaglevError::TableSizeTooLarge {
                    size,
                    max: MAX_TABLE_SIZE
                })
            );
        }
        // build_table applies the same checks.
        assert_eq!(
            build_table(&equal_backends(3), 65536),
            Err(MaglevError::TableSizeNotPrime(65536))
        );
        assert_eq!(build_table(&[], 0), Err(MaglevError::TableSizeNotPrime(0)));
        assert_eq!(
            build_table(&equal_backends(3), 655_373).map(|t| t.len()),
            Ok(655_373)
        );
    }

    #[test]
    fn size_must_exceed_backend_count() {
        assert_eq!(
            build_table(&equal_backends(7), 7),
            Err(MaglevError::TableSizeTooSmall { size: 7, min: 8 })
        );
        assert_eq!(
            build_table(&equal_backends(12), 11),
            Err(MaglevError::TableSizeTooSmall { size: 11, min: 13 })
        );
        // Draining backends count too: they are still members of the set.
        let mut backends = equal_backends(3);
        backends.extend((3..7).map(|i| backend(i, 0)));
        assert_eq!(
            build_table(&backends, 7),
            Err(MaglevError::TableSizeTooSmall { size: 7, min: 8 })
        );
        let table = build_table(&equal_backends(6), 7).expect("6 backends fit in 7 slots");
        let counts = slot_counts(&table);
        assert_eq!(counts.len(), 6);
        assert!(counts.values().all(|&c| c == 1 || c == 2));
    }

    #[test]
    fn duplicates_rejected() {
        let mut backends = equal_backends(5);
        backends[3].identity = backends[1].identity.clone();
        assert_eq!(
            build_table(&backends, 65537),
            Err(MaglevError::DuplicateIdentity(backends[1].identity.clone()))
        );

        let mut backends = equal_backends(5);
        backends[4].id = 2;
        assert_eq!(
            build_table(&backends, 65537),
            Err(MaglevError::DuplicateId(2))
        );

        // Also among draining backends.
        let mut backends = equal_backends(5);
        backends.push(backend(9, 0));
        backends.push(MaglevBackend {
            weight: 0,
            ..backend(9, 0)
        });
        assert_eq!(
            build_table(&backends, 65537),
            Err(MaglevError::DuplicateIdentity(backend(9, 0).identity))
        );

        let mut backends = equal_backends(5);
        backends[0].id = NO_BACKEND;
        assert_eq!(
            build_table(&backends, 65537),
            Err(MaglevError::ReservedId(NO_BACKEND))
        );
    }

    #[test]
    fn error_messages() {
        let cases = [
            (MaglevError::TableSizeNotPrime(65536), "65536 is not prime"),
            (
                MaglevError::TableSizeTooSmall { size: 7, min: 8 },
                "size 7 is too small: it must be a prime of at least 8",
            ),
            (
                MaglevError::TableSizeTooLarge {
                    size: 20_000_000,
                    max: MAX_TABLE_SIZE,
                },
                "20000000 is too large: the maximum is 16777213",
            ),
            (
                MaglevError::DuplicateIdentity(vec![10, 0, 0, 1, 0x1f, 0x90]),
                "identity 0x0a0000011f90",
            ),
            (MaglevError::DuplicateId(4), "the id 4"),
            (
                MaglevError::ReservedId(NO_BACKEND),
                "id 4294967295 is reserved",
            ),
        ];
        for (error, expected) in cases {
            let message = error.to_string();
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
            let _: &dyn std::error::Error = &error;
        }
    }

    #[test]
    fn empty_or_all_draining_gives_no_backend() {
        assert_eq!(build_table(&[], 65537), Ok(vec![NO_BACKEND; 65537]));
        let draining: Vec<_> = (0..10).map(|i| backend(i, 0)).collect();
        assert_eq!(build_table(&draining, 65537), Ok(vec![NO_BACKEND; 65537]));
        assert_eq!(build_table(&draining, 11), Ok(vec![NO_BACKEND; 11]));
    }

    #[test]
    fn single_backend_takes_everything() {
        let table = build_table(&[backend(42, 7)], 65537).expect("valid");
        assert!(table.iter().all(|&id| id == 42));
        let table = build_table(&[backend(42, 1)], 3).expect("valid");
        assert_eq!(table, vec![42; 3]);
    }

    #[test]
    fn draining_backend_gets_no_slots() {
        let mut backends = equal_backends(10);
        backends[4].weight = 0;
        let table = build_table(&backends, 65537).expect("valid");
        assert!(table.iter().all(|&id| id != NO_BACKEND && id != 4));
        let counts = slot_counts(&table);
        assert_eq!(counts.len(), 9);
        // The others share the table evenly.
        for count in counts.values() {
            assert!((7281..=7282).contains(count), "{count}");
        }
    }

    #[test]
    fn equal_weight_shares() {
        // N=655 and N=1000 are at the M > 100 * N limit: about 100 and 655
        // slots each, so being off by less than one slot is up to ~1%.
        for (n, size) in [
            (1, 65537),
            (2, 65537),
            (3, 65537),
            (10, 65537),
            (100, 65537),
        ]
        .into_iter()
        .chain([(655, 65537), (1000, 655_373)])
        {
            let worst = check_shares(&equal_backends(n), size);
            println!(
                "equal weights, N={n}, M={size}: worst share deviation {:.4}%",
                worst * 100.0
            );
        }
    }

    #[test]
    fn weighted_shares() {
        let one_to_ten = [backend(0, 1), backend(1, 10)];
        let one_two_three = [backend(0, 1), backend(1, 2), backend(2, 3)];
        let mut worst = 0.0f64;
        for size in [65537, 655_373] {
            worst = worst.max(check_shares(&one_to_ten, size));
            worst = worst.max(check_shares(&one_two_three, size));
        }
        println!(
            "1:10 and 1:2:3: worst share deviation {:.4}%",
            worst * 100.0
        );

        let table = build_table(&one_to_ten, 65537).expect("valid");
        let counts = slot_counts(&table);
        assert_eq!((counts[&0], counts[&1]), (5958, 59579));
    }

    #[test]
    fn huge_weights_do_not_overflow() {
        let backends = [
            backend(0, u32::MAX),
            backend(1, u32::MAX),
            backend(2, u32::MAX - 1),
            backend(3, 1),
        ];
        let table = build_table(&backends, 65537).expect("valid");
        let counts = slot_counts(&table);
        // 65537 / 3 = 21845.67: two backends get 21846, one 21845, and the
        // weight-1 backend's share (1.5e-5 slots) rounds to nothing.
        let mut heavy = [counts[&0], counts[&1], counts[&2]];
        heavy.sort_unstable();
        assert_eq!(heavy, [21845, 21846, 21846]);
        assert!(!counts.contains_key(&3));

        let many: Vec<_> = (0..1000).map(|i| backend(i, u32::MAX - i)).collect();
        check_shares(&many, 655_373);
    }

    #[test]
    fn equal_weights_reproduce_the_paper_exactly() {
        for (n, size) in [
            (1, 3),
            (2, 3),
            (6, 7),
            (2, 65537),
            (10, 65537),
            (37, 65537),
            (100, 65537),
        ] {
            let backends = equal_backends(n);
            assert_eq!(
                build_table(&backends, size).expect("valid"),
                paper_reference(&backends, size),
                "N={n}, M={size}"
            );
            // The common weight does not matter.
            let heavier: Vec<_> = (0..n).map(|i| backend(i, 1000)).collect();
            assert_eq!(
                build_table(&heavier, size).expect("valid"),
                paper_reference(&backends, size),
                "N={n}, M={size}, weight 1000"
            );
        }
    }

    #[test]
    fn removing_a_backend_moves_few_other_slots() {
        const SIZE: u32 = 65537;
        // Measured with the identities of `backend`: at most 394 slots (0.60%
        // of the table), growing slowly with N (about 130 at N=10, 390 at
        // N=100). Same figures as the paper's algorithm, which this
        // reproduces for equal weights. Bound: 0.75% of the table.
        let bound = SIZE as usize * 3 / 400;
        let mut worst = (0, 0, 0);
        let mut total = 0;
        let mut cases = 0;
        for n in 10..=100u32 {
            let backends = equal_backends(n);
            let before = build_table(&backends, SIZE).expect("valid");
            // Remove the first, a middle and the last backend in turn.
            let removed = [0, n / 2, n - 1][n as usize % 3];
            let mut rest = backends.clone();
            rest.remove(removed as usize);
            let after = build_table(&rest, SIZE).expect("valid");
            assert!(after.iter().all(|&id| id != removed && id != NO_BACKEND));
            let moved = collateral_moves(&before, &after, removed);
            assert!(
                moved <= bound,
                "N={n}, removed {removed}: {moved} other slots moved (bound {bound})"
            );
            total += moved;
            cases += 1;
            worst = worst.max((moved, n, removed));
        }
        println!(
            "collateral moves on removal (N=10..=100, M={SIZE}): worst {} slots = {:.3}% of \
             the table (N={}, removed #{}), mean {:.0} slots; bound {bound}",
            worst.0,
            worst.0 as f64 * 100.0 / f64::from(SIZE),
            worst.1,
            worst.2,
            total as f64 / f64::from(cases)
        );
    }

    #[test]
    fn apportionment_edge_cases() {
        assert_eq!(apportion(&[1, 1, 1], 7), vec![3, 2, 2]);
        assert_eq!(apportion(&[5], 3), vec![3]);
        assert_eq!(apportion(&[1, 0, 1], 3), vec![2, 0, 1]);
        assert_eq!(apportion(&[u32::MAX, 1], 3), vec![3, 0]);
    }

    #[test]
    fn turn_rounds_are_paced_by_weight_and_clamped() {
        // (weight, max weight, quota, clamp round)
        for (w, max, quota, last) in [
            (1, 1, 3, 2),
            (1, 1, 4, 2),
            (1, 10, 5958, 5957),
            (10, 10, 59579, 5957),
            (3, 7, 1000, 3000),
            (u32::MAX - 1, u32::MAX, 21846, 21845),
            (1, u32::MAX, 1, 21845),
        ] {
            let rounds: Vec<u32> = TurnRounds::new(w, max, quota, last).collect();
            assert_eq!(rounds.len(), quota as usize);
            for (k, &r) in (1u128..).zip(&rounds) {
                let exact = (2 * k - 1) * u128::from(max) / (2 * u128::from(w));
                assert_eq!(
                    u128::from(r),
                    exact.min(u128::from(last)),
                    "w={w} max={max} k={k}"
                );
            }
        }
        assert_eq!(TurnRounds::new(3, 7, 0, 7).count(), 0);
    }

    #[test]
    fn schedule_is_round_robin_for_equal_weights() {
        // `build_table` skips `Schedule` for equal weights; both must agree.
        for (n, size) in [(1u32, 3u32), (3, 7), (10, 65537), (37, 65537)] {
            for weight in [1, 5, u32::MAX] {
                let schedule = Schedule::new(vec![weight; n as usize], size);
                let round_robin: Vec<u32> = (0..n).cycle().take(size as usize).collect();
                assert_eq!(
                    schedule.turns(size),
                    round_robin,
                    "N={n} M={size} w={weight}"
                );
            }
        }
    }

    #[test]
    fn sort_key_orders_like_the_bytes() {
        let long = |last: u8| {
            let mut v = vec![7u8; 16];
            v.push(last);
            v
        };
        let mut identities: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            vec![1],
            vec![1, 0],
            vec![1, 0, 0, 2],
            vec![0xff; 3],
            vec![0xff; 20],
            long(0),
            long(1),
            long(0xff),
            vec![7u8; 16],
        ];
        identities.reverse();
        let mut by_key = identities.clone();
        by_key.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)).then_with(|| a.cmp(b)));
        identities.sort();
        assert_eq!(by_key, identities);
    }

    #[test]
    fn inverse_mod_inverts() {
        for size in [3u32, 7, 65537, 655_373, MAX_TABLE_SIZE] {
            for value in [1, 2, size / 2, size - 2, size - 1] {
                let inverse = inverse_mod(value, size);
                assert!(inverse < size);
                assert_eq!(u64::from(value) * u64::from(inverse) % u64::from(size), 1);
            }
        }
    }

    proptest! {
        #![proptest_config(config(16))]

        #[test]
        fn table_always_full_with_valid_ids(
            weights in prop::collection::vec(0u32..=5, 0..60),
            size in prop::sample::select(vec![61u32, 101, 1009, 65537]),
        ) {
            let backends: Vec<_> = (0u32..).zip(&weights).map(|(i, &w)| backend(i, w)).collect();
            let table = build_table(&backends, size).expect("valid input");
            prop_assert_eq!(table.len(), size as usize);
            if weights.iter().all(|&w| w == 0) {
                prop_assert!(table.iter().all(|&id| id == NO_BACKEND));
            } else {
                for &id in &table {
                    prop_assert!(id != NO_BACKEND);
                    prop_assert!(weights[id as usize] > 0, "slot owned by a draining backend");
                }
                // Off by less than one slot from the exact share.
                let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
                let counts = slot_counts(&table);
                for (i, &w) in (0u32..).zip(&weights) {
                    let expected = f64::from(size) * f64::from(w) / total;
                    let actual = counts.get(&i).copied().unwrap_or(0) as f64;
                    prop_assert!((actual - expected).abs() < 1.0);
                }
            }
        }

        #[test]
        fn random_weight_shares_within_one_percent(
            weights in prop::collection::vec(1u32..=20, 1..=30),
        ) {
            // Every backend's expected share is >= 65537 / (30 * 20) > 100 slots.
            let backends: Vec<_> = (0u32..).zip(&weights).map(|(i, &w)| backend(i, w)).collect();
            let worst = check_shares(&backends, 65537);
            println!("random weights {weights:?}: worst share deviation {:.4}%", worst * 100.0);
        }

        #[test]
        fn apportion_gives_the_largest_remainders_in_order(
            weights in prop::collection::vec(
                prop_oneof![0u32..=3, 1u32..=1000, Just(u32::MAX), 0u32..=u32::MAX],
                1..=200,
            ),
            size in prop::sample::select(vec![3u32, 101, 65537, MAX_TABLE_SIZE]),
        ) {
            prop_assume!(weights.iter().any(|&w| w > 0));
            // The plain definition: 128-bit arithmetic, a full sort.
            let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
            let exact: Vec<u128> = weights.iter().map(|&w| u128::from(size) * u128::from(w)).collect();
            let mut quotas: Vec<u32> = exact.iter().map(|&e| (e / total) as u32).collect();
            let mut by_remainder: Vec<(u128, usize)> =
                exact.iter().enumerate().map(|(i, &e)| (e % total, i)).collect();
            by_remainder.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let leftover = size as usize - quotas.iter().map(|&q| q as usize).sum::<usize>();
            for &(_, i) in &by_remainder[..leftover] {
                quotas[i] += 1;
            }
            prop_assert_eq!(apportion(&weights, size), quotas);
        }

        #[test]
        fn schedule_gives_each_backend_its_quota_at_most_once_per_round(
            weights in prop::collection::vec(
                prop_oneof![1u32..=10, 1u32..=1000, Just(u32::MAX), 1u32..=u32::MAX],
                1..=50,
            ),
            size in prop::sample::select(vec![53u32, 1009, 65537]),
        ) {
            let schedule = Schedule::new(weights.clone(), size);
            let turns = schedule.turns(size);
            prop_assert_eq!(turns.len(), size as usize);
            let mut counts = vec![0u32; weights.len()];
            for &turn in &turns {
                counts[turn as usize] += 1;
            }
            prop_assert_eq!(&counts, &apportion(&weights, size));
            // Replaying the rounds gives the same order: by round, then index.
            let mut by_round: Vec<(u32, u32)> = (0..weights.len())
                .flat_map(|i| schedule.rounds_of(i).map(move |r| (r, i as u32)))
                .collect();
            by_round.sort_unstable();
            let windows_ok = by_round.windows(2).all(|w| w[0] != w[1]);
            prop_assert!(windows_ok, "a backend acts twice in a round");
            prop_assert_eq!(by_round.into_iter().map(|(_, i)| i).collect::<Vec<_>>(), turns);
        }

        #[test]
        fn scanned_marked_and_sorted_rounds_agree(
            weights in prop::collection::vec(
                prop_oneof![1u32..=3, 1u32..=10, 1u32..=1000],
                1..=80,
            ),
            size in prop::sample::select(vec![101u32, 1009, 65537]),
        ) {
            let schedule = Schedule::new(weights, size);
            let sorted = schedule.rounds_by_sort(size);
            if let Some(scan) = Scan::new(&schedule, size) {
                prop_assert_eq!(Rounds::Scanned(scan).collect(), sorted.clone());
            }
            if let Some(marked) = Marked::new(&schedule, size) {
                prop_assert_eq!(Rounds::Marked(marked).collect(), sorted);
            }
        }

        #[test]
        fn speculation_and_endgame_give_the_same_table_as_probing(
            weights in prop::collection::vec(0u32..=5, 1..=40),
            size in prop::sample::select(vec![41u32, 1009, 65537]),
            speculation in prop::sample::select(vec![0.0f64, 0.3, 0.9, 1.0]),
            endgame in prop::sample::select(vec![0u32, 1, 2, 17, 150, 1009]),
        ) {
            let backends: Vec<_> = (0u32..).zip(&weights).map(|(i, &w)| backend(i, w)).collect();
            let active: Vec<_> = backends.iter().filter(|b| b.weight > 0).collect();
            prop_assume!(!active.is_empty());
            let cursors: Vec<Cursor> = active.iter().map(|b| Cursor::new(b, size)).collect();
            let schedule = Schedule::new(active.iter().map(|b| b.weight).collect(), size);
            let probing = fill_turn_by_turn(cursors.clone(), &schedule.turns(size), size);
            let speculating = (f64::from(size) * speculation) as usize;
            for isa in isas() {
                let kernels = Kernels {
                    isa,
                    speculation: speculating,
                    endgame: endgame.min(size),
                };
                // Streamed when `Scan` applies, and listed.
                let streamed = fill(cursors.clone(), schedule.rounds(size), size, kernels);
                prop_assert_eq!(&probing, &streamed, "{:?}", isa);
                let listed = Rounds::listed(schedule.rounds_by_sort(size));
                prop_assert_eq!(&probing, &fill(cursors.clone(), listed, size, kernels), "{:?}", isa);
            }
        }

        #[test]
        fn input_order_does_not_matter(
            (original, shuffled) in prop::collection::vec(0u32..=4, 1..=40)
                .prop_flat_map(|weights| {
                    let backends: Vec<_> =
                        (0u32..).zip(&weights).map(|(i, &w)| backend(i * 7, w)).collect();
                    (Just(backends.clone()), Just(backends).prop_shuffle())
                }),
        ) {
            prop_assert_eq!(
                build_table(&original, 65537).expect("valid"),
                build_table(&shuffled, 65537).expect("valid")
            );
        }
    }

    #[test]
    fn weighted_changes_move_few_other_slots() {
        const SIZE: u32 = 65537;
        // Measured: at most 426 slots when removing one backend of a set
        // weighted 1, 2, 3, 4, 1, 2, ... (N <= 100), 531 when the removed
        // backend is the only heaviest one (which changes the round length),
        // 280 when one weight changes. Bound: 1% of the table.
        let bound = SIZE as usize / 100;
        let mut worst = (0, String::new());
        let mut record = |moved: usize, case: String| {
            assert!(
                moved <= bound,
                "{case}: {moved} other slots moved (bound {bound})"
            );
            if moved > worst.0 {
                worst = (moved, case);
            }
        };
        for n in (10..=100u32).step_by(10) {
            let mut backends: Vec<_> = (0..n).map(|i| backend(i, 1 + i % 4)).collect();
            let before = build_table(&backends, SIZE).expect("valid");
            for removed in [0, 3, n / 2, n - 1] {
                let mut rest = backends.clone();
                rest.remove(removed as usize);
                let after = build_table(&rest, SIZE).expect("valid");
                let case = format!("N={n}, removed #{removed}");
                record(collateral_moves(&before, &after, removed), case);
            }

            // A weight change: slots moving between two other backends.
            let mut changed = backends.clone();
            changed[5].weight += 1;
            let after = build_table(&changed, SIZE).expect("valid");
            let moved = before
                .iter()
                .zip(&after)
                .filter(|&(&b, &a)| b != a && b != 5 && a != 5)
                .count();
            record(moved, format!("N={n}, weight of #5 changed"));

            // Removing the only heaviest backend.
            backends[7].weight = 10;
            let before = build_table(&backends, SIZE).expect("valid");
            backends.remove(7);
            let after = build_table(&backends, SIZE).expect("valid");
            let case = format!("N={n}, only heaviest removed");
            record(collateral_moves(&before, &after, 7), case);
        }
        println!(
            "weighted: worst collateral moves {} slots = {:.3}% of the table ({}); bound {bound}",
            worst.0,
            worst.0 as f64 * 100.0 / f64::from(SIZE),
            worst.1
        );
    }
}

/// Pins the exact tables of the table builder as it was before it was
/// optimised (commit 959b358): every LB node of a fleet must build the same
/// table from the same input, whatever version it runs, so a faster build
/// must give byte-identical output. The digests were computed with that
/// commit's code.
#[cfg(test)]
mod pinned_output {
    use super::tests::isas;
    use super::*;

    /// 64-bit FNV-1a over the slots as little-endian bytes.
    fn fnv1a(table: &[u32]) -> u64 {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for byte in table.iter().flat_map(|slot| slot.to_le_bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash
    }

    /// `n` backends named as `lb-bench` names them, weights from `weight`.
    fn backends(n: u32, weight: impl Fn(u32) -> u32) -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| MaglevBackend {
                id: i,
                identity: format!("198.19.{}.{}", i / 256, i % 256).into_bytes(),
                weight: weight(i),
            })
            .collect()
    }

    /// (case, backends, table size)
    fn cases() -> Vec<(&'static str, Vec<MaglevBackend>, u32)> {
        vec![
            ("n3_m7", backends(3, |_| 1), 7),
            ("n1_m3", backends(1, |_| 5), 3),
            ("n10_m65537", backends(10, |_| 1), 65537),
            ("n100_m65537", backends(100, |_| 1), 65537),
            ("n1000_m65537", backends(1000, |_| 1), 65537),
            ("n1000_m655373", backends(1000, |_| 1), 655_373),
            ("n1000_m65537_w1to10", backends(1000, |i| 1 + i % 10), 65537),
            (
                "n1000_m655373_w1to10",
                backends(1000, |i| 1 + i % 10),
                655_373,
            ),
            (
                "n1000_m65537_one_w2",
                backends(1000, |i| 1 + u32::from(i == 0)),
                65537,
            ),
            ("n37_m1009_w0to5", backends(37, |i| i * 7 % 6), 1009),
            ("n60_m101_w0to3", backends(60, |i| i % 4), 101),
            (
                "n4_m65537_huge",
                backends(4, |i| u32::MAX - i * 1000),
                65537,
            ),
            ("n2_m65537_1to10", backends(2, |i| 1 + 9 * i), 65537),
            ("n500_m1000003", backends(500, |i| 1 + i % 3), 1_000_003),
            // A weight per backend: `Marked`, then the counting sort.
            (
                "n1000_m65537_w1to1000",
                backends(1000, |i| 1 + i * 7919 % 1000),
                65537,
            ),
            (
                "n100_m65537_one_huge",
                backends(100, |i| if i == 0 { 100_000 } else { 1 + i }),
                65537,
            ),
        ]
    }

    /// Digests computed by commit 959b358's `build_table` (the last two
    /// by b9fef32's, which listed every schedule).
    const PINNED: [(&str, u64); 16] = [
        ("n3_m7", 0xb29f_3cf7_99cb_3e35),
        ("n1_m3", 0x5467_b0da_1d10_6495),
        ("n10_m65537", 0x2a8d_dfbe_9feb_ddb3),
        ("n100_m65537", 0xc20d_ad6e_ecae_d7c1),
        ("n1000_m65537", 0x1ce6_5b8a_99ad_a217),
        ("n1000_m655373", 0x4847_9d5d_5e15_046f),
        ("n1000_m65537_w1to10", 0x2831_d32b_382f_a537),
        ("n1000_m655373_w1to10", 0x5215_eb63_ce28_d300),
        ("n1000_m65537_one_w2", 0xc50b_28fc_efde_5b8c),
        ("n37_m1009_w0to5", 0xb499_b95f_d6cb_9933),
        ("n60_m101_w0to3", 0xbefc_1145_0552_dbd0),
        ("n4_m65537_huge", 0x270e_761f_fdfd_7915),
        ("n2_m65537_1to10", 0x0abb_df28_a6c9_5954),
        ("n500_m1000003", 0x704e_2da6_41b1_955a),
        ("n1000_m65537_w1to1000", 0x6cde_4fdd_12b4_2f00),
        ("n100_m65537_one_huge", 0x76ff_8b28_63c5_b027),
    ];

    #[test]
    fn the_weighted_cases_cover_every_schedule() {
        let schedule = |name: &str| {
            let (_, backends, size) = cases().into_iter().find(|c| c.0 == name).expect("case");
            let weights = backends.iter().map(|b| b.weight).collect();
            (Schedule::new(weights, size), size)
        };
        let (one_w2, size) = schedule("n1000_m65537_one_w2");
        assert!(Scan::new(&one_w2, size).is_some());
        let (per_backend, size) = schedule("n1000_m65537_w1to1000");
        assert!(Scan::new(&per_backend, size).is_none());
        assert!(Marked::new(&per_backend, size).is_some());
        let (huge, size) = schedule("n100_m65537_one_huge");
        assert!(Scan::new(&huge, size).is_none());
        assert!(Marked::new(&huge, size).is_none());
    }

    #[test]
    fn tables_are_byte_identical_to_the_pinned_ones() {
        let cases = cases();
        assert_eq!(cases.len(), PINNED.len());
        for ((name, backends, size), (pinned_name, digest)) in cases.into_iter().zip(PINNED) {
            assert_eq!(name, pinned_name);
            for isa in isas() {
                let table =
                    build_table_with(&backends, size, Kernels::for_isa(isa, size)).expect("valid");
                assert_eq!(table.len(), size as usize);
                assert_eq!(fnv1a(&table), digest, "{name}, {isa:?}: the table changed");
            }
        }
    }
}
