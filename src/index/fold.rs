//! Search tokens: profile words folded so that case and accents do not matter.
//!
//! "Jaan Tallinn, Tallinn, Eesti" and "jaan tallinn" meet on the same tokens; "Zoë" and
//! "zoe" too. Folding is transliteration to ASCII (deunicode), lower case, and splitting
//! on anything that is not a letter or digit.

use super::entry::Profile;

/// Shortest token indexed (single letters would match everyone).
pub const TOKEN_LEN_MIN: usize = 2;
/// Longest token indexed.
pub const TOKEN_LEN_MAX: usize = 32;
/// Most tokens taken from one profile.
pub const TOKENS_PER_PROFILE_MAX: usize = 16;

/// The folded tokens of free text, deduplicated, in first-seen order.
pub fn tokens(text: &str) -> Vec<String> {
    let folded = deunicode::deunicode(text).to_ascii_lowercase();
    let mut out: Vec<String> = Vec::new();
    for t in folded.split(|c: char| !c.is_ascii_alphanumeric()) {
        if (TOKEN_LEN_MIN..=TOKEN_LEN_MAX).contains(&t.len()) && !out.iter().any(|o| o == t) {
            out.push(t.to_owned());
        }
    }
    out
}

/// The tokens a user's profile has: username, display name, city, country, language.
/// A search's results must have every word of the query among them.
pub fn profile_tokens(user: &str, p: &Profile) -> Vec<String> {
    let text = [user, &p.display_name, &p.city, &p.country, &p.language].join(" ");
    let mut t = tokens(&text);
    t.truncate(TOKENS_PER_PROFILE_MAX);
    t
}

/// The tokens a user's search postings are written under: the username's and the display
/// name's words. City, country and language narrow a search (its results' profiles must
/// have them) but start none: a language or a capital is a word a large share of all
/// users have, and its postings, all in its one slot, made that slot's replicas the
/// busiest super nodes of the cluster (docs/scale.md).
pub fn name_tokens(user: &str, p: &Profile) -> Vec<String> {
    let mut t = tokens(&[user, &p.display_name].join(" "));
    t.truncate(TOKENS_PER_PROFILE_MAX);
    t
}

/// The index key of a token's posting for `user`: postings of one token share a prefix
/// and therefore a slot (the slot is chosen by [`token_slot_key`]).
pub fn posting_key(token: &str, user: &str) -> String {
    format!("{}{}", token_slot_key(token), user.to_ascii_lowercase())
}

/// Whether an index key is a search posting.
pub fn is_posting(key: &str) -> bool {
    key.starts_with("token:")
}

/// The key that chooses an index key's slot: a posting lives in its token's slot, any
/// other key in its own.
pub fn slot_key(key: &str) -> &str {
    match key.strip_prefix("token:").and_then(|rest| rest.find('/')) {
        Some(i) => &key[..6 + i + 1],
        None => key,
    }
}

/// The key whose slot holds a token's postings (and the prefix of their keys).
pub fn token_slot_key(token: &str) -> String {
    format!("token:{token}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_accents_fold() {
        assert_eq!(tokens("Jaan Tallinn, TALLINN, Eesti"), ["jaan", "tallinn", "eesti"]);
        assert_eq!(tokens("Zoë Ångström"), tokens("zoe angstrom"));
        assert_eq!(tokens("São Paulo"), ["sao", "paulo"]);
        assert_eq!(tokens("a b c"), Vec::<String>::new(), "single letters are not indexed");
        let p = Profile { display_name: "Jaan Tallinn".into(), city: "Tallinn".into(), ..Default::default() };
        assert_eq!(profile_tokens("jaan.t", &p), ["jaan", "tallinn"]);
        assert_eq!(posting_key("jaan", "Alice"), "token:jaan/alice");
        assert_eq!(slot_key("token:jaan/alice"), "token:jaan/");
        assert_eq!(slot_key("alice"), "alice");
    }
}
