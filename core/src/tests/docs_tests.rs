//! The README's reference lists against the code: every input, effect, timer and client-visible
//! message the code has is documented, and the README names nothing the code lacks. (The
//! sources are read at compile time; the core does no IO, not even in its tests.)

use std::collections::BTreeSet;

const README: &str = include_str!("../../README.md");

/// The text between `<!-- name -->` and `<!-- /name -->`.
fn section(name: &str) -> &'static str {
    let start = README
        .find(&format!("<!-- {name} -->"))
        .unwrap_or_else(|| panic!("README has no `{name}` section"));
    let end = README[start..]
        .find(&format!("<!-- /{name} -->"))
        .unwrap_or_else(|| panic!("README's `{name}` section is not closed"));
    &README[start..start + end]
}

/// Every `` `word` `` of a text that starts like `prefix` (or, with an empty prefix, every
/// capitalised one).
fn code_spans(text: &str, prefix: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| span.chars().all(|c| c.is_alphanumeric() || c == '_'))
        .filter(|span| match prefix {
            "" => span.starts_with(char::is_uppercase),
            _ => span.starts_with(prefix),
        })
        .map(str::to_string)
        .collect()
}

/// The variant names of `enum name` in `source`.
fn variants(source: &str, name: &str) -> BTreeSet<String> {
    let start = source
        .find(&format!("enum {name} {{"))
        .unwrap_or_else(|| panic!("no enum {name}"));
    let body = &source[start..];
    let body = &body[..body.find("\n}").expect("enum end")];
    body.lines()
        .skip(1)
        .filter(|line| line.starts_with("    ") && !line.starts_with("     "))
        .map(str::trim)
        .filter(|line| line.starts_with(char::is_uppercase))
        .map(|line| {
            line.split(|c: char| !c.is_alphanumeric() && c != '_')
                .next()
                .expect("a name")
                .to_string()
        })
        .collect()
}

#[test]
fn the_readme_lists_every_input_of_the_server() {
    let code: BTreeSet<String> = [include_str!("../server.rs")]
        .iter()
        .flat_map(|source| source.split("pub fn ").skip(1))
        .filter_map(|rest| rest.split('(').next())
        .filter(|name| name.starts_with("handle_"))
        .map(str::to_string)
        .collect();
    assert!(code.len() > 10, "found the inputs: {code:?}");
    assert_eq!(code_spans(section("inputs"), "handle_"), code);
}

#[test]
fn the_readme_lists_every_effect_and_timer() {
    let effects = variants(include_str!("../effect.rs"), "Effect");
    assert_eq!(code_spans(section("effects"), ""), effects);
    let timers = variants(include_str!("../timers.rs"), "TimerKey");
    assert_eq!(code_spans(section("timers"), ""), timers);
}

/// The fixed pieces of a message (between its `{…}` placeholders), as the README's table
/// shows them: backticks in a code span are escaped there.
fn fixed_pieces(message: &str) -> Vec<String> {
    message
        .split('{')
        .enumerate()
        .map(|(i, piece)| match (i, piece.split_once('}')) {
            (0, _) | (_, None) => piece,
            (_, Some((_, rest))) => rest,
        })
        .map(str::trim)
        .filter(|piece| piece.len() >= 4)
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_shows_every_message_clients_see() {
    let table: String = README.replace("\\`", "`");
    let mut messages: Vec<String> = include_str!("../error.rs")
        .split("#[error(\"")
        .skip(1)
        .filter_map(|rest| rest.split("\")]").next())
        .map(str::to_string)
        .collect();
    // What the core answers to bytes a transport could not frame.
    messages.extend(
        include_str!("../framing.rs")
            .split(", \"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_string),
    );
    messages.push(crate::ORIGIN_NOT_ALLOWED.to_string());
    messages.push(crate::HOST_NOT_ALLOWED.to_string());
    assert!(messages.len() > 40, "found the messages: {messages:?}");
    let missing: Vec<&String> = messages
        .iter()
        .filter(|message| !message.contains("poisoned")) // not a client's message
        .filter(|message| {
            fixed_pieces(message)
                .iter()
                .any(|piece| !table.contains(piece))
        })
        .collect();
    assert!(missing.is_empty(), "not in the README's table: {missing:?}");
}
