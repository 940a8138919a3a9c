//! G.711 μ-law and A-law, table-driven.
//!
//! Decoding is one lookup in a 256-entry table. Encoding is one lookup in a table indexed by the
//! sample's top 14 (μ-law) or 13 (A-law) bits — the resolution G.711 works at — built once on
//! first use. The values follow the classic Sun Microsystems reference implementation (the one
//! behind `audioop.lin2ulaw` / `lin2alaw`), which quantises `sample >> 2` (μ-law) and
//! `sample >> 3` (A-law); the tests check known values of that reference.

use std::sync::LazyLock;

const BIAS: i32 = 0x84;
const CLIP: i32 = 8159;
const SEG_UEND: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
const SEG_AEND: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

/// μ-law code → 16-bit linear sample.
pub static ULAW_TO_LINEAR: [i16; 256] = build_ulaw_decode();
/// A-law code → 16-bit linear sample.
pub static ALAW_TO_LINEAR: [i16; 256] = build_alaw_decode();

static LINEAR_TO_ULAW: LazyLock<Box<[u8; 1 << 14]>> = LazyLock::new(|| {
    let mut t = Box::new([0u8; 1 << 14]);
    for (i, slot) in t.iter_mut().enumerate() {
        // Index = the top 14 bits of the sample; sign-extend back to the 14-bit value.
        let v14 = ((i as i32) << 18) >> 18;
        *slot = ulaw_encode_14(v14);
    }
    t
});

static LINEAR_TO_ALAW: LazyLock<Box<[u8; 1 << 13]>> = LazyLock::new(|| {
    let mut t = Box::new([0u8; 1 << 13]);
    for (i, slot) in t.iter_mut().enumerate() {
        let v13 = ((i as i32) << 19) >> 19;
        *slot = alaw_encode_13(v13);
    }
    t
});

const fn build_ulaw_decode() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        let u = !(i as u8) as i32;
        let mut v = ((u & 0x0F) << 3) + BIAS;
        v <<= (u & 0x70) >> 4;
        t[i] = if u & 0x80 != 0 { (BIAS - v) as i16 } else { (v - BIAS) as i16 };
        i += 1;
    }
    t
}

const fn build_alaw_decode() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        let a = (i as i32) ^ 0x55;
        let mut v = (a & 0x0F) << 4;
        let seg = (a & 0x70) >> 4;
        match seg {
            0 => v += 8,
            1 => v += 0x108,
            _ => {
                v += 0x108;
                v <<= seg - 1;
            }
        }
        t[i] = if a & 0x80 != 0 { v as i16 } else { -v as i16 };
        i += 1;
    }
    t
}

fn segment(v: i32, ends: &[i32; 8]) -> i32 {
    ends.iter().position(|e| v <= *e).map_or(8, |p| p as i32)
}

/// μ-law of a 14-bit two's-complement sample (Sun reference `linear2ulaw` after `>> 2`).
fn ulaw_encode_14(v14: i32) -> u8 {
    let (mut v, mask) = if v14 < 0 { (-v14, 0x7F) } else { (v14, 0xFF) };
    if v > CLIP {
        v = CLIP;
    }
    v += BIAS >> 2;
    let seg = segment(v, &SEG_UEND);
    if seg >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let u = (seg << 4) | ((v >> (seg + 1)) & 0x0F);
    (u ^ mask) as u8
}

/// A-law of a 13-bit two's-complement sample (Sun reference `linear2alaw` after `>> 3`).
fn alaw_encode_13(v13: i32) -> u8 {
    let (v, mask) = if v13 >= 0 { (v13, 0xD5) } else { (-v13 - 1, 0x55) };
    let seg = segment(v, &SEG_AEND);
    if seg >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let mut a = seg << 4;
    a |= if seg < 2 { (v >> 1) & 0x0F } else { (v >> seg) & 0x0F };
    (a ^ mask) as u8
}

#[inline]
pub fn linear_to_ulaw(s: i16) -> u8 {
    LINEAR_TO_ULAW[((s >> 2) as u16 & 0x3FFF) as usize]
}

#[inline]
pub fn linear_to_alaw(s: i16) -> u8 {
    LINEAR_TO_ALAW[((s >> 3) as u16 & 0x1FFF) as usize]
}

#[inline]
pub fn ulaw_to_linear(c: u8) -> i16 {
    ULAW_TO_LINEAR[c as usize]
}

#[inline]
pub fn alaw_to_linear(c: u8) -> i16 {
    ALAW_TO_LINEAR[c as usize]
}

pub fn encode_ulaw(samples: &[i16], out: &mut Vec<u8>) {
    let t = &**LINEAR_TO_ULAW;
    out.extend(samples.iter().map(|s| t[((s >> 2) as u16 & 0x3FFF) as usize]));
}

pub fn encode_alaw(samples: &[i16], out: &mut Vec<u8>) {
    let t = &**LINEAR_TO_ALAW;
    out.extend(samples.iter().map(|s| t[((s >> 3) as u16 & 0x1FFF) as usize]));
}

pub fn decode_ulaw(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|c| ULAW_TO_LINEAR[*c as usize]));
}

pub fn decode_alaw(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|c| ALAW_TO_LINEAR[*c as usize]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_known_values() {
        // Decoding (ITU-T G.711 table 2 / Sun reference, 16-bit scaled).
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0xFE), 8);
        assert_eq!(ulaw_to_linear(0x7E), -8);
        assert_eq!(ulaw_to_linear(0xEF), 132);
        assert_eq!(ulaw_to_linear(0xDF), 396);
        assert_eq!(ulaw_to_linear(0x8F), 16764);
        // Encoding (audioop.lin2ulaw values).
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(-1), 0x7E);
        assert_eq!(linear_to_ulaw(1), 0xFF);
        assert_eq!(linear_to_ulaw(8), 0xFE);
        assert_eq!(linear_to_ulaw(100), 0xF2);
        assert_eq!(linear_to_ulaw(1000), 0xCE);
        assert_eq!(linear_to_ulaw(-1000), 0x4E);
        assert_eq!(linear_to_ulaw(32767), 0x80);
        assert_eq!(linear_to_ulaw(-32768), 0x00);
    }

    #[test]
    fn alaw_known_values() {
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(alaw_to_linear(0xD4), 24);
        assert_eq!(alaw_to_linear(0xC5), 264);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(8), 0xD5);
        assert_eq!(linear_to_alaw(16), 0xD4);
        assert_eq!(linear_to_alaw(1000), 0xFA);
        assert_eq!(linear_to_alaw(-1000), 0x7A);
        assert_eq!(linear_to_alaw(32767), 0xAA);
        assert_eq!(linear_to_alaw(-32768), 0x2A);
    }

    #[test]
    fn encoder_matches_the_reference_across_the_range() {
        // (sample, lin2ulaw, lin2alaw) from the Sun reference (Python audioop).
        let table: [(i16, u8, u8); 28] = [
            (-32768, 0x00, 0x2A),
            (-30000, 0x02, 0x28),
            (-20001, 0x0C, 0x26),
            (-12345, 0x17, 0x3D),
            (-4097, 0x2F, 0x05),
            (-1025, 0x4D, 0x65),
            (-257, 0x67, 0x45),
            (-33, 0x7A, 0x57),
            (-9, 0x7D, 0x55),
            (-5, 0x7E, 0x55),
            (-4, 0x7E, 0x55),
            (-3, 0x7E, 0x55),
            (-2, 0x7E, 0x55),
            (2, 0xFF, 0xD5),
            (3, 0xFF, 0xD5),
            (4, 0xFE, 0xD5),
            (5, 0xFE, 0xD5),
            (31, 0xFB, 0xD4),
            (129, 0xEF, 0xDD),
            (255, 0xE7, 0xDA),
            (513, 0xDB, 0xF5),
            (2047, 0xBE, 0xEA),
            (4095, 0xAF, 0x9A),
            (8191, 0x9F, 0x8A),
            (16384, 0x8F, 0xA5),
            (24000, 0x88, 0xA2),
            (32124, 0x80, 0xAA),
            (32767, 0x80, 0xAA),
        ];
        for (s, u, a) in table {
            assert_eq!(linear_to_ulaw(s), u, "ulaw({s})");
            assert_eq!(linear_to_alaw(s), a, "alaw({s})");
        }
    }

    #[test]
    fn every_code_round_trips() {
        for c in 0..=255u8 {
            // μ-law 0x7F is "negative zero": it decodes to 0, which encodes as 0xFF.
            let want = if c == 0x7F { 0xFF } else { c };
            assert_eq!(linear_to_ulaw(ulaw_to_linear(c)), want, "ulaw {c:#04x}");
            assert_eq!(linear_to_alaw(alaw_to_linear(c)), c, "alaw {c:#04x}");
        }
    }

    #[test]
    fn encoding_is_monotonic_and_close() {
        let mut prev_u = i16::MIN;
        let mut prev_a = i16::MIN;
        for s in (i16::MIN..=i16::MAX).step_by(7) {
            let u = ulaw_to_linear(linear_to_ulaw(s));
            let a = alaw_to_linear(linear_to_alaw(s));
            assert!(u >= prev_u && a >= prev_a, "monotonic at {s}");
            prev_u = u;
            prev_a = a;
            // Quantisation error: at most one step of the (logarithmic) segment, ≤ 1/16 of the value.
            let tol = (s as i32).abs() / 16 + 16;
            if (s as i32).abs() <= 32124 {
                assert!((u as i32 - s as i32).abs() <= tol, "ulaw {s} → {u}");
                assert!((a as i32 - s as i32).abs() <= tol, "alaw {s} → {a}");
            }
        }
    }

    #[test]
    fn slice_helpers_match_the_scalar_ones() {
        let samples: Vec<i16> = (0..500).map(|i| ((i * 977) % 65536 - 32768) as i16).collect();
        let (mut u, mut a) = (vec![], vec![]);
        encode_ulaw(&samples, &mut u);
        encode_alaw(&samples, &mut a);
        assert!(samples.iter().zip(&u).all(|(s, c)| linear_to_ulaw(*s) == *c));
        assert!(samples.iter().zip(&a).all(|(s, c)| linear_to_alaw(*s) == *c));
        let (mut du, mut da) = (vec![], vec![]);
        decode_ulaw(&u, &mut du);
        decode_alaw(&a, &mut da);
        assert_eq!(du.len(), 500);
        assert_eq!(da[0], alaw_to_linear(a[0]));
    }
}
