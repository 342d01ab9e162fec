//! Which decoder layers go on which device when one model is split across several (pipeline
//! placement). The original's `auto_configure_device_map` counts the image encoder as 4 layers,
//! the embeddings and the head as 1 each, and hands out 38 / N "layers" per GPU; here the
//! parts are weighed in bytes, so devices of different sizes and quantized weights place right.

use std::fmt;
use std::ops::Range;

use crate::config::DecoderConfig;

/// What a split model puts on its devices, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementNeeds {
    /// Parts that stay on the first device: the image encoder, the input embeddings, the final
    /// norm and the LM head.
    pub first_device: u64,
    /// Each decoder layer in order: its weights and its KV cache at the planned context.
    pub layers: Vec<u64>,
}

impl PlacementNeeds {
    /// A decoder's needs from its configuration: each layer's weights at `weight_bytes` a value
    /// plus its KV cache for `sequences` × `context` positions at `kv_bytes` a value; the first
    /// device holds the embeddings, the final norm and the head at `weight_bytes` (two tables
    /// even when tied: burn keeps the embedding and the head's transposed copy), plus
    /// `first_extra` (an image encoder).
    pub fn for_decoder(c: &DecoderConfig, weight_bytes: u64, kv_bytes: u64, sequences: usize, context: usize, first_extra: u64) -> Self {
        let (d, ff) = (c.hidden_size as u64, c.intermediate_size as u64);
        let (q, kv) = ((c.num_heads * c.head_dim) as u64, (c.num_kv_heads * c.head_dim) as u64);
        let biases = if c.qkv_bias { q + 2 * kv } else { 0 } + if c.o_bias { d } else { 0 };
        let values = d * (q + 2 * kv) + q * d + 3 * d * ff + 2 * d + biases;
        let cache = 2 * kv * (sequences * context) as u64 * kv_bytes;
        let first = (2 * c.vocab_size as u64 * d + d) * weight_bytes + first_extra;
        PlacementNeeds { first_device: first, layers: vec![values * weight_bytes + cache; c.num_layers] }
    }
}

/// One device's part of a [`Placement`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceShare {
    /// The decoder layers it runs (contiguous; empty when it is not needed).
    pub layers: Range<usize>,
    /// Bytes placed on it.
    pub bytes: u64,
    /// Bytes it offered.
    pub capacity: u64,
}

/// Contiguous runs of layers per device, in device order, the first device holding the
/// [`PlacementNeeds::first_device`] parts too; activations pass from one device to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// One share per device given to [`place`].
    pub shares: Vec<DeviceShare>,
}

impl Placement {
    /// For each decoder layer, the index of the device that runs it.
    pub fn layer_devices(&self) -> Vec<usize> {
        self.shares.iter().enumerate().flat_map(|(device, s)| s.layers.clone().map(move |_| device)).collect()
    }

    /// How many devices run at least one layer or the first device's parts.
    pub fn devices_used(&self) -> usize {
        self.shares.iter().enumerate().filter(|(i, s)| *i == 0 || !s.layers.is_empty()).count()
    }
}

/// Why no placement exists.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    /// No device was given.
    #[error("no device to place the model on")]
    NoDevices,
    /// The model, split as evenly as layers allow, is larger than the devices.
    #[error("the model needs {needed} bytes on device {device} ({what}) but it offers {capacity}")]
    DoesNotFit {
        /// The device that runs short (its index in the list given).
        device: usize,
        /// What it would hold there.
        needed: u64,
        /// What it offers.
        capacity: u64,
        /// The parts it would hold, in words.
        what: String,
    },
}

/// Splits the layers into contiguous runs so that the fullest device, as a fraction of its
/// capacity, is as empty as possible (devices given by their free bytes, in order).
pub fn place(needs: &PlacementNeeds, capacities: &[u64]) -> Result<Placement, PlacementError> {
    let first_parts = |capacity: u64| PlacementError::DoesNotFit { device: 0, needed: needs.first_device, capacity, what: describe(0, &(0..0)) };
    let Some(&first_capacity) = capacities.first() else { return Err(PlacementError::NoDevices) };
    if needs.first_device > first_capacity {
        return Err(first_parts(first_capacity));
    }
    // The fullest fraction is found by bisection: filling each device up to a fraction of its
    // capacity, in order, is the best a contiguous split can do for that fraction. Above `hi`
    // the largest device alone could take everything, so the fill always succeeds there.
    let total = needs.first_device + needs.layers.iter().sum::<u64>();
    let largest = capacities.iter().copied().max().unwrap_or(1).max(1);
    let (mut lo, mut hi) = (0.0f64, 2.0 * (total as f64 / largest as f64).max(1.0));
    for _ in 0..64 {
        let mid = (lo + hi) / 2.0;
        if fill(needs, capacities, mid).is_some() { hi = mid } else { lo = mid }
    }
    let shares = fill(needs, capacities, hi).ok_or_else(|| first_parts(first_capacity))?;
    match shares.iter().enumerate().find(|(_, s)| s.bytes > s.capacity) {
        Some((device, s)) => Err(PlacementError::DoesNotFit { device, needed: s.bytes, capacity: s.capacity, what: describe(device, &s.layers) }),
        None => Ok(Placement { shares }),
    }
}

/// The shares when each device is filled to at most `fraction` of its capacity, in order;
/// `None` when some part (the first device's, or a single layer) fits nowhere that way.
fn fill(needs: &PlacementNeeds, capacities: &[u64], fraction: f64) -> Option<Vec<DeviceShare>> {
    let limit = |d: usize| capacities[d] as f64 * fraction;
    let mut shares: Vec<DeviceShare> = capacities.iter().map(|&capacity| DeviceShare { layers: 0..0, bytes: 0, capacity }).collect();
    if needs.first_device as f64 > limit(0) {
        return None;
    }
    shares[0].bytes = needs.first_device;
    let mut device = 0;
    for (l, &bytes) in needs.layers.iter().enumerate() {
        while (shares[device].bytes + bytes) as f64 > limit(device) {
            device += 1;
            if device == capacities.len() {
                return None;
            }
            shares[device].layers = l..l;
        }
        shares[device].bytes += bytes;
        shares[device].layers.end = l + 1;
    }
    // Devices after the last used one start where the layers end (empty runs).
    let end = needs.layers.len();
    for s in shares.iter_mut().skip(device + 1) {
        s.layers = end..end;
    }
    Some(shares)
}

/// "layers 14–31", with the first device's own parts named.
fn describe(device: usize, layers: &Range<usize>) -> String {
    let run = format!("layers {}–{}", layers.start, layers.end.saturating_sub(1));
    match (device, layers.is_empty()) {
        (0, true) => "the image encoder, embeddings and LM head".to_string(),
        (0, false) => format!("the image encoder, embeddings, LM head and {run}"),
        (_, true) => "no layers".to_string(),
        (_, false) => run,
    }
}

impl fmt::Display for Placement {
    /// One line per device: which layers, and its bytes against what it offers.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gb = |b: u64| b as f64 / 1e9;
        for (device, s) in self.shares.iter().enumerate() {
            writeln!(f, "device {device}: {} ({} layers), {:.2} GB of {:.2} GB", describe(device, &s.layers), s.layers.len(), gb(s.bytes), gb(s.capacity))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(first: u64, layers: usize, each: u64) -> PlacementNeeds {
        PlacementNeeds { first_device: first, layers: vec![each; layers] }
    }

    #[test]
    fn one_device_takes_every_layer() {
        let p = place(&needs(6, 32, 1), &[100]).unwrap();
        assert_eq!(p.shares, vec![DeviceShare { layers: 0..32, bytes: 38, capacity: 100 }]);
    }

    #[test]
    fn two_equal_devices_split_as_the_original_does() {
        // The original's count for two GPUs: 6 "layers" of encoder, embeddings and head, then
        // 38 / 2 = 19 per GPU: layers 0–12 on GPU 0 (6 + 13 = 19), 13–31 on GPU 1.
        let p = place(&needs(6, 32, 1), &[24, 24]).unwrap();
        assert_eq!(p.shares.iter().map(|s| s.layers.clone()).collect::<Vec<_>>(), vec![0..13, 13..32]);
        assert_eq!(p.shares.iter().map(|s| s.bytes).collect::<Vec<_>>(), vec![19, 19]);
    }

    #[test]
    fn a_larger_device_takes_more_layers() {
        // 40 units over capacities 30 and 10: the fullest fraction is smallest with 30 / 10.
        let p = place(&needs(0, 40, 1), &[30, 10]).unwrap();
        assert_eq!(p.shares.iter().map(|s| s.layers.len()).collect::<Vec<_>>(), vec![30, 10]);
    }

    #[test]
    fn layers_of_different_sizes_balance_by_bytes() {
        let n = PlacementNeeds { first_device: 0, layers: vec![5, 1, 1, 1, 1, 1] };
        let p = place(&n, &[10, 10]).unwrap();
        assert_eq!(p.shares.iter().map(|s| s.layers.clone()).collect::<Vec<_>>(), vec![0..1, 1..6]);
    }

    #[test]
    fn unneeded_devices_get_no_layers() {
        let p = place(&needs(1, 2, 1), &[100, 100, 100]).unwrap();
        let used: Vec<usize> = p.shares.iter().map(|s| s.layers.len()).collect();
        assert_eq!(used.iter().sum::<usize>(), 2);
        assert!(p.shares.iter().all(|s| s.bytes <= s.capacity));
        assert!(p.shares.windows(2).all(|w| w[0].layers.end == w[1].layers.start), "contiguous: {:?}", p.shares);
    }

    #[test]
    fn a_model_larger_than_the_devices_is_refused_naming_the_device() {
        assert_eq!(place(&needs(0, 1, 1), &[]), Err(PlacementError::NoDevices));
        let err = place(&needs(30, 4, 1), &[24, 24]).unwrap_err();
        assert_eq!(err, PlacementError::DoesNotFit { device: 0, needed: 30, capacity: 24, what: "the image encoder, embeddings and LM head".into() });
        // 38 units on 20 + 10: the most even split (26 | 12, 1.3 and 1.2 of capacity) still
        // overflows the first device.
        let err = place(&needs(6, 32, 1), &[20, 10]).unwrap_err();
        assert!(matches!(err, PlacementError::DoesNotFit { device: 0, needed: 26, capacity: 20, .. }), "{err:?}");
        assert!(err.to_string().contains("LM head and layers 0–19"), "{err}");
        // One layer larger than any device.
        let err = place(&PlacementNeeds { first_device: 1, layers: vec![1, 50, 1] }, &[40, 40]).unwrap_err();
        assert!(matches!(err, PlacementError::DoesNotFit { device: 1, needed: 51, capacity: 40, .. }), "{err:?}");
    }

    #[test]
    fn layer_devices_follow_the_shares() {
        let p = place(&needs(6, 32, 1), &[24, 24]).unwrap();
        let on = p.layer_devices();
        assert_eq!(on.len(), 32);
        assert_eq!((on[12], on[13], on[31]), (0, 1, 1));
        assert_eq!(p.devices_used(), 2);
        // A model that one device holds whole still spreads: the fullest device is emptier so.
        assert_eq!(place(&needs(0, 2, 1), &[100, 100, 100]).unwrap().devices_used(), 2);
    }

    #[test]
    fn decoder_needs_count_internlm_7b() {
        // InternLM-7B: 32 layers of 4096 wide, MLP 11,008, q/k/v/o biases, an untied head of
        // 103,168 rows. Per layer 4·4096² + 3·4096·11,008 + 2·4096 + 4·4096 = 202,399,744 values
        // (6.48 G values over 32 layers, 12.95 GB in f16).
        let c = DecoderConfig::internlm_7b();
        let n = PlacementNeeds::for_decoder(&c, 2, 2, 5, 2048, 7);
        // f16 KV cache of 5 beams × 2,048 positions: 5 · 2 · 4096 · 2048 · 2 bytes = 160 MiB a layer.
        assert_eq!(n.layers, vec![202_399_744 * 2 + 5 * 33_554_432; 32]);
        assert_eq!(n.first_device, (2 * 103_168 * 4096 + 4096) * 2 + 7);
        // With the image encoder's 1.094 G values in f16 (EVA-ViT-g's 39 blocks, the Q-Former and
        // the projection, counted from their shapes), two equal GPUs get the original's split.
        let xcomposer = PlacementNeeds::for_decoder(&c, 2, 2, 5, 2048, 2 * 1_094_252_160);
        let p = place(&xcomposer, &[21_600_000_000; 2]).unwrap();
        assert_eq!(p.shares.iter().map(|s| s.layers.clone()).collect::<Vec<_>>(), vec![0..13, 13..32]);
        assert_eq!(p.shares.iter().map(|s| s.bytes / 10_000_000).collect::<Vec<_>>(), vec![1132, 1087]);
    }

    #[test]
    fn the_plan_prints_a_line_per_device() {
        let p = place(&needs(6_000_000_000, 32, 1_000_000_000), &[24_000_000_000, 24_000_000_000]).unwrap();
        let text = p.to_string();
        assert!(text.contains("device 0: the image encoder, embeddings, LM head and layers 0–12 (13 layers), 19.00 GB of 24.00 GB"), "{text}");
        assert!(text.contains("device 1: layers 13–31 (19 layers), 19.00 GB of 24.00 GB"), "{text}");
    }
}
