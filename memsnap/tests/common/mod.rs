//! Synthetic memory images for the tests: pages of known classes.
#![allow(dead_code)]

use memsnap::PAGE_SIZE;

/// A small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A page of text-like bytes (compressible, not zero).
pub fn text_page(rng: &mut Rng, page: &mut [u8]) {
    const WORDS: [&str; 8] = [
        "memory ",
        "snapshot ",
        "page ",
        "sandbox ",
        "strata ",
        "fork ",
        "zero ",
        "parent ",
    ];
    let mut at = 0;
    while at < page.len() {
        let word = WORDS[rng.below(8) as usize].as_bytes();
        let n = word.len().min(page.len() - at);
        page[at..at + n].copy_from_slice(&word[..n]);
        at += n;
    }
}

/// An image of `pages` pages (plus `tail` bytes of a last partial page):
/// about half zero, a quarter text, a quarter random, in runs.
pub fn image(seed: u64, pages: usize, tail: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut image = vec![0u8; pages * PAGE_SIZE + tail];
    let mut p = 0;
    while p < pages {
        let run = (1 + rng.below(24) as usize).min(pages - p);
        let class = rng.below(4);
        for q in p..p + run {
            let page = &mut image[q * PAGE_SIZE..(q + 1) * PAGE_SIZE];
            match class {
                0 | 1 => {}
                2 => text_page(&mut rng, page),
                _ => rng.fill(page),
            }
        }
        p += run;
    }
    if tail > 0 {
        let start = pages * PAGE_SIZE;
        rng.fill(&mut image[start..]);
    }
    image
}

/// A child of `parent`: some pages changed (returned: their count, the
/// pages that are new and not zero), some zeroed, the rest the same.
pub fn child_of(parent: &[u8], seed: u64) -> (Vec<u8>, usize) {
    let mut rng = Rng::new(seed);
    let mut child = parent.to_vec();
    let pages = parent.len() / PAGE_SIZE;
    let mut changed = std::collections::BTreeSet::new();
    for _ in 0..pages / 10 {
        let q = rng.below(pages as u64) as usize;
        let page = &mut child[q * PAGE_SIZE..(q + 1) * PAGE_SIZE];
        match rng.below(3) {
            0 => {
                page.fill(0);
                changed.remove(&q);
            }
            1 => {
                text_page(&mut rng, page);
                changed.insert(q);
            }
            _ => {
                rng.fill(page);
                changed.insert(q);
            }
        }
    }
    (child, changed.len())
}
