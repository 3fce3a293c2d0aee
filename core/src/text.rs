//! Text that came from someone else: which characters a name must not hide, and how to show
//! any string on a terminal without letting it drive the terminal.
//!
//! Why: model and run names, admin references and job names travel from agents and admin
//! clients to an operator's terminal (`flopmeter alerts`, `models`, `report`). A raw ESC or
//! BEL drives the terminal; U+202E reverses what follows; U+200B is invisible; U+2011 prints
//! as `-`. Names that differ only by such characters print identically and become separate
//! models, which splits one model's compute into totals that each look smaller.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Why a character must not appear in a name (model, run, stage), or `None` when it may.
pub fn suspicious(c: char) -> Option<&'static str> {
    let u = u32::from(c);
    if c.is_control() {
        return Some("a control character");
    }
    if matches!(u, 0x061C | 0x200E | 0x200F | 0x202A..=0x202E | 0x2066..=0x2069) {
        return Some("a bidirectional-text control");
    }
    if matches!(
        u,
        0x00AD
            | 0x034F
            | 0x115F
            | 0x1160
            | 0x17B4
            | 0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200D
            | 0x2060..=0x2065
            | 0x206A..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF9..=0xFFFB
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    ) {
        return Some("an invisible character");
    }
    if matches!(
        u,
        0x2010..=0x2015 | 0x2212 | 0x2E3A | 0x2E3B | 0xFE58 | 0xFE63 | 0xFF0D
    ) {
        return Some("a look-alike of '-'");
    }
    if matches!(
        u,
        0x00A0 | 0x1680 | 0x2000..=0x200A | 0x2028 | 0x2029 | 0x202F | 0x205F | 0x3000
    ) {
        return Some("a look-alike of a space");
    }
    None
}

/// The first character of `s` a name must not contain, with its position and why.
pub fn first_suspicious(s: &str) -> Option<(usize, char, &'static str)> {
    s.char_indices()
        .find_map(|(i, c)| suspicious(c).map(|why| (i, c, why)))
}

/// `s` with every character [`suspicious`] names written as `\u{XXXX}`, so a terminal shows
/// what is there instead of obeying it. Borrowed when there is nothing to escape.
pub fn escape_for_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| suspicious(c).is_some()) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if suspicious(c).is_some() {
            let _ = write!(out, "\\u{{{:04X}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_drives_or_deceives_a_terminal() {
        assert_eq!(
            escape_for_terminal("llama-70b 模型"),
            Cow::Borrowed("llama-70b 模型")
        );
        assert_eq!(
            escape_for_terminal("a\u{1b}[2Jb\u{7}"),
            "a\\u{001B}[2Jb\\u{0007}"
        );
        assert_eq!(escape_for_terminal("llama\u{2011}70b"), "llama\\u{2011}70b");
        assert_eq!(escape_for_terminal("\u{202e}gpj.exe"), "\\u{202E}gpj.exe");
        assert_eq!(escape_for_terminal("a\u{200b}b"), "a\\u{200B}b");
    }

    #[test]
    fn names_say_which_character_and_why() {
        assert_eq!(first_suspicious("llama-70b"), None);
        assert_eq!(first_suspicious("Ünïcødé-ok"), None);
        let (at, c, why) = first_suspicious("llama\u{200b}").unwrap();
        assert_eq!((at, c), (5, '\u{200b}'));
        assert!(why.contains("invisible"));
        assert!(
            first_suspicious("a\u{202e}b")
                .unwrap()
                .2
                .contains("bidirectional")
        );
        assert!(first_suspicious("a\u{2011}b").unwrap().2.contains("'-'"));
        assert!(first_suspicious("a\u{a0}b").unwrap().2.contains("space"));
        assert!(first_suspicious("a\tb").unwrap().2.contains("control"));
    }
}
