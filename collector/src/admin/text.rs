//! Strings admin clients send (`by`, an acknowledgement's `reference`, a dismissal's
//! `reason`, a registry entry's names and sources): bounded, and free of anything that
//! would drive or deceive the terminal of whoever reads them later (`flopmeter alerts`,
//! `model show`, the audit export). A 3 MB reference and raw escape sequences were once
//! accepted and stored for ever in the audit log (issue 12).

use tonic::Status;

/// Longest actor name (`by`).
pub const MAX_ACTOR_LEN: usize = 256;

/// Longest free text (a reference, a reason, a source): a paragraph, not a document.
pub const MAX_TEXT_LEN: usize = 4096;

/// Refuses an actor name or a model name that is too long or holds a control,
/// bidirectional, invisible or look-alike character (two names that print the same must be
/// the same name).
pub fn check_name(field: &str, value: &str) -> Result<(), Status> {
    if value.len() > MAX_ACTOR_LEN {
        return Err(Status::invalid_argument(format!(
            "{field} is {} bytes long; at most {MAX_ACTOR_LEN} are accepted",
            value.len()
        )));
    }
    if let Some((at, c, why)) = flopmeter_core::text::first_suspicious(value) {
        return Err(Status::invalid_argument(format!(
            "{field} has {why} (U+{:04X}) at byte {at}: names must print as what they are",
            u32::from(c)
        )));
    }
    Ok(())
}

/// Refuses free text that is too long or holds a control (a line break included),
/// bidirectional or invisible character.
pub fn check_text(field: &str, value: &str) -> Result<(), Status> {
    if value.len() > MAX_TEXT_LEN {
        return Err(Status::invalid_argument(format!(
            "{field} is {} bytes long; at most {MAX_TEXT_LEN} are accepted (give a reference \
             to the document, not the document)",
            value.len()
        )));
    }
    if let Some((at, c, why)) = flopmeter_core::text::first_hidden(value) {
        return Err(Status::invalid_argument(format!(
            "{field} has {why} (U+{:04X}) at byte {at}: write it on one line, as plain text",
            u32::from(c)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_plain() {
        assert!(check_name("by", "alice").is_ok());
        assert!(check_text("reference", "AI Office GPAI\u{2011}2026-0042").is_ok());
        for (f, v) in [
            ("by", "al\u{1b}[2Jice".to_string()),
            ("by", "a".repeat(MAX_ACTOR_LEN + 1)),
            ("by", "ali\u{200b}ce".to_string()),
        ] {
            let e = check_name(f, &v).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(f), "{e}");
        }
        for v in [
            "x".repeat(3 << 20),
            "ref\u{7}".to_string(),
            "ref\u{202e}".to_string(),
            "two\nlines".to_string(),
        ] {
            let e = check_text("reference", &v).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{v:?}");
        }
    }
}
