//! Shards for the shard tests: random layouts, and the part of a whole tensor a shard
//! holds (the reference the shards' outputs are compared with).

use dropkit::ShardLayout;

/// A small deterministic generator for shapes and cuts (not the crate's).
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// The values of `whole` (row-major, shape `layout.global_shape()`) that the shard holds,
/// in its local order.
pub fn slice_of<T: Copy>(whole: &[T], layout: &ShardLayout) -> Vec<T> {
    let shape = layout.shape();
    let n: usize = shape.iter().product();
    (0..n)
        .map(|mut i| {
            let mut c = vec![0; shape.len()];
            for a in (0..shape.len()).rev() {
                c[a] = i % shape[a];
                i /= shape[a];
            }
            whole[layout.global_index(&c).unwrap() as usize]
        })
        .collect()
}

/// A random layout: rank 1 to 5, lengths 1 to 9, each axis split with probability 1/2.
pub fn random_layout(rng: &mut Rng) -> ShardLayout {
    let rank = 1 + rng.below(5);
    random_layout_of_rank(rng, rank)
}

pub fn random_layout_of_rank(rng: &mut Rng, rank: usize) -> ShardLayout {
    let global: Vec<usize> = (0..rank).map(|_| 1 + rng.below(9)).collect();
    let (mut start, mut len) = (Vec::new(), Vec::new());
    for &g in &global {
        if rng.below(2) == 0 {
            start.push(0);
            len.push(g);
        } else {
            let s = rng.below(g);
            start.push(s);
            len.push(1 + rng.below(g - s));
        }
    }
    ShardLayout::new(&global, &start, &len).unwrap()
}

/// The shard's bias: its slice of the whole bias along the last axis.
pub fn last_axis_slice<T: Copy>(whole: &[T], layout: &ShardLayout) -> Vec<T> {
    let axis = layout.shape().len() - 1;
    let (start, len) = (layout.start()[axis], layout.shape()[axis]);
    whole[start..start + len].to_vec()
}

/// Whether the shard holds every row: every axis but the last is whole.
pub fn holds_every_row(layout: &ShardLayout) -> bool {
    let rank = layout.shape().len();
    layout.shape()[..rank - 1] == layout.global_shape()[..rank - 1]
}

/// Writes a shard's values (local order) into their places in `whole`, failing on an
/// element written twice.
pub fn place<T: Copy>(whole: &mut [Option<T>], shard: &[T], layout: &ShardLayout) {
    let shape = layout.shape();
    for (mut i, &v) in shard.iter().enumerate() {
        let mut c = vec![0; shape.len()];
        for a in (0..shape.len()).rev() {
            c[a] = i % shape[a];
            i /= shape[a];
        }
        let at = layout.global_index(&c).unwrap() as usize;
        assert!(whole[at].is_none(), "element {at} written twice");
        whole[at] = Some(v);
    }
}

/// The three partitions of a (b, s, h) tensor that the examples use: 4 ways along h, 3
/// along s, and 3 x 4 along both (lengths s / 3 and h / 4), as (name, the shards'
/// layouts).
pub fn s_and_h_partitions(global: [usize; 3]) -> Vec<(String, Vec<ShardLayout>)> {
    [(1, 4), (3, 1), (3, 4)]
        .into_iter()
        .map(|(s_parts, h_parts)| {
            let (s_len, h_len) = (global[1] / s_parts, global[2] / h_parts);
            let layouts = (0..s_parts)
                .flat_map(|si| (0..h_parts).map(move |hi| (si, hi)))
                .map(|(si, hi)| {
                    let start = [0, si * s_len, hi * h_len];
                    ShardLayout::new(&global, &start, &[global[0], s_len, h_len]).unwrap()
                })
                .collect();
            (format!("{s_parts} x {h_parts}"), layouts)
        })
        .collect()
}
