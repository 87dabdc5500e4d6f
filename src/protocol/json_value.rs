//! The extent of the JSON value at the start of a text, checked in one pass without
//! building anything: how the payload of a plain publish is checked as it is read.
//!
//! It answers only when sure. `Some(length)` is a value serde_json reads too, over the
//! same bytes (its grammar is serde_json's `RawValue` grammar: syntax only, so a lone
//! `\ud800` escape or `1e999` pass, as they pass there). `None` is anything else,
//! invalid or merely unusual (whitespace before the value, nesting past
//! [`MAX_NESTING`]): the caller then reads the text with serde_json, whose errors
//! say what is wrong.

use serde_json::value::RawValue;

/// Deepest nesting of arrays and objects followed here; deeper values go to serde_json
/// (which the frame's own depth limit bounds).
const MAX_NESTING: u32 = 64;

/// The length of the JSON value that `text` starts with. What follows the value is
/// not looked at: a caller that expects a delimiter there checks it.
pub fn checked_len(text: &str) -> Option<usize> {
    let text = text.as_bytes();
    let mut open = Containers::default();
    let mut at = 0;
    'value: loop {
        match *text.get(at)? {
            bracket @ (b'{' | b'[') => {
                let object = bracket == b'{';
                open.push(object)?;
                at = skip_whitespace(text, at + 1);
                let close = if object { b'}' } else { b']' };
                if text.get(at) == Some(&close) {
                    open.pop();
                    at += 1;
                } else {
                    if object {
                        at = member_name(text, at)?;
                    }
                    continue 'value;
                }
            }
            b'"' => at = string_end(text, at + 1)?,
            b't' => at = literal_end(text, at, b"true")?,
            b'f' => at = literal_end(text, at, b"false")?,
            b'n' => at = literal_end(text, at, b"null")?,
            b'-' | b'0'..=b'9' => at = number_end(text, at)?,
            _ => return None,
        }
        // After a value: close the containers it ends, up to the next value.
        loop {
            let Some(object) = open.innermost() else { return Some(at) };
            at = skip_whitespace(text, at);
            match *text.get(at)? {
                b',' => {
                    at = skip_whitespace(text, at + 1);
                    if object {
                        at = member_name(text, at)?;
                    }
                    continue 'value;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            open.pop();
            at += 1;
        }
    }
}

/// The JSON value that `text` starts with, checked by [`checked_len`], as serde_json's
/// `RawValue` (borrowed, as serde_json borrows one when it reads it), and the text
/// after it.
pub fn split_raw(text: &str) -> Option<(&RawValue, &str)> {
    let (value, rest) = text.split_at(checked_len(text)?);
    // SAFETY: `RawValue` is `#[repr(transparent)]` over `str` (serde_json makes its
    // borrowed values with this same cast), and its one invariant, that the text is
    // one JSON value with nothing around it, is what `checked_len` measured.
    let raw = unsafe { &*(std::ptr::from_ref::<str>(value) as *const RawValue) };
    Some((raw, rest))
}

// The cast above relies on a `&RawValue` being a `&str`: a pointer and a length.
const _: () = assert!(size_of::<&RawValue>() == size_of::<&str>());

/// The arrays and objects open around the value being read, innermost last: one bit
/// each, set for an object.
#[derive(Default)]
struct Containers {
    kinds: u64,
    depth: u32,
}

impl Containers {
    fn push(&mut self, object: bool) -> Option<()> {
        if self.depth == MAX_NESTING {
            return None;
        }
        self.kinds = self.kinds << 1 | u64::from(object);
        self.depth += 1;
        Some(())
    }

    fn pop(&mut self) {
        self.kinds >>= 1;
        self.depth -= 1;
    }

    /// Whether the innermost container is an object; `None` at the top level.
    fn innermost(&self) -> Option<bool> {
        (self.depth > 0).then_some(self.kinds & 1 == 1)
    }
}

fn skip_whitespace(text: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = text.get(at) {
        at += 1;
    }
    at
}

/// A member's name, its colon and the whitespace around it, from `at`: the position
/// of the member's value.
fn member_name(text: &[u8], at: usize) -> Option<usize> {
    if text.get(at) != Some(&b'"') {
        return None;
    }
    let at = skip_whitespace(text, string_end(text, at + 1)?);
    if text.get(at) != Some(&b':') {
        return None;
    }
    Some(skip_whitespace(text, at + 1))
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// The bytes of `word` that end or escape a string or may not stand in one (`"`, `\`
/// and control characters), as their high bits. Exact for the lowest such byte, which
/// is all that is asked of it (a borrow can mark bytes above it too).
fn special_bytes(word: u64) -> u64 {
    let below = |limit: u8| word.wrapping_sub(ONES * u64::from(limit)) & !word & HIGHS;
    let equal = |byte: u8| {
        let cleared = word ^ (ONES * u64::from(byte));
        cleared.wrapping_sub(ONES) & !cleared & HIGHS
    };
    below(0x20) | equal(b'"') | equal(b'\\')
}

fn is_special(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// How many bytes at the start of `bytes` stand in a JSON string as they are (not a
/// quote, a backslash or a control character).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline]
pub(crate) fn plain_len(bytes: &[u8]) -> usize {
    // Sixteen bytes a step with SSE2, which every x86-64 processor has: most strings
    // (keys, ids, short values) end within the first step, which is inlined where it
    // is called; the rest is not, so that the first step stays a few instructions.
    if bytes.len() < VECTOR {
        return plain_len_by_words(bytes);
    }
    special_in_vector(bytes, 0).unwrap_or_else(|| plain_len_after_a_vector(bytes))
}

/// [`plain_len`] of a text of at least a vector whose first vector is plain.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(never)]
fn plain_len_after_a_vector(bytes: &[u8]) -> usize {
    let mut at = VECTOR;
    while at + VECTOR <= bytes.len() {
        if let Some(found) = special_in_vector(bytes, at) {
            return at + found;
        }
        at += VECTOR;
        if at == LONG_FROM {
            return long_plain_len(bytes, at);
        }
    }
    if at == bytes.len() {
        return at;
    }
    // The last step overlaps the one before it, whose bytes are known plain: the
    // lowest special byte it finds is still the first.
    let last = bytes.len() - VECTOR;
    special_in_vector(bytes, last).map_or(bytes.len(), |found| last + found)
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
const VECTOR: usize = 16;

/// Where a run of plain bytes counts as long: past it, [`long_plain_len`] reads on.
const LONG_FROM: usize = 64;

// The vector steps reach the long run's start exactly.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
const _: () = assert!(LONG_FROM % VECTOR == 0);

/// [`plain_len`] of a long run whose first `from` bytes are plain (a payload's text,
/// kilobytes of it): the quote or backslash that ends it found by memchr's vector
/// search, wider than sixteen bytes where the processor allows, then the bytes before
/// it checked for control characters by a loop the compiler vectorises.
#[inline(never)]
fn long_plain_len(bytes: &[u8], from: usize) -> usize {
    let rest = &bytes[from..];
    let end = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
    let run = &rest[..end];
    if run.iter().fold(false, |control, &b| control | (b < 0x20)) {
        return from + run.iter().position(|&b| b < 0x20).expect("a control character");
    }
    from + end
}

/// The position of the first special byte among the sixteen from `at`, if any.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
fn special_in_vector(bytes: &[u8], at: usize) -> Option<usize> {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    let chunk = &bytes[at..at + VECTOR];
    // SAFETY: SSE2 is compiled in (the cfg above; it is part of the x86-64 baseline),
    // so these intrinsics are available; the load is unaligned and reads exactly the
    // sixteen bytes of `chunk`.
    let mask = unsafe {
        let chunk = _mm_loadu_si128(chunk.as_ptr().cast());
        // A byte is a control character when its minimum with 0x1f is itself.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(chunk, _mm_set1_epi8(0x1f)), chunk);
        let quote = _mm_cmpeq_epi8(chunk, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(chunk, _mm_set1_epi8(b'\\' as i8));
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
    };
    (mask != 0).then(|| mask.trailing_zeros() as usize)
}

/// How many bytes at the start of `bytes` stand in a JSON string as they are (not a
/// quote, a backslash or a control character).
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
pub(crate) fn plain_len(bytes: &[u8]) -> usize {
    portable_plain_len(bytes)
}

/// [`plain_len`] on processors without a vector step here: words for the first
/// [`LONG_FROM`] bytes, then the long run's search.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "sse2"))))]
fn portable_plain_len(bytes: &[u8]) -> usize {
    let head = &bytes[..bytes.len().min(LONG_FROM)];
    let found = plain_len_by_words(head);
    if found < head.len() || head.len() == bytes.len() {
        return found;
    }
    long_plain_len(bytes, LONG_FROM)
}

/// [`plain_len`] eight bytes at a time, for texts shorter than a vector and on
/// processors without a vector step here.
#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), inline(never))]
fn plain_len_by_words(bytes: &[u8]) -> usize {
    let len = bytes.len();
    if len < 8 {
        return bytes.iter().position(|&b| is_special(b)).unwrap_or(len);
    }
    let mut at = 0;
    loop {
        // The last word may overlap the one before: its bytes are known plain, so the
        // lowest special byte found is still the first.
        let start = at.min(len - 8);
        let word = u64::from_le_bytes(bytes[start..start + 8].try_into().expect("eight bytes"));
        let special = special_bytes(word);
        if special != 0 {
            return start + (special.trailing_zeros() / 8) as usize;
        }
        if start == len - 8 {
            return len;
        }
        at += 8;
    }
}

/// The end of a string whose contents start at `at` (after its opening quote): the
/// position after its closing quote.
fn string_end(text: &[u8], mut at: usize) -> Option<usize> {
    loop {
        at += plain_len(&text[at..]);
        match *text.get(at)? {
            b'"' => return Some(at + 1),
            b'\\' => at = escape_end(text, at + 1)?,
            _ => return None, // a control character
        }
    }
}

/// The end of an escape whose letter is at `at`.
fn escape_end(text: &[u8], at: usize) -> Option<usize> {
    match *text.get(at)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(at + 1),
        b'u' => {
            let digits = text.get(at + 1..at + 5)?;
            digits.iter().all(u8::is_ascii_hexdigit).then_some(at + 5)
        }
        _ => None,
    }
}

fn literal_end(text: &[u8], at: usize, literal: &[u8]) -> Option<usize> {
    text[at..].starts_with(literal).then_some(at + literal.len())
}

/// The end of the number at `at`: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`,
/// as long as it goes.
fn number_end(text: &[u8], mut at: usize) -> Option<usize> {
    let digits_from = |at: usize| at + text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if text[at] == b'-' {
        at += 1;
    }
    match *text.get(at)? {
        b'0' => at += 1,
        b'1'..=b'9' => at = digits_from(at + 1),
        _ => return None,
    }
    if text.get(at) == Some(&b'.') {
        let end = digits_from(at + 1);
        if end == at + 1 {
            return None;
        }
        at = end;
    }
    if let Some(b'e' | b'E') = text.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = text.get(at) {
            at += 1;
        }
        let end = digits_from(at);
        if end == at {
            return None;
        }
        at = end;
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    fn serde_reads(text: &str) -> bool {
        serde_json::from_str::<&RawValue>(text).is_ok()
    }

    /// The property: whatever is taken is a value serde_json reads over the same
    /// bytes, and whatever serde_json reads (with nothing around it, nested no deeper
    /// than followed here) is taken whole.
    fn agrees_with_serde(text: &str) -> Result<(), TestCaseError> {
        match checked_len(text) {
            Some(len) => prop_assert!(serde_reads(&text[..len]), "took {len} bytes of {text:?}"),
            None => {
                let surrounded = text.trim() != text;
                let deep = text.bytes().filter(|b| matches!(b, b'[' | b'{')).count() > MAX_NESTING as usize;
                prop_assert!(surrounded || deep || !serde_reads(text), "refused {text:?}");
            }
        }
        if serde_reads(text) && text.trim() == text && checked_len(text).is_some() {
            prop_assert_eq!(checked_len(text), Some(text.len()), "{:?}", text);
        }
        Ok(())
    }

    fn json_values() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            r#"["\\/\x00-\x1fa-z\xe9\x{1f600}]{0,12}"#.prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(r#"[a-z"\\\x01]{0,6}"#, inner, 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn every_value_serde_writes_is_taken_whole(value in json_values()) {
            for text in [value.to_string(), serde_json::to_string_pretty(&value).unwrap()] {
                prop_assert_eq!(checked_len(&text), Some(text.len()), "{}", text);
            }
        }

        #[test]
        fn values_changed_by_one_byte_are_judged_as_serde_judges_them(
            value in json_values(),
            at in any::<prop::sample::Index>(),
            byte in prop::sample::select(b"[]{}\",:0123456789-+.eEtrufalsn \t\\/\x01\x1fx".to_vec()),
            change in 0..3u8,
        ) {
            let mut bytes = value.to_string().into_bytes();
            let at = at.index(bytes.len() + 1);
            match change {
                0 if at < bytes.len() => bytes[at] = byte,
                1 if at < bytes.len() => { bytes.remove(at); }
                _ => bytes.insert(at, byte),
            }
            if let Ok(text) = String::from_utf8(bytes) {
                agrees_with_serde(&text)?;
            }
        }

        #[test]
        fn any_text_of_json_pieces_is_judged_as_serde_judges_it(
            text in r#"(\[|\]|\{|\}|"|,|:|[0-9]|-|\+|\.|e|E|true|false|null|\\u00e9|\\n|\\|\\x| |\t|é|\x01|a){0,24}"#,
        ) {
            agrees_with_serde(&text)?;
        }
    }

    #[test]
    fn a_split_value_is_the_text_it_was_cut_from() {
        let text = r#"{"a":[1,"x"]},"message_id":"7"}"#;
        let (raw, rest) = split_raw(text).unwrap();
        assert_eq!(raw.get(), r#"{"a":[1,"x"]}"#);
        assert!(std::ptr::eq(raw.get().as_ptr(), text.as_ptr()));
        assert_eq!(rest, r#","message_id":"7"}"#);
        assert_eq!(raw.to_owned().get(), serde_json::from_str::<&RawValue>(raw.get()).unwrap().get());
        assert!(split_raw(r#"{"a":},"#).is_none());
    }

    #[test]
    fn numbers_are_read_as_serde_reads_them() {
        for good in
            ["0", "-0", "12", "-12.5", "1e5", "1E+5", "1.5e-07", "1e999", "123456789012345678901234567890"]
        {
            assert_eq!(checked_len(good), Some(good.len()), "{good}");
        }
        for bad in ["-", "1.", ".5", "1e", "1e+", "-a", "+1"] {
            assert_eq!(checked_len(bad), None, "{bad}");
        }
        // A number ends where its grammar ends; what follows is the caller's to check.
        assert_eq!(checked_len("01"), Some(1));
        assert_eq!(checked_len("[01]"), None);
    }

    #[test]
    fn strings_are_checked_past_a_vector_at_a_time() {
        let long = format!("\"{}\"", "abcdefgh".repeat(5));
        assert_eq!(checked_len(&long), Some(long.len()));
        for (special, verdict) in
            [("\\\"", true), ("\\u00e9", true), ("\\x", false), ("\u{1}", false), ("\u{7f}é", true)]
        {
            for position in 0..70 {
                let text = format!("\"{}{special}{}\"", "a".repeat(position), "b".repeat(9));
                assert_eq!(checked_len(&text).is_some(), verdict, "{text:?}");
                assert_eq!(serde_reads(&text), verdict, "{text:?}");
            }
        }
        for control in 0..0x20u8 {
            for position in 0..70 {
                let text = format!("\"{}{}{}\"", "a".repeat(position), char::from(control), "b".repeat(9));
                assert_eq!(checked_len(&text), None, "{text:?}");
                assert!(!serde_reads(&text), "{text:?}");
            }
        }
        // A quote found in the middle of a word ends the string there.
        assert_eq!(checked_len(r#""abc"defghijk"#), Some(5));
    }

    proptest! {
        #[test]
        fn the_plain_run_is_found_as_byte_by_byte(text in prop::collection::vec(
            prop::sample::select(b"aaaab\"\\\x00\x1f\x20\x7f\x80\xff".to_vec()), 0..80,
        )) {
            let expected = text.iter().position(|&b| is_special(b)).unwrap_or(text.len());
            prop_assert_eq!(plain_len(&text), expected);
            prop_assert_eq!(plain_len_by_words(&text), expected);
            prop_assert_eq!(portable_plain_len(&text), expected);
        }

        #[test]
        fn a_long_plain_run_ends_where_its_first_special_byte_is(
            run in 0..300usize,
            special in prop::sample::select(b"\"\\\x00\x01\x1f".to_vec()),
            after in prop::sample::select(b"a\"\x01".to_vec()),
        ) {
            let mut text = vec![b'x'; run];
            text.push(special);
            text.push(after);
            prop_assert_eq!(plain_len(&text), run);
            prop_assert_eq!(plain_len(&text[..run]), run);
            prop_assert_eq!(plain_len_by_words(&text), run);
            prop_assert_eq!(portable_plain_len(&text), run);
            prop_assert_eq!(portable_plain_len(&text[..run]), run);
        }
    }

    #[test]
    fn nesting_past_the_limit_is_left_to_serde() {
        let depth = MAX_NESTING as usize;
        let deepest = "[".repeat(depth) + &"]".repeat(depth);
        assert_eq!(checked_len(&deepest), Some(deepest.len()));
        let deeper = "[".repeat(depth + 1) + &"]".repeat(depth + 1);
        assert_eq!(checked_len(&deeper), None);
        assert!(serde_reads(&deeper));
        let objects = r#"{"a":"#.repeat(depth) + "1" + &"}".repeat(depth);
        assert_eq!(checked_len(&objects), Some(objects.len()));
    }

    #[test]
    fn structure_is_checked() {
        for good in [r#"{"a" : [ 1 , {} , [] , "x" ] }"#, "[true,false,null]", r#"{"":{"":{}}}"#, "\"\""] {
            assert_eq!(checked_len(good), Some(good.len()), "{good}");
        }
        for bad in [
            "[1,]",
            r#"{"a":1,}"#,
            r#"{"a"}"#,
            r#"{1:2}"#,
            "[1 2]",
            "[}",
            r#"{"a":1]"#,
            "tru",
            " 1",
            "",
            "[",
            "nul",
        ] {
            assert_eq!(checked_len(bad), None, "{bad}");
        }
    }
}
