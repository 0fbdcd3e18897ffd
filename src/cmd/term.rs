//! Text from the network on a terminal: profile fields, names, authorization messages and
//! server error details are written by strangers, so their control characters (which can
//! move the cursor, rewrite earlier lines, retitle the window or hide text) and
//! bidirectional overrides are shown escaped, never sent to the terminal.

/// `s` with every control character and bidirectional format character escaped as
/// `\u{…}`; newlines in our own multi-line output are kept.
pub fn safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if (c.is_control() && c != '\n') || bidi {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// `println!` for human-readable lines that may carry text from the network.
macro_rules! say {
    ($($t:tt)*) => { println!("{}", $crate::cmd::term::safe(&format!($($t)*))) };
}

/// `eprintln!` for human-readable lines that may carry text from the network.
macro_rules! esay {
    ($($t:tt)*) => { eprintln!("{}", $crate::cmd::term::safe(&format!($($t)*))) };
}

pub(crate) use esay;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_bidi_overrides_but_not_text() {
        assert_eq!(safe("Zoë 北京 ok\nnext"), "Zoë 北京 ok\nnext");
        assert_eq!(safe("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(safe("\u{9b}31m\r\u{7}"), "\\u{9b}31m\\u{d}\\u{7}");
        assert_eq!(safe("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
    }
}
