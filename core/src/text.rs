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

/// The first control, bidirectional or invisible character of free text (an admin's
/// reference or reason), with its position and why. Look-alikes of `-` and of a space are
/// allowed there: text is not a name, and they are escaped when printed.
pub fn first_hidden(s: &str) -> Option<(usize, char, &'static str)> {
    s.char_indices().find_map(|(i, c)| match suspicious(c) {
        Some(why) if !why.starts_with("a look-alike") => Some((i, c, why)),
        _ => None,
    })
}

/// `s` with every control, bidirectional and invisible character written as `\uXXXX` (a
/// UTF-16 surrogate pair beyond the BMP), so a terminal shows what is there instead of
/// obeying it. The form is also a valid JSON escape, so JSON output stays JSON. Look-alikes
/// of `-` and of a space are left alone: they drive nothing, our own reports use the en dash,
/// and names that hold them are refused at the door. Borrowed when there is nothing to
/// escape.
pub fn escape_for_terminal(s: &str) -> Cow<'_, str> {
    escape_for_terminal_keeping(s, &[])
}

/// [`escape_for_terminal`], leaving the characters of `keep` alone (a whole document keeps
/// its line breaks).
pub fn escape_for_terminal_keeping<'a>(s: &'a str, keep: &[char]) -> Cow<'a, str> {
    let escape = |c: char| {
        suspicious(c).is_some_and(|why| !why.starts_with("a look-alike")) && !keep.contains(&c)
    };
    if !s.chars().any(escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if escape(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{u:04X}");
            }
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
            "a\\u001B[2Jb\\u0007"
        );
        assert_eq!(
            escape_for_terminal("1.0e3 \u{2013} 3.0e3"),
            Cow::Borrowed("1.0e3 \u{2013} 3.0e3")
        );
        assert_eq!(escape_for_terminal("\u{202e}gpj.exe"), "\\u202Egpj.exe");
        assert_eq!(escape_for_terminal("a\u{200b}b"), "a\\u200Bb");
        assert_eq!(escape_for_terminal("tag\u{e0041}"), "tag\\uDB40\\uDC41");
        assert_eq!(
            escape_for_terminal_keeping("a\nb\u{1b}", &['\n']),
            "a\nb\\u001B"
        );
        // Still JSON: the escapes decode to the same string.
        let json = escape_for_terminal("\"x\u{202e}\u{e0041}\"").into_owned();
        assert_eq!(
            serde_json::from_str::<String>(&json).unwrap(),
            "x\u{202e}\u{e0041}"
        );
    }

    #[test]
    fn free_text_may_hold_look_alikes_but_nothing_hidden() {
        assert_eq!(first_hidden("GPAI\u{2011}2026 no\u{a0}42"), None);
        assert!(first_hidden("ref\u{202e}").is_some());
        assert!(first_hidden("ref\n2").is_some());
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
