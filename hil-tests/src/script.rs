//! The command lines a shell script gives one of the workspace's binaries, for tests
//! that check them against the binary's own parser: `scripts/demo` (the README's
//! first command) is run by no test, so a flag renamed in the code broke it unnoticed.

/// Each command line in `script` that runs `"$bin/NAME"`, its arguments after the
/// program: continuation lines joined, redirections (`>FILE`, `2>&1`), a trailing `&`
/// and what follows `||` or `|` dropped, and each shell expansion (`"$x"`, `${X:-d}`,
/// `$((…))`) replaced by `values`' value for its variable name, else by `1` (a count, a
/// seed, a path: every value the scripts pass parses as one of those). Quotes are
/// removed as the shell would; a word is split at spaces outside quotes.
pub fn commands(script: &str, name: &str, values: &[(&str, &str)]) -> Vec<Vec<String>> {
    let joined = script.replace("\\\n", " ");
    let program = format!("\"$bin/{name}\"");
    let mut out = Vec::new();
    for line in joined.lines() {
        let line = line.trim_start();
        let Some(rest) = line.strip_prefix(&program) else {
            continue;
        };
        let rest = rest.split(" || ").next().unwrap_or(rest);
        let rest = rest.split(" | ").next().unwrap_or(rest);
        let words = split_words(&expand(rest, values));
        out.push(
            words
                .into_iter()
                .filter(|w| w != "&" && !w.starts_with('>') && !w.starts_with("2>"))
                .collect(),
        );
    }
    out
}

/// `s` with each `$NAME`, `${NAME…}` and `$((…))` replaced (see [`commands`]).
fn expand(s: &str, values: &[(&str, &str)]) -> String {
    let value = |name: &str| {
        values
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("1", |(_, v)| v)
            .to_string()
    };
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (replacement, len) = if let Some(inner) = after.strip_prefix("((") {
            let end = inner.find("))").map_or(inner.len(), |e| e + 2);
            ("1".to_string(), 2 + end)
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').unwrap_or(inner.len());
            let name: String = inner[..end]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (value(&name), end + 2)
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (value(&name), name.len())
        };
        out.push_str(&replacement);
        rest = &after[len.min(after.len())..];
    }
    out.push_str(rest);
    out
}

/// Words split at whitespace outside quotes, the quotes removed.
fn split_words(s: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut in_word) = (Vec::new(), String::new(), None, false);
    for c in s.chars() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (_, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_read_as_the_shell_would() {
        let script = r#"
"$bin/tool" run --a "$x" --b "${OUT:-out/e2e}/k" \
    --c $((2 * r)) --d "$y/z w" >"$out/t.txt" 2>&1 &
  "$bin/tool" keygen --out "$out/keys" || exit 1
"$bin/other" x
echo "$bin/tool" no
"#;
        assert_eq!(
            commands(script, "tool", &[("x", "push")]),
            [
                vec![
                    "run", "--a", "push", "--b", "1/k", "--c", "1", "--d", "1/z w"
                ],
                vec!["keygen", "--out", "1/keys"],
            ]
        );
    }
}
