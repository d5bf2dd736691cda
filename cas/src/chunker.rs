//! Chunkers: where a byte stream is cut into chunks.
//!
//! File data is cut by FastCDC (content-defined, so an insertion shifts only
//! the chunks around it); memory and block images are cut at fixed offsets,
//! so a page keeps its chunk from one snapshot to the next. Both report
//! all-zero chunks so the blob layer can store them as holes.

use crate::config::ChunkingConfig;

/// How a blob's bytes are cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunking {
    /// FastCDC with the store's min/avg/max (file data).
    ContentDefined,
    /// Fixed-size chunks of the store's `fixed_size` (memory, block images).
    FixedSize,
}

/// Cuts buffered input into chunks with one store's parameters.
#[derive(Clone, Copy, Debug)]
pub struct Chunker {
    chunking: Chunking,
    config: ChunkingConfig,
}

impl Chunker {
    /// A chunker of the given kind with the store's parameters.
    pub fn new(chunking: Chunking, config: ChunkingConfig) -> Chunker {
        Chunker { chunking, config }
    }

    /// Input a caller should buffer before asking for cuts: enough for any
    /// chunk to be complete.
    pub fn max_chunk_len(&self) -> usize {
        match self.chunking {
            Chunking::ContentDefined => self.config.cdc_max as usize,
            Chunking::FixedSize => self.config.fixed_size as usize,
        }
    }

    /// Appends to `cuts` the lengths of the chunks at the start of `buf`
    /// that are final. Without `eof`, the tail that could still grow into a
    /// longer chunk is left uncut; with `eof`, everything is cut. Returns the
    /// number of bytes covered by the new cuts.
    pub fn cut(&self, buf: &[u8], eof: bool, cuts: &mut Vec<usize>) -> usize {
        let max = self.max_chunk_len();
        let mut start = 0;
        match self.chunking {
            Chunking::FixedSize => {
                while buf.len() - start >= max || (eof && start < buf.len()) {
                    let len = max.min(buf.len() - start);
                    cuts.push(len);
                    start += len;
                }
            }
            Chunking::ContentDefined => {
                let cdc = fastcdc::v2020::FastCDC::new(
                    buf,
                    self.config.cdc_min as usize,
                    self.config.cdc_avg as usize,
                    self.config.cdc_max as usize,
                );
                while buf.len() - start >= max || (eof && start < buf.len()) {
                    let (_, end) = cdc.cut(start, buf.len() - start);
                    debug_assert!(end > start && end - start <= max);
                    cuts.push(end - start);
                    start = end;
                }
            }
        }
        start
    }
}

/// True when every byte is zero.
pub fn is_all_zero(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(64);
    let blocks_zero = words
        .by_ref()
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0);
    blocks_zero && words.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn cut_all(chunker: &Chunker, data: &[u8], feed: usize) -> Vec<usize> {
        // Feed the data in pieces of `feed` bytes as a stream would arrive.
        let mut cuts = Vec::new();
        let mut buffered = Vec::new();
        for piece in data.chunks(feed) {
            buffered.extend_from_slice(piece);
            let used = chunker.cut(&buffered, false, &mut cuts);
            buffered.drain(..used);
        }
        chunker.cut(&buffered, true, &mut cuts);
        cuts
    }

    #[test]
    fn cdc_cuts_respect_bounds_and_do_not_depend_on_how_input_arrives() {
        let config = ChunkingConfig::default();
        let chunker = Chunker::new(Chunking::ContentDefined, config);
        let data = pseudo_random(3 << 20, 7);
        let a = cut_all(&chunker, &data, 4096);
        let b = cut_all(&chunker, &data, 1 << 20);
        assert_eq!(a, b);
        assert_eq!(a.iter().sum::<usize>(), data.len());
        for len in &a[..a.len() - 1] {
            assert!((config.cdc_min as usize..=config.cdc_max as usize).contains(len));
        }
        let avg = data.len() / a.len();
        assert!(avg > 32 << 10 && avg < 128 << 10, "average chunk {avg}");
    }

    #[test]
    fn cdc_resynchronises_after_an_insertion() {
        let chunker = Chunker::new(Chunking::ContentDefined, ChunkingConfig::default());
        let data = pseudo_random(2 << 20, 11);
        let mut shifted = b"inserted bytes".to_vec();
        shifted.extend_from_slice(&data);
        let offsets = |cuts: Vec<usize>, base: usize| -> Vec<usize> {
            cuts.iter()
                .scan(0, |end, len| {
                    *end += len;
                    Some(*end - base)
                })
                .collect()
        };
        let original: std::collections::HashSet<_> = offsets(cut_all(&chunker, &data, 65536), 0)
            .into_iter()
            .collect();
        let moved = offsets(cut_all(&chunker, &shifted, 65536), 14);
        let shared = moved.iter().filter(|o| original.contains(o)).count();
        assert!(shared + 2 >= moved.len(), "{shared} of {}", moved.len());
    }

    #[test]
    fn fixed_chunker_cuts_at_fixed_offsets() {
        let config = ChunkingConfig {
            fixed_size: 4096,
            ..ChunkingConfig::default()
        };
        let chunker = Chunker::new(Chunking::FixedSize, config);
        let cuts = cut_all(&chunker, &vec![1u8; 10_000], 3000);
        assert_eq!(cuts, vec![4096, 4096, 1808]);
    }

    #[test]
    fn zero_detection() {
        assert!(is_all_zero(&[]));
        assert!(is_all_zero(&[0; 100_000]));
        let mut bytes = vec![0u8; 100_000];
        bytes[99_999] = 1;
        assert!(!is_all_zero(&bytes));
        bytes[99_999] = 0;
        bytes[3] = 1;
        assert!(!is_all_zero(&bytes));
    }
}
