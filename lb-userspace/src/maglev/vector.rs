//! The build's three hot loops, sixteen 32-bit lanes at a time (AVX-512F).
//!
//! Why: a build is `M` turns (65537 by default), and with the scalar loops
//! a turn costs about 16 ns on one core, mostly waiting on a probe chain
//! whose exit the branch predictor misses about once per turn. The loops
//! here make the same choices as their scalar twins in `maglev.rs`, which
//! stay the reference (tests compare them, and the pinned tables) and run
//! on CPUs without AVX-512F:
//!
//! * [`speculate`] (the first 70% of the turns) searches sixteen turns of a
//!   round side by side, each lane walking its own backend's permutation,
//!   then claims the candidates in turn order, as `speculate_chunk` does
//!   with two scalar streams;
//! * [`play`] (then up to the endgame, when a turn probes tens of slots)
//!   searches sixteen permutation entries per step, two turns at once;
//! * [`nearest_free`] (the endgame) computes the distances of sixteen free
//!   slots at a time.
//!
//! `taken` is read as 32-bit little-endian words (x86 is little-endian), so
//! slot `s` is bit `s % 32` of word `s / 32`.

use std::arch::x86_64::{
    __m512i, __mmask16, _mm512_add_epi32, _mm512_and_si512, _mm512_castsi512_si128,
    _mm512_cmpeq_epi32_mask, _mm512_mask_blend_epi32, _mm512_mask_cmpge_epu32_mask,
    _mm512_mask_compress_epi32, _mm512_mask_i32gather_epi32, _mm512_mask_mov_epi32,
    _mm512_mask_testn_epi32_mask, _mm512_maskz_loadu_epi32, _mm512_min_epu32, _mm512_mul_epu32,
    _mm512_mullo_epi32, _mm512_set1_epi32, _mm512_setr_epi32, _mm512_setzero_si512,
    _mm512_srli_epi32, _mm512_srli_epi64, _mm512_srlv_epi32, _mm512_storeu_si512, _mm512_sub_epi32,
    _mm_cvtsi128_si32,
};

use super::{claim_candidate, steps_to, Cursor};

/// Lanes of a vector: turns searched side by side, permutation entries or
/// free slots looked at per iteration.
const LANES: usize = 16;

// The cursor fields `speculate` gathers, as 32-bit words of a `Cursor`.
const NEXT_WORD: usize = std::mem::offset_of!(Cursor, next) / 4;
const SKIP_WORD: usize = std::mem::offset_of!(Cursor, skip) / 4;
const _: () = assert!(size_of::<Cursor>() == 16, "a cursor is four 32-bit words");

/// The proof that this CPU runs AVX-512F: only [`Avx512::detect`] makes
/// one, so the loops are safe to call through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Avx512(());

impl Avx512 {
    pub(super) fn detect() -> Option<Self> {
        is_x86_feature_detected!("avx512f").then_some(Avx512(()))
    }

    /// See [`speculate`].
    pub(super) fn speculate(
        self,
        cursors: &mut [Cursor],
        round: &[u32],
        taken: &mut [u64],
        table: &mut [u32],
    ) {
        // SAFETY: `self` exists only where the CPU runs AVX-512F.
        unsafe { speculate(cursors, round, taken, table) }
    }

    /// See [`play`].
    pub(super) fn play(
        self,
        cursors: &mut [Cursor],
        turns: &[u32],
        taken: &mut [u64],
        table: &mut [u32],
    ) {
        // SAFETY: as in `speculate`.
        unsafe { play(cursors, turns, taken, table) }
    }

    /// See [`nearest_free`].
    pub(super) fn nearest_free(
        self,
        free: &[u32],
        next: u32,
        inverse: u32,
        scaled: u32,
        size: u32,
    ) -> Option<usize> {
        // SAFETY: as in `speculate`.
        unsafe { nearest_free(free, next, inverse, scaled, size) }
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn splat(x: u32) -> __m512i {
    _mm512_set1_epi32(x as i32)
}

/// The first `len` lanes (`len` <= 16).
fn first_lanes(len: usize) -> __mmask16 {
    ((1u32 << len) - 1) as __mmask16
}

/// `x mod size` lane by lane, for `x < 16 * size`: subtracting `8 * size`,
/// `4 * size`, `2 * size` and `size` wraps below zero exactly when `x` is
/// smaller, and the unsigned minimum keeps the lane that did not wrap.
#[inline]
#[target_feature(enable = "avx512f")]
fn reduce(x: __m512i, size: u32) -> __m512i {
    let mut x = x;
    for multiple in [8 * size, 4 * size, 2 * size, size] {
        x = _mm512_min_epu32(x, _mm512_sub_epi32(x, splat(multiple)));
    }
    x
}

/// Each lane's next permutation entry: `(next + skip) mod size`, where
/// `back = size - skip` (the scalar `Cursor::step`, without the branch).
#[inline]
#[target_feature(enable = "avx512f")]
fn step(next: __m512i, skip: __m512i, back: __m512i) -> __m512i {
    _mm512_min_epu32(_mm512_sub_epi32(next, back), _mm512_add_epi32(next, skip))
}

/// The lanes of `mask` whose slot is free in `taken`.
///
/// # Safety
/// Every slot of `mask` must be below `taken.len() * 64`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn free_lanes(taken: &[u64], slots: __m512i, mask: __mmask16) -> __mmask16 {
    // SAFETY: word `slot / 32` of `taken` is in bounds for every lane of
    // `mask` (the caller's promise); other lanes are not read.
    let words = unsafe {
        _mm512_mask_i32gather_epi32::<4>(
            _mm512_setzero_si512(),
            mask,
            _mm512_srli_epi32::<5>(slots),
            taken.as_ptr().cast(),
        )
    };
    let bits = _mm512_srlv_epi32(words, _mm512_and_si512(slots, splat(31)));
    _mm512_mask_testn_epi32_mask(mask, bits, splat(1))
}

/// The table's size, once checked that `taken` holds a bit per slot and
/// that sixteen times the size fits in a lane (as it does up to
/// `MAX_TABLE_SIZE`).
fn table_size(taken: &[u64], table: &[u32]) -> u32 {
    let size = u32::try_from(table.len())
        .ok()
        .filter(|size| size.checked_mul(16).is_some());
    let size = size.expect("the table fits in 32-bit lanes");
    assert!(taken.len() * 64 >= table.len(), "a bit per slot");
    size
}

#[inline]
#[target_feature(enable = "avx512f")]
fn store(vector: __m512i) -> [u32; LANES] {
    let mut lanes = [0u32; LANES];
    // SAFETY: `lanes` holds exactly one vector.
    unsafe { _mm512_storeu_si512(lanes.as_mut_ptr().cast(), vector) };
    lanes
}

/// Plays the turns of `round` (distinct backends) in order, sixteen at a
/// time: the same result as playing them one by one.
///
/// Each lane first finds its turn's candidate, the first free slot of its
/// backend's permutation as `taken` is before the group; every lane steps
/// every iteration, found or not, so that no gather waits for the one
/// before it. The candidates are then claimed in turn order: one an earlier
/// turn of the group took means searching on from it (the entries before
/// it were taken already, and slots are never freed).
///
/// Panics if a turn does not index `cursors`, a cursor is not within the
/// table's permutation or `taken` is not a bit per slot of `table`: the
/// gathers read memory by those numbers.
///
/// # Safety
/// The CPU must support AVX-512F ([`Avx512`]).
#[target_feature(enable = "avx512f")]
unsafe fn speculate(cursors: &mut [Cursor], round: &[u32], taken: &mut [u64], table: &mut [u32]) {
    let size = table_size(taken, table);
    let last = round.iter().copied().max().unwrap_or(0);
    assert!((last as usize) < cursors.len(), "turn {last} has no cursor");
    for group in round.chunks(LANES) {
        // SAFETY: the turns index `cursors`, checked above; `taken` holds
        // `size` bits (`table_size`).
        let found = unsafe { search(cursors, group, taken, size) };
        claim(cursors, group, &found, taken, table);
    }
}

/// A group's search results, lane by lane.
struct Candidates {
    /// The first slot of each backend's permutation found free.
    slots: [u32; LANES],
    /// The permutation entry after it.
    afters: [u32; LANES],
}

/// Each turn's candidate: the first free slot of its backend's permutation
/// from its cursor on.
///
/// # Safety
/// The CPU must support AVX-512F; every turn must index `cursors`, `taken`
/// hold `size` bits.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn search(cursors: &[Cursor], group: &[u32], taken: &[u64], size: u32) -> Candidates {
    let lanes = first_lanes(group.len());
    // SAFETY: the first `group.len()` lanes are loaded, from `group`.
    let turns = unsafe { _mm512_maskz_loadu_epi32(lanes, group.as_ptr().cast()) };
    let first_word = _mm512_mullo_epi32(turns, splat(4));
    let fields = cursors.as_ptr().cast::<i32>();
    // SAFETY: every turn indexes `cursors` (the caller's promise), and
    // the words gathered are fields of a `Cursor`.
    let (mut next, skip) = unsafe {
        let field = |word: usize| {
            _mm512_mask_i32gather_epi32::<4>(
                _mm512_setzero_si512(),
                lanes,
                first_word,
                fields.add(word),
            )
        };
        (field(NEXT_WORD), field(SKIP_WORD))
    };
    let outside = _mm512_mask_cmpge_epu32_mask(lanes, next, splat(size))
        | _mm512_mask_cmpge_epu32_mask(lanes, skip, splat(size));
    assert!(outside == 0, "a cursor is outside the table's permutation");
    let back = _mm512_sub_epi32(splat(size), skip);
    let mut slots = _mm512_setzero_si512();
    let mut searching = lanes;
    loop {
        // SAFETY: permutation entries are below `size`.
        let free = unsafe { free_lanes(taken, next, searching) };
        slots = _mm512_mask_mov_epi32(slots, free, next);
        searching &= !free;
        if searching == 0 {
            break;
        }
        next = step(next, skip, back);
    }
    Candidates {
        slots: store(slots),
        afters: store(step(slots, skip, back)),
    }
}

/// Claims the candidates of `group` in turn order (`claim_candidate`).
fn claim(
    cursors: &mut [Cursor],
    group: &[u32],
    found: &Candidates,
    taken: &mut [u64],
    table: &mut [u32],
) {
    for ((&turn, &slot), &after) in group.iter().zip(&found.slots).zip(&found.afters) {
        claim_candidate(&mut cursors[turn as usize], slot, after, taken, table);
    }
}

/// Plays the turns of `turns` (distinct backends) in order, each searching
/// sixteen permutation entries at a time (late in the build, when a turn
/// probes tens of slots), two turns at once.
///
/// Why two: a search ends on a random iteration, so the branch predictor
/// misses its exit about once per search, and everything after the miss
/// waits for it. Two searches in one loop, each keeping the first free
/// slot it saw, miss once per pair and overlap their gathers; the second
/// turn's candidate can only have been taken by the first turn.
///
/// Panics where `speculate` does; loops forever if no slot is free.
///
/// # Safety
/// The CPU must support AVX-512F ([`Avx512`]).
#[target_feature(enable = "avx512f")]
unsafe fn play(cursors: &mut [Cursor], turns: &[u32], taken: &mut [u64], table: &mut [u32]) {
    let size = table_size(taken, table);
    let mut pairs = turns.chunks_exact(2);
    for pair in &mut pairs {
        let (first, second) = (pair[0] as usize, pair[1] as usize);
        assert!(first != second, "a round's turns are distinct backends");
        let mut walks = [
            Walk::new(cursors[first], size),
            Walk::new(cursors[second], size),
        ];
        let mut found = [u32::MAX; 2];
        while found.contains(&u32::MAX) {
            for (walk, found) in walks.iter_mut().zip(&mut found) {
                // SAFETY: `taken` holds `size` bits (`table_size`).
                let slot = unsafe { walk.next_free(taken, size) };
                *found = std::hint::select_unpredictable(*found == u32::MAX, slot, *found);
            }
        }
        claim_slot(&mut cursors[first], found[0], taken, table);
        let second = &mut cursors[second];
        if found[1] == found[0] {
            second.next = found[1];
            // SAFETY: the CPU runs AVX-512F (our caller's promise).
            unsafe { play_one(second, taken, table, size) };
        } else {
            claim_slot(second, found[1], taken, table);
        }
    }
    if let [turn] = pairs.remainder() {
        // SAFETY: as above.
        unsafe { play_one(&mut cursors[*turn as usize], taken, table, size) };
    }
}

/// Plays one turn as `play` does, alone.
#[target_feature(enable = "avx512f")]
unsafe fn play_one(cursor: &mut Cursor, taken: &mut [u64], table: &mut [u32], size: u32) {
    let mut walk = Walk::new(*cursor, size);
    let slot = loop {
        // SAFETY: as in `Walk::next_free`.
        let slot = unsafe { walk.next_free(taken, size) };
        if slot != u32::MAX {
            break slot;
        }
    };
    claim_slot(cursor, slot, taken, table);
}

/// The cursor's backend takes `slot`, free, and moves past it.
fn claim_slot(cursor: &mut Cursor, slot: u32, taken: &mut [u64], table: &mut [u32]) {
    taken[(slot / 64) as usize] |= 1 << (slot % 64);
    table[slot as usize] = cursor.id;
    cursor.next = slot;
    cursor.step();
}

/// A backend's permutation walked sixteen entries at a time: entry `j` of
/// the sixteen from `base` is `base + (j * skip mod size)`.
struct Walk {
    offsets: __m512i,
    /// `16 * skip mod size`.
    stride: u32,
    base: u32,
}

impl Walk {
    /// Panics if the cursor is outside the permutation of a table of
    /// `size` slots.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn new(cursor: Cursor, size: u32) -> Self {
        assert!(
            cursor.next < size && cursor.skip < size,
            "the cursor is outside the table's permutation"
        );
        let lane_numbers = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        Walk {
            offsets: reduce(_mm512_mullo_epi32(lane_numbers, splat(cursor.skip)), size),
            // 16 * skip mod size, without a division (a turn's whole
            // search is often one step).
            stride: [8 * size, 4 * size, 2 * size, size]
                .into_iter()
                .fold(16 * cursor.skip, |x, multiple| {
                    x.min(x.wrapping_sub(multiple))
                }),
            base: cursor.next,
        }
    }

    /// The first of the next sixteen entries free in `taken`, or `u32::MAX`
    /// if none is; moves on by sixteen entries either way.
    ///
    /// # Safety
    /// `taken` must hold at least `size` bits (`table_size`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn next_free(&mut self, taken: &[u64], size: u32) -> u32 {
        // base and every offset are below size: one subtraction reduces.
        let sums = _mm512_add_epi32(splat(self.base), self.offsets);
        let slots = _mm512_min_epu32(sums, _mm512_sub_epi32(sums, splat(size)));
        // SAFETY: every lane is a slot below `size`.
        let free = unsafe { free_lanes(taken, slots, 0xffff) };
        self.base = if self.base >= size - self.stride {
            self.base - (size - self.stride)
        } else {
            self.base + self.stride
        };
        // The free lanes packed at the bottom: lane 0 is the first one, or
        // u32::MAX if none is.
        let first = _mm512_mask_compress_epi32(splat(u32::MAX), free, slots);
        _mm_cvtsi128_si32(_mm512_castsi512_si128(first)) as u32
    }
}

/// The index in `free` of the slot that a permutation now at `next`
/// reaches first, as `Endgame::nearest` finds it one slot at a time.
/// `inverse` is the inverse of the permutation's skip modulo `size` and
/// `scaled` is `floor(inverse * 2^32 / size)`.
///
/// # Safety
/// The CPU must support AVX-512F ([`Avx512`]); every slot of `free` and
/// `next` must be below `size`.
#[target_feature(enable = "avx512f")]
unsafe fn nearest_free(
    free: &[u32],
    next: u32,
    inverse: u32,
    scaled: u32,
    size: u32,
) -> Option<usize> {
    let lane_numbers = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let mut best = splat(u32::MAX);
    let mut best_index = _mm512_setzero_si512();
    let mut index = lane_numbers;
    let chunks = free.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        // SAFETY: `chunk` holds exactly sixteen u32.
        let slots = unsafe { _mm512_maskz_loadu_epi32(0xffff, chunk.as_ptr().cast()) };
        // (slot - next) mod size, as `reduce` does it.
        let below = _mm512_sub_epi32(slots, splat(next));
        let distance = _mm512_min_epu32(below, _mm512_add_epi32(below, splat(size)));
        // distance * inverse mod size, as `steps_to` computes it: the
        // quotient is the high half of distance * scaled, even and odd
        // lanes multiplied apart.
        let even = _mm512_srli_epi64::<32>(_mm512_mul_epu32(distance, splat(scaled)));
        let odd = _mm512_mul_epu32(_mm512_srli_epi64::<32>(distance), splat(scaled));
        let quotient = _mm512_mask_blend_epi32(0xaaaa, even, odd);
        let rest = _mm512_sub_epi32(
            _mm512_mullo_epi32(distance, splat(inverse)),
            _mm512_mullo_epi32(quotient, splat(size)),
        );
        let steps = _mm512_min_epu32(rest, _mm512_sub_epi32(rest, splat(size)));
        best = _mm512_min_epu32(best, steps);
        // Steps are distinct (a permutation), so equal means "new best".
        best_index = _mm512_mask_mov_epi32(best_index, _mm512_cmpeq_epi32_mask(best, steps), index);
        index = _mm512_add_epi32(index, splat(LANES as u32));
    }
    let mut nearest: Option<(u32, usize)> = store(best)
        .into_iter()
        .zip(store(best_index))
        .filter(|&(steps, _)| steps != u32::MAX)
        .min_by_key(|&(steps, _)| steps)
        .map(|(steps, index)| (steps, index as usize));
    let start = free.len() - tail.len();
    for (index, &slot) in (start..).zip(tail) {
        let steps = steps_to(slot, next, inverse, scaled, size);
        if nearest.is_none_or(|(best, _)| steps < best) {
            nearest = Some((steps, index));
        }
    }
    nearest.map(|(_, index)| index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maglev::{play as play_scalar, Endgame, Isa, NO_BACKEND};
    use proptest::prelude::*;

    /// The CPU's AVX-512F, or `None` (saying so: the calling test skips).
    fn avx512() -> Option<Avx512> {
        let cpu = Avx512::detect();
        if cpu.is_none() {
            eprintln!("note: this CPU has no AVX-512F, the vector loops are not tested");
        }
        cpu
    }

    fn cursor(next: u32, skip: u32, size: u32, id: u32) -> Cursor {
        Cursor {
            next,
            skip,
            back: size - skip,
            id,
        }
    }

    /// A table of `size` slots where only `free` are free.
    fn taken_except(size: u32, free: &[u32]) -> Vec<u64> {
        let mut taken = vec![0u64; (size as usize).div_ceil(64)];
        for slot in 0..size {
            if !free.contains(&slot) {
                taken[(slot / 64) as usize] |= 1 << (slot % 64);
            }
        }
        taken
    }

    /// Two backends whose first free slot is the same: the second turn of a
    /// pair, or of a group, must search on past the first turn's slot, as
    /// playing one by one does.
    #[test]
    fn turns_sharing_a_candidate_play_as_one_by_one() {
        let Some(cpu) = avx512() else { return };
        let size = 41;
        let free = [5, 20, 33];
        // Backend 0 walks 5, ...; backend 1 walks 5, 8, 11, ..., 20.
        let start = vec![cursor(5, 1, size, 7), cursor(5, 3, size, 9)];
        let (mut expected_cursors, mut expected_taken) = (start.clone(), taken_except(size, &free));
        let mut expected_table = vec![NO_BACKEND; size as usize];
        for cursor in &mut expected_cursors {
            play_scalar(cursor, &mut expected_taken, &mut expected_table);
        }
        assert_eq!(expected_table[5], 7);
        assert_eq!(expected_table[20], 9);
        type Loop = fn(Avx512, &mut [Cursor], &[u32], &mut [u64], &mut [u32]);
        let loops: [(&str, Loop); 2] = [("play", Avx512::play), ("speculate", Avx512::speculate)];
        for (name, run) in loops {
            let (mut cursors, mut taken) = (start.clone(), taken_except(size, &free));
            let mut table = vec![NO_BACKEND; size as usize];
            run(cpu, &mut cursors, &[0, 1], &mut taken, &mut table);
            assert_eq!(table, expected_table, "{name}: table");
            assert_eq!(taken, expected_taken, "{name}: taken");
            let positions = |c: &[Cursor]| c.iter().map(|c| c.next).collect::<Vec<_>>();
            assert_eq!(
                positions(&cursors),
                positions(&expected_cursors),
                "{name}: cursors"
            );
        }
    }

    #[test]
    #[should_panic(expected = "turn 2 has no cursor")]
    fn a_turn_without_a_cursor_panics_before_any_gather() {
        let Some(cpu) = Avx512::detect() else {
            panic!("turn 2 has no cursor (no AVX-512F: nothing to test)");
        };
        let size = 41;
        let mut cursors = vec![cursor(0, 1, size, 0), cursor(1, 2, size, 1)];
        let mut taken = vec![0u64; 1];
        let mut table = vec![NO_BACKEND; size as usize];
        cpu.speculate(&mut cursors, &[0, 2], &mut taken, &mut table);
    }

    #[test]
    #[should_panic(expected = "outside the table's permutation")]
    fn a_cursor_outside_the_table_panics_before_any_gather() {
        let Some(cpu) = Avx512::detect() else {
            panic!("outside the table's permutation (no AVX-512F: nothing to test)");
        };
        let size = 41;
        let mut cursors = vec![cursor(41, 1, size, 0)];
        let mut taken = vec![0u64; 1];
        let mut table = vec![NO_BACKEND; size as usize];
        cpu.speculate(&mut cursors, &[0], &mut taken, &mut table);
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x7665_6374),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Free lists of every length around a vector's (16), at every
        /// position and step of a permutation.
        #[test]
        fn nearest_free_matches_the_scalar_search(
            size in prop::sample::select(vec![41u32, 1009, 65537, 16_777_213]),
            seeds in prop::collection::vec(any::<u32>(), 0..=70),
            next in any::<u32>(),
            skip in any::<u32>(),
        ) {
            let Some(cpu) = avx512() else { return Ok(()) };
            let (next, skip) = (next % size, skip % (size - 1) + 1);
            let mut free: Vec<u32> = seeds.iter().map(|s| s % size).collect();
            free.sort_unstable();
            free.dedup();
            let inverse = crate::maglev::inverse_mod(skip, size);
            let scaled = ((u64::from(inverse) << 32) / u64::from(size)) as u32;
            let scalar = Endgame { free: free.clone(), isa: Isa::Scalar };
            let expected = scalar.nearest(next, inverse, scaled, size);
            let found = cpu.nearest_free(&free, next, inverse, scaled, size);
            prop_assert_eq!(found, expected);
        }
    }
}
