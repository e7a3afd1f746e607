//! Nix's base-32 encoding ("nixbase32"). Pure: no I/O.
//!
//! The alphabet omits `e`, `o`, `u` and `t`. Encoding reads the byte string as a
//! little-endian integer and emits its 5-bit groups from the most significant one,
//! so character `k` (counted from the end) holds bits `5k..5k+4`.

/// The 32 characters Nix uses, in value order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Value of each ASCII byte in [`ALPHABET`], or `0xff` when it is not a nixbase32 character.
const DECODE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 32 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Why a string is not the nixbase32 form of a byte string of the expected length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length does not match `encoded_len(expected bytes)`.
    #[error("nixbase32 string has {actual} characters, expected {expected}")]
    Length { expected: usize, actual: usize },
    /// A byte outside the alphabet.
    #[error("invalid nixbase32 character {0:?} (the alphabet is 0-9 and a-z without e, o, u, t)")]
    Character(char),
    /// The string encodes bits beyond the byte length (Nix rejects these too).
    #[error("nixbase32 string has non-zero padding bits")]
    Padding,
}

/// Number of characters that encode `len` bytes.
pub const fn encoded_len(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        (len * 8 - 1) / 5 + 1
    }
}

/// Number of bytes encoded by `len` characters, if `len` is a valid encoded length.
pub fn decoded_len(len: usize) -> Option<usize> {
    let bytes = len * 5 / 8;
    (encoded_len(bytes) == len).then_some(bytes)
}

/// Whether `byte` is a character of the alphabet.
pub fn is_valid_char(byte: u8) -> bool {
    DECODE[byte as usize] != 0xff
}

/// Encodes `bytes` as nixbase32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for k in (0..len).rev() {
        let bit = k * 5;
        let (i, j) = (bit / 8, bit % 8);
        let mut c = u16::from(bytes[i]) >> j;
        if i + 1 < bytes.len() {
            c |= u16::from(bytes[i + 1]) << (8 - j);
        }
        out.push(ALPHABET[(c & 31) as usize] as char);
    }
    out
}

/// Decodes a nixbase32 string into exactly `expected_len` bytes.
pub fn decode(text: &[u8], expected_len: usize) -> Result<Vec<u8>, DecodeError> {
    let want = encoded_len(expected_len);
    if text.len() != want {
        return Err(DecodeError::Length {
            expected: want,
            actual: text.len(),
        });
    }
    let mut out = vec![0u8; expected_len];
    for (n, &ch) in text.iter().rev().enumerate() {
        let digit = DECODE[ch as usize];
        if digit == 0xff {
            return Err(DecodeError::Character(ch as char));
        }
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        out[i] |= digit << j;
        let carry = u16::from(digit) >> (8 - j);
        if carry != 0 {
            if i + 1 >= expected_len {
                return Err(DecodeError::Padding);
            }
            out[i + 1] |= carry as u8;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn golden_values_from_nix() {
        let cases = [
            (
                "38365ac185f583658eaba7af859926cbafc6a06a7bc3f41e3ddd60be1a7ebb90",
                "145vgqdbwq6x7lgg9hvvdahcdbyb4scqbbx7mf76b0zmhp0mldiq",
            ),
            (
                "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
                "094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic",
            ),
            (
                "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13",
                "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
            ),
            (
                "a17ad11d9c87ccd9c864c7c46978d8fd7724d2a2fada4b47fa313bd62c9abcd7",
                "1mxwk8ndcfriz93lpnpslb928xzxv1w6ki67ck4dkk47khfx2ym1",
            ),
        ];
        for (h, b32) in cases {
            assert_eq!(encode(&hex(h)), b32);
            assert_eq!(decode(b32.as_bytes(), 32).unwrap(), hex(h));
        }
    }

    #[test]
    fn lengths() {
        assert_eq!(encoded_len(0), 0);
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(64), 103);
        assert_eq!(encoded_len(16), 26);
        assert_eq!(decoded_len(52), Some(32));
        assert_eq!(decoded_len(32), Some(20));
        assert_eq!(decoded_len(51), None);
        assert_eq!(encode(&[]), "");
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        assert!(matches!(decode(b"a", 32), Err(DecodeError::Length { .. })));
        assert!(matches!(decode(b"0", 1), Err(DecodeError::Length { .. })));
        let mut bad = "145vgqdbwq6x7lgg9hvvdahcdbyb4scqbbx7mf76b0zmhp0mldiq".to_string();
        bad.replace_range(3..4, "e");
        assert_eq!(decode(bad.as_bytes(), 32), Err(DecodeError::Character('e')));
        // 52 chars encode 260 bits; the top 4 must be zero for 32 bytes.
        let over = format!(
            "z{}",
            &"145vgqdbwq6x7lgg9hvvdahcdbyb4scqbbx7mf76b0zmhp0mldiq"[1..]
        );
        assert_eq!(decode(over.as_bytes(), 32), Err(DecodeError::Padding));
    }

    #[test]
    fn round_trips_every_length() {
        for len in 0..70usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(decode(encode(&bytes).as_bytes(), len).unwrap(), bytes);
        }
    }
}
