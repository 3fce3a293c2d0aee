//! Agent authentication: a token per agent id, presented as `authorization: Bearer <token>`.

use std::collections::HashMap;

use tonic::metadata::MetadataMap;

use crate::metrics::Refusal;

/// The bearer token of a request, if any.
pub fn bearer(md: &MetadataMap) -> Option<&str> {
    md.get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Compares without an early exit, so the time taken does not reveal how much of a guessed
/// token was right.
pub fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks an agent against the tokens table (`None` = tokens not required).
pub fn check_agent(
    tokens: Option<&HashMap<String, String>>,
    agent_id: &str,
    presented: Option<&str>,
) -> Result<(), Refusal> {
    let Some(tokens) = tokens else {
        return Ok(());
    };
    let Some(expected) = tokens.get(agent_id) else {
        return Err(Refusal::UnknownAgent);
    };
    match presented {
        Some(p) if same_token(p, expected) => Ok(()),
        _ => Err(Refusal::BadToken),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let t: HashMap<String, String> = [("a".to_string(), "s3cret".to_string())].into();
        assert_eq!(check_agent(None, "x", None), Ok(()));
        assert_eq!(check_agent(Some(&t), "a", Some("s3cret")), Ok(()));
        assert_eq!(
            check_agent(Some(&t), "a", Some("s3cres")),
            Err(Refusal::BadToken)
        );
        assert_eq!(check_agent(Some(&t), "a", None), Err(Refusal::BadToken));
        assert_eq!(
            check_agent(Some(&t), "b", Some("s3cret")),
            Err(Refusal::UnknownAgent)
        );
    }
}
