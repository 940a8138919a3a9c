//! The framing of stateful fuzz inputs: records separated by [`SEP`], each a kind byte followed
//! by its body. Seeds are written with [`join`]; any byte string is a valid input.

/// Record separator: never in valid JSON (a raw NUL), rare in audio, easy for a mutator to insert
/// (it is in every target's dictionary, `fuzz/dict/records.dict`).
pub const SEP: &[u8] = b"|\0|";

/// The records of `data`: `(kind, body)`, empty records skipped.
pub fn records(data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = Some(data);
    std::iter::from_fn(move || loop {
        let chunk = rest?;
        let record = match find(chunk, SEP) {
            Some(at) => {
                rest = Some(&chunk[at + SEP.len()..]);
                &chunk[..at]
            }
            None => {
                rest = None;
                chunk
            }
        };
        if let Some((kind, body)) = record.split_first() {
            return Some((*kind, body));
        }
    })
}

/// A fuzz input made of these records.
pub fn join<'a>(records: impl IntoIterator<Item = (u8, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (kind, body)) in records.into_iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(SEP);
        }
        out.push(kind);
        out.extend_from_slice(body);
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_and_split_are_inverse() {
        let recs: Vec<(u8, &[u8])> = vec![(b'T', b"{\"a\":1}"), (b'B', &[0, 1, 2, 0xFF]), (b'U', b"")];
        let data = join(recs.clone());
        assert_eq!(records(&data).collect::<Vec<_>>(), recs);
        assert_eq!(records(b"").count(), 0);
        assert_eq!(records(b"|\0||\0|Tx").collect::<Vec<_>>(), vec![(b'T', &b"x"[..])]);
    }
}
